"""One text model's patching run: residual patching, head patching / ablation and
directional ablation on the counterfactual frames of a prompt dataset."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from circuitflow import store
from circuitflow.core.hooks import attach_bridge
from circuitflow.core.layers import resolve_layers
from circuitflow.core.tokens import pad_id, tokenize
from circuitflow.patching.ablation import Probe, directional_ablation
from circuitflow.patching.attribution import (
    AttributionConfig,
    GradientRunner,
    agreement,
    attribute_pairs,
    chosen_heads,
    chosen_sites,
)
from circuitflow.patching.controls import ablation_set, control_variances, record_train_stats
from circuitflow.patching.engine import (
    RESID_SITE,
    PatchConfig,
    Patcher,
    PatchingError,
    chunks,
    lean,
    metric_tokens,
    record_activations,
)
from circuitflow.patching.heads import mean_head_outputs, patch_heads, rank_heads
from circuitflow.patching.residual import choose_frames, frame_pairs, patch_residual


def read_vectors(
    path,
    conditions: Sequence[str],
    layers: Sequence[int],
    position: str,
    k: int,
    contrast: str = "vs_neutral",
) -> tuple[dict, dict]:
    """The vectors store's direction of ``contrast`` (``store.DIRECTION_VARIABLES``) and PCA
    subspace ``[k, d]`` per condition and layer at ``blocks.{layer}.hook_resid_pre`` (layers
    the store lacks are left out; :func:`run_text_patching` names them)."""
    ds = store.open_dataset(path)
    variable = store.DIRECTION_VARIABLES[contrast]
    if variable not in ds.data_vars:
        raise PatchingError(
            f"{path}: no variable {variable!r} (patching.direction_contrast: {contrast}); "
            "rerun rule directions (snakemake --forcerun directions) or set "
            "patching.direction_contrast: vs_neutral"
        )
    hooks = set(ds["hook"].values.tolist())
    directions: dict = {}
    subspaces: dict = {}
    for c in conditions:
        directions[c], subspaces[c] = {}, {}
        for layer in layers:
            hook = store.hook_name(layer, RESID_SITE)
            if hook not in hooks:
                continue
            sel = {"hook": hook, "position": position, "condition": c}
            directions[c][layer] = ds[variable].sel(sel).values.astype(np.float64)
            subspaces[c][layer] = ds["subspace"].sel(sel).values[:k].astype(np.float64)
    return directions, subspaces


def pick_samples(
    rows: Sequence[dict], labels: Sequence[str], split: str, n: int, rng: np.random.Generator
) -> dict[str, list[dict]]:
    """Up to ``n`` samples of ``split`` per label (seeded, in dataset order), at most one per
    counterfactual frame over all labels: the versions of one frame are not independent."""
    used: set = set()
    out = {}
    for label in labels:
        pool = [r for r in rows if r["label"] == label and r["split"] == split]
        picked = []
        for i in rng.permutation(len(pool)):
            frame = pool[i].get("frame_id") or ""
            if frame and frame in used:
                continue
            picked.append(int(i))
            used.add(frame)
            if len(picked) == n:
                break
        out[label] = [pool[i] for i in sorted(picked)]
    return out


def run_text_patching(
    bridge,
    rows: Sequence[dict],
    cfg: PatchConfig,
    labels: Sequence[str],
    baseline: str,
    directions: Mapping[str, Mapping[int, np.ndarray]],
    subspaces: Mapping[str, Mapping[int, np.ndarray]],
    probe_data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    prepend_bos: bool = True,
    model_name: str = "model",
    progress: bool = True,
    screen_table: pd.DataFrame | None = None,
    atp: pd.DataFrame | None = None,
) -> dict:
    """Residual patching, head patching/ablation and directional ablation for one model.

    With ``screen_table`` (:func:`circuitflow.patching.attribution.screen`), exact residual
    and head patching run on its chosen sites and heads, and on the first
    ``attribution.validation_frames`` frames also over the full grid (every layer, site and
    head), compared with the AtP rows ``atp`` of those pairs (``agreement``).

    ``directions[c][layer]`` ``[d]`` and ``subspaces[c][layer]`` ``[K, d]`` are the
    condition's direction / PCA subspace at ``blocks.{layer}.hook_resid_pre``;
    ``probe_data[c]`` = (train features at the final layer, 1 = condition / 0 = baseline):
    the fixed probe. The mean-ablation centre, the controls and the refit probe come from
    ``cfg.control_samples`` train samples per label (:mod:`.controls`); ablation samples are
    test samples, at most one per counterfactual frame. Returns the tables (``ablation_controls``:
    the variance each ablated basis carries over the train tokens), the metric tokens and run
    facts."""
    t0 = time.time()
    tokenizer = bridge.tokenizer
    pad = pad_id(tokenizer)
    L = bridge.cfg.n_layers
    conditions = [label for label in labels if label != baseline]
    metric, toks = _tokens(bridge, rows, cfg, labels, baseline, prepend_bos)
    res_layers = resolve_layers(cfg.residual_layers, L, "patching.residual_layers", model_name)
    head_layers = resolve_layers(cfg.head_layers, L, "patching.head_layers", model_name)
    abl_layers = resolve_layers(cfg.ablation_layers, L, "patching.ablation_layers", model_name)
    for c in conditions:
        for key, source in (("direction", directions), ("subspace", subspaces)):
            missing = [layer for layer in abl_layers if layer not in source.get(c, {})]
            if missing:
                raise PatchingError(
                    f"model {model_name!r}: the vectors store has no {key} for condition {c!r} "
                    f"at {store.hook_name(missing[0], RESID_SITE)}; extract hook_resid_pre "
                    "(extract.sites) or set patching.ablation_layers"
                )
    frames = exact_frames(rows, cfg, labels)
    pairs, excluded = frame_pairs(rows, toks, frames, conditions, baseline)
    n_head_frames = len(frames) if cfg.head_frames is None else min(cfg.head_frames, len(frames))
    head_pairs = [p for p in pairs if p.frame_id in set(frames[:n_head_frames])]
    sites = heads_chosen = None
    val_pairs: list = []
    if screen_table is not None:
        acfg = AttributionConfig.from_config(cfg.attribution)
        sites, heads_chosen = chosen_sites(screen_table), chosen_heads(screen_table)
        res_layers = sorted({layer for layer, _ in sites})
        head_layers = sorted({layer for layer, _ in heads_chosen})
        val_pairs = [p for p in pairs if p.frame_id in set(frames[: acfg.validation_frames])]
    grid = list(range(L)) if val_pairs else []
    patcher = Patcher(
        bridge,
        metric.flat_ids(),
        resid_layers=sorted(set(res_layers) | set(abl_layers) | set(grid)),
        head_layers=sorted(set(head_layers) | set(grid)),
        model_name=model_name,
    )
    timings = {}
    with torch.no_grad(), patcher.attached():
        # clean / corrupted runs: sources for patching and the lean of each version
        ids_needed = sorted({p.clean_id for p in pairs} | {p.corrupted_id for p in pairs})
        acts, leans = {}, {}
        for chunk in chunks(ids_needed, 16):
            a, lg = record_activations(patcher, [toks[i] for i in chunk], pad)
            acts.update(zip(chunk, a, strict=True))
            leans.update(zip(chunk, lean(lg, metric), strict=True))
        t = time.time()
        bar = tqdm(total=len(pairs), desc=f"residual {model_name}", disable=not progress)
        residual = patch_residual(
            patcher,
            pairs,
            acts,
            leans,
            metric,
            res_layers,
            cfg.batch_size,
            cfg.min_denominator,
            tokenizer,
            bar,
            only=sites,
        )
        bar.close()
        timings["residual_s"] = time.time() - t
        t = time.time()
        rng = np.random.default_rng(cfg.seed)
        mean_pick = mean_ablation_samples(rows, baseline, cfg, rng)
        mean_z = mean_head_outputs(patcher, [toks[r["sample_id"]] for r in mean_pick], pad)
        bar = tqdm(total=len(head_pairs), desc=f"heads {model_name}", disable=not progress)
        heads = patch_heads(
            patcher,
            head_pairs,
            acts,
            leans,
            metric,
            head_layers,
            mean_z,
            cfg.batch_size,
            cfg.min_denominator,
            bar,
            heads=heads_chosen,
            ablate=cfg.head_ablations,
        )
        bar.close()
        ranking = rank_heads(heads) if len(heads) else pd.DataFrame()
        timings["heads_s"] = time.time() - t
        validation = {}
        if val_pairs:
            t = time.time()
            args = (acts, leans, metric, grid)
            validation["residual"] = patch_residual(
                patcher, val_pairs, *args, cfg.batch_size, cfg.min_denominator, tokenizer
            )
            validation["heads"] = patch_heads(
                patcher, val_pairs, *args, mean_z, cfg.batch_size, cfg.min_denominator,
                ablate=(),
            )  # fmt: skip
            if atp is not None:
                ids = {p.clean_id for p in val_pairs}
                validation["agreement"] = agreement(
                    atp[atp["clean_id"].isin(ids)],
                    validation["residual"],
                    validation["heads"],
                    acfg.top_k_heads,
                    acfg.recall_top,
                    screen_table,
                )
            timings["validation_s"] = time.time() - t
        t = time.time()
        picks = pick_samples(rows, labels, "test", cfg.ablation_samples, rng)
        samples = [r for label in labels for r in picks[label]]
        # the train split: mean-ablation centre, covariance of the matched controls, the
        # shuffled-label mean differences and the refit probe's samples
        train_picks = pick_samples(rows, labels, "train", cfg.control_samples, rng)
        train, refit_index = [], []
        for label in labels:
            for n, r in enumerate(train_picks[label]):
                if n < cfg.refit_samples:
                    refit_index.append(len(train))
                train.append(r)
        stats = record_train_stats(
            patcher,
            train,
            toks,
            pad,
            abl_layers,
            cfg.probe_position,
            cfg.direction_position,
            cfg.ablation_mode,
        )
        refit_rows = [train[i] for i in refit_index]
        probes = {c: Probe.fit(*probe_data[c], seed=cfg.seed) for c in conditions}
        ablations = {
            c: ablation_set(
                directions[c],
                subspaces[c],
                abl_layers,
                cfg.subspace_k,
                cfg.random_seeds,
                stats,
                c,
                baseline,
                ci,
                cfg.seed,
                cfg.ablation_controls,
                cfg.direction_contrast,
            )
            for ci, c in enumerate(conditions)
        }
        # the variance each basis carries over the ablated test samples' own tokens
        test_stats = record_train_stats(
            patcher,
            samples,
            toks,
            pad,
            abl_layers,
            cfg.probe_position,
            cfg.direction_position,
            cfg.ablation_mode,
        )
        variances = pd.DataFrame(control_variances(ablations, stats, abl_layers, test_stats))
        timings["ablation_controls_s"] = time.time() - t
        bar = tqdm(total=0, desc=f"ablation {model_name}", disable=not progress)
        ablation, base_feats = directional_ablation(
            patcher,
            samples,
            toks,
            metric,
            probes,
            ablations,
            abl_layers,
            cfg.position_sets,
            cfg.probe_position,
            pad,
            tokenizer,
            cfg.batch_size,
            bar,
            stats.centre if cfg.ablation_mode == "mean" else None,
            (refit_rows, stats.features[refit_index]) if refit_rows else None,
            cfg.seed,
        )
        bar.close()
        timings["ablation_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    info = {
        "frames": frames,
        "n_pairs": len(pairs),
        "n_pairs_excluded_misaligned": len(excluded),
        "excluded_pairs": excluded,
        "n_pairs_phrase_equal": sum(p.phrase_equal for p in pairs),
        "n_head_pairs": len(head_pairs),
        "screened": screen_table is not None,
        "n_validation_pairs": len(val_pairs),
        "n_residual_sites_screened": None if sites is None else len(sites),
        "n_heads_screened": None if heads_chosen is None else len(heads_chosen),
        "residual_layers": list(res_layers),
        "head_layers": list(head_layers),
        "ablation_layers": list(abl_layers),
        "n_ablation_samples": len(samples),
        "n_control_samples": len(train),
        "n_control_tokens": stats.n_tokens,
        "n_refit_samples": len(refit_rows),
        "direction_contrast": cfg.direction_contrast,
        "n_mean_ablation_samples": len(mean_pick),
        "n_forward": patcher.n_forward,
        "n_tokens": patcher.n_tokens,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    return {
        "residual": residual,
        "heads": heads,
        "heads_ranking": ranking,
        "directional_ablation": ablation,
        "ablation_controls": variances,
        "validation": validation,
        "metric": metric,
        "base_features": (samples, base_feats),
        "info": info,
    }


def manifest_params(params) -> dict:
    """The manifest ``params`` of a text patching rule (attribution_patching, patch_model)
    from its Snakemake params."""
    return {
        "dataset": params.dataset,
        "model": params.model,
        "dtype": params.dtype,
        "prepend_bos": params.prepend_bos,
        "labels": list(params.labels),
        "baseline": params.baseline,
        "patching": dict(params.patching),
    }


def _tokens(bridge, rows, cfg: PatchConfig, labels, baseline, prepend_bos):
    """The lean's metric tokens and every row's tokens by sample id."""
    metric = metric_tokens(bridge.tokenizer, cfg.metric_words, labels, baseline)
    ids = [r["sample_id"] for r in rows]
    toks = dict(zip(ids, tokenize(bridge.tokenizer, rows, prepend_bos), strict=True))
    return metric, toks


def exact_frames(rows: Sequence[dict], cfg: PatchConfig, labels: Sequence[str]) -> list[str]:
    """The frames exact patching runs on (``patching.split``, seeded); attribution patching
    estimates the same ones."""
    return choose_frames(rows, cfg.split, cfg.n_frames, labels, cfg.seed)


def mean_ablation_samples(
    rows: Sequence[dict], baseline: str, cfg: PatchConfig, rng: np.random.Generator
) -> list[dict]:
    """The neutral train samples whose mean head output is the head mean-ablation value (the
    first draw of ``rng``, seeded with ``cfg.seed``)."""
    neutral = [r for r in rows if r["label"] == baseline and r["split"] == "train"]
    pick = sorted(rng.choice(len(neutral), size=min(cfg.mean_samples, len(neutral)), replace=False))
    return [neutral[i] for i in pick]


def run_attribution(
    bridge,
    rows: Sequence[dict],
    cfg: PatchConfig,
    labels: Sequence[str],
    baseline: str,
    prepend_bos: bool = True,
    model_name: str = "model",
    progress: bool = True,
) -> dict:
    """AtP over the full grid for the screen frames (``attribution.screen_split``) and the
    frames exact patching uses (``patching.split``, the same seeded choice): the rows
    (:data:`~circuitflow.patching.attribution.ATTRIBUTION_COLUMNS`) and run facts."""
    t0 = time.time()
    acfg = AttributionConfig.from_config(cfg.attribution)
    pad = pad_id(bridge.tokenizer)
    conditions = [label for label in labels if label != baseline]
    metric, toks = _tokens(bridge, rows, cfg, labels, baseline, prepend_bos)
    exact = exact_frames(rows, cfg, labels)
    screened = choose_frames(rows, acfg.screen_split, acfg.screen_frames, labels, cfg.seed + 1)
    frames = list(dict.fromkeys([*screened, *exact]))
    split_of = {r["frame_id"]: r["split"] for r in rows if r.get("frame_id")}
    pairs, excluded = frame_pairs(rows, toks, frames, conditions, baseline)
    L = bridge.cfg.n_layers
    patcher = Patcher(bridge, metric.flat_ids(), head_layers=range(L), model_name=model_name)
    with torch.no_grad(), patcher.attached():
        means = mean_ablation_samples(rows, baseline, cfg, np.random.default_rng(cfg.seed))
        mean_z = mean_head_outputs(patcher, [toks[r["sample_id"]] for r in means], pad)
    runner = GradientRunner(bridge, metric, model_name)
    bar = tqdm(total=len(pairs), desc=f"attribution {model_name}", disable=not progress)
    with attach_bridge(bridge, runner.hooks(acfg.grad_drop)):
        table = attribute_pairs(
            runner, pairs, split_of, mean_z, cfg.min_denominator, acfg.grad_drop, bar
        )
    bar.close()
    info = {
        "screen_frames": screened,
        "exact_frames": exact,
        "n_pairs": len(pairs),
        "n_pairs_excluded_misaligned": len(excluded),
        "n_layers": L,
        "n_heads": bridge.cfg.n_heads,
        "grad_drop": acfg.grad_drop,
        "seconds": round(time.time() - t0, 2),
    }
    return {"attribution": table, "metric": metric, "info": info}
