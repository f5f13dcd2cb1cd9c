"""The text steering job: directions and norms from the stores, the sweep, evaluator scores.

Inputs are the vectors store (unit directions of the configured contrast and PCA components
per hook, position and condition) and the activation store (residual norms for relative
alphas, train-split activations for the variance-matched controls); the output is one row
per (prompt, configuration) for ``samples.csv``, and from it the per-configuration fluency
table (:func:`fluency_table`) and the ``measurements.csv`` rows (:func:`sample_measurements`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from os import PathLike

import numpy as np
import pandas as pd
from jaxtyping import Float

from circuitflow import store
from circuitflow.core.layers import resolve_layers
from circuitflow.evaluators import Item, build_evaluators, score_all
from circuitflow.steering.text import (
    UNSTEERED,
    FluencyBand,
    Generation,
    SteeringError,
    SteeringParams,
    build_configs,
    encode_prompts,
    projected_variance,
    run_sweep,
    select_prompts,
)
from circuitflow.store import as_measurements

# fluency columns written beside every steering effect (when the fluency evaluator ran)
FLUENCY_METRICS = ("perplexity", "distinct_2", "empty_generation")


def mean_residual_norm(
    acts: Float[np.ndarray, "sample position d_model"],
    train: np.ndarray,
    positions: Sequence[str] = store.POSITIONS,
) -> float:
    """Mean over train samples of ||resid|| at position ``mean`` (the token-mean residual).

    acts: an activation-store array, positions ``positions`` (the store's).
    """
    a = np.asarray(acts, dtype=np.float64)[train, list(positions).index("mean")]
    if len(a) == 0:
        raise ValueError("no train samples to compute the mean residual norm from")
    return float(np.linalg.norm(a, axis=-1).mean())


def sample_rows(generations: Sequence[Generation], dataset: str, model: str) -> list[dict]:
    """Per-sample rows (without evaluator scores) for ``samples.csv``."""
    return [
        {
            "dataset": dataset,
            "model": model,
            "prompt_id": g.prompt.prompt_id,
            "frame_id": g.prompt.frame_id,
            **g.config.describe(),
            "prompt": g.prompt.text,
            "generation": g.text,
            "n_tokens": len(g.tokens),
        }
        for g in generations
    ]


def load_directions(
    vectors_path: str | PathLike,
    activations_path: str | PathLike,
    layers: Sequence[int],
    conditions: Sequence[str],
    position: str,
    components: Sequence[int] = (),
    contrast: str = "vs_neutral",
) -> tuple[
    dict[int, dict[str, Float[np.ndarray, " d_model"]]],
    dict[int, dict[str, Float[np.ndarray, "k d_model"]]],
    dict[int, float],
]:
    """Steering inputs for ``layers`` from the vectors and activation stores.

    Returns ({layer: {condition: unit direction}}, {layer: {condition: components}}, {layer:
    mean residual norm}), all at ``blocks.{L}.hook_resid_pre``; the directions (the vectors
    store's variable for ``contrast``, ``store.DIRECTION_VARIABLES``) and components at
    ``position``, the norm at position ``mean`` (train split).
    """
    vec = store.open_dataset(vectors_path)
    variable = store.DIRECTION_VARIABLES[contrast]
    if variable not in vec.data_vars:
        raise SteeringError(
            f"{vectors_path}: no variable {variable!r} (steering.direction_contrast: "
            f"{contrast}); rerun the directions rule (snakemake {vectors_path} --forcerun "
            "directions) with a vectors phase that writes it, or choose another contrast"
        )
    have_hooks = {str(h) for h in vec["hook"].values}
    have_conditions = [str(c) for c in vec["condition"].values]
    missing = [c for c in conditions if c not in have_conditions]
    if missing:
        raise SteeringError(
            f"steering.conditions: {missing} not in {vectors_path} (has {have_conditions})"
        )
    coords = store.read_sample_coords(activations_path)
    train = coords["split"] == "train"
    directions, subspaces, norms = {}, {}, {}
    for layer in layers:
        hook = store.hook_name(layer, "hook_resid_pre")
        if hook not in have_hooks:
            raise SteeringError(
                f"{vectors_path}: no {hook}; include layer {layer} in extract.layers and "
                "extract.sites (hook_resid_pre) or steer other layers"
            )
        sel = vec.sel(hook=hook, position=position)
        directions[layer] = {c: sel[variable].sel(condition=c).values for c in conditions}
        if components:
            subspaces[layer] = {c: sel["subspace"].sel(condition=c).values for c in conditions}
        norms[layer] = mean_residual_norm(
            store.read_array(activations_path, hook),
            train,
            store.store_positions(activations_path),
        )
    return directions, subspaces, norms


def control_activations(
    activations_path: str | PathLike, layers: Sequence[int], position: str
) -> dict[int, Float[np.ndarray, "n d_model"]]:
    """{layer: train-split activations at ``blocks.{L}.hook_resid_pre`` and ``position``} (the
    steering position: the directions' variance is measured on the activations they were
    estimated from; the token-mean ``mean`` would average away the per-token variance of the
    positions the vector is added to)."""
    coords = store.read_sample_coords(activations_path)
    train = coords["split"] == "train"
    if train.sum() < 2:
        raise SteeringError(
            f"{activations_path}: {int(train.sum())} train samples; the matched random "
            "controls need at least 2 (steering.random_seeds: [] turns them off)"
        )
    at = store.store_positions(activations_path).index(position)
    return {
        layer: np.asarray(
            store.read_array(activations_path, store.hook_name(layer, "hook_resid_pre")),
            dtype=np.float64,
        )[train, at]
        for layer in layers
    }


def sweep_table(
    bridge,
    rows: Sequence[Mapping],
    params: SteeringParams,
    *,
    dataset: str,
    model: str,
    labels: Sequence[str],
    baseline: str,
    vectors_path: str | PathLike,
    activations_path: str | PathLike,
    prepend_bos: bool = True,
    base_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """The steering job: sweep, generate, score -> (per-sample DataFrame, summary dict)."""
    layers = list(resolve_layers(params.layers, bridge.cfg.n_layers, "steering.layers", model))
    if params.position not in store.store_positions(activations_path):
        print(
            f"steering.position {params.position!r}: not in {activations_path} (samples "
            "without trigger spans); steering with the directions at position 'last'"
        )
        params = dataclasses.replace(params, position="last")
    conditions = list(params.conditions or [c for c in labels if c != baseline])
    directions, subspaces, norms = load_directions(
        vectors_path,
        activations_path,
        layers,
        conditions,
        params.position,
        params.components,
        params.direction_contrast,
    )
    control_x = (
        control_activations(activations_path, layers, params.position)
        if params.random_seeds
        else None
    )
    configs = build_configs(
        params, layers, directions, subspaces, norms, bridge.cfg.d_model, base_seed, control_x
    )
    matching = {}  # projected variance of each direction and control, per layer
    for c in configs:
        if control_x and c.steered and not c.direction.startswith("pc"):
            per = matching.setdefault(str(c.layer), {})
            per.setdefault(c.direction, projected_variance(control_x[c.layer], c.unit))
    chosen = select_prompts(rows, baseline, params.n_prompts)
    prompts = encode_prompts(bridge.tokenizer, chosen, params.prompt_template, prepend_bos)
    t0 = time.perf_counter()
    gens = run_sweep(
        bridge,
        prompts,
        configs,
        params.max_new_tokens,
        params.window,
        params.batch_size,
        bos=prepend_bos,
        progress=progress,
    )
    t1 = time.perf_counter()
    options = {"fluency": {"perplexity_cap": params.perplexity_cap}}
    evaluators = build_evaluators(
        params.evaluators,
        bridge=bridge,
        hub_classifiers=params.hub_classifiers,
        batch_size=params.batch_size,
        device=device,
        options={k: v for k, v in options.items() if k in params.evaluators},
    )
    scores = score_all(evaluators, [Item(g.text, g.prompt.ids, g.tokens) for g in gens])
    t2 = time.perf_counter()
    table = pd.DataFrame(sample_rows(gens, dataset, model))
    for col in ("layer", "seed"):
        table[col] = table[col].astype("Int64")
    for col, values in scores.items():
        table[col] = values
    summary = {
        "layers": layers,
        "resid_norms": {str(k): v for k, v in norms.items()},
        "direction_variable": params.direction_variable,
        "controls": {
            "kind": "matched_unit: activation covariance, train split, median-variance target",
            "position": params.position,
            "per_layer": matching,
        },
        "n_prompts": len(prompts),
        "n_configs": len(configs),
        "n_rows": len(table),
        "generate_s": round(t1 - t0, 2),
        "evaluate_s": round(t2 - t1, 2),
        "evaluators": [e.name for e in evaluators],
        "score_columns": list(scores),
    }
    return table, summary


def _fluency(rows: pd.DataFrame) -> dict[str, float]:
    out = {"n": float(len(rows))}
    for col in FLUENCY_METRICS:
        if col in rows:
            v = rows[col].astype(float)
            out[col] = float(v.mean() if col == "empty_generation" else v.median())
    return out


def band_note(stats: Mapping[str, float], base: Mapping[str, float], band: FluencyBand) -> str:
    """ "" inside the fluency band of the unsteered run, else "fluency outside band (...)"
    naming each criterion missed (``stats`` / ``base``: :func:`fluency_table` medians and the
    empty-generation rate; criteria whose columns are absent are not checked)."""
    if not any(c in stats and c in base for c in FLUENCY_METRICS):
        return "fluency not measured (add fluency to steering.evaluators)"
    out = []
    if "perplexity" in stats and "perplexity" in base:
        ratio = stats["perplexity"] / base["perplexity"] if base["perplexity"] > 0 else np.inf
        if not ratio <= band.max_perplexity_ratio:
            out.append(f"ppl x{ratio:.1f}")
    if "empty_generation" in stats and not stats["empty_generation"] <= band.max_empty_rate:
        out.append(f"empty {stats['empty_generation']:.0%}")
    if "distinct_2" in stats and "distinct_2" in base and base["distinct_2"] > 0:
        ratio = stats["distinct_2"] / base["distinct_2"]
        if not ratio >= band.min_distinct_2_ratio:
            out.append(f"distinct-2 x{ratio:.2f}")
    return f"fluency outside band ({', '.join(out)})" if out else ""


def _configurations(samples: pd.DataFrame):
    """(key, rows) per configuration: the unsteered run, each steering configuration, the
    pooled random controls per layer x alpha x mode (key direction ``random``)."""
    s = samples
    control = s["control"].astype(str).str.lower() == "true"
    yield (np.nan, 0.0, UNSTEERED, UNSTEERED), s[s["direction"] == UNSTEERED]
    steered = s[(s["direction"] != UNSTEERED) & ~control]
    for key, part in steered.groupby(["layer", "alpha", "alpha_mode", "direction"], sort=True):
        yield key, part
    for (layer, alpha, mode), part in s[control].groupby(["layer", "alpha", "alpha_mode"]):
        yield (layer, alpha, mode, "random"), part


def fluency_table(samples: pd.DataFrame, band: FluencyBand | None = None) -> pd.DataFrame:
    """One row per configuration (the unsteered run; each layer x alpha x direction; the
    random controls of a layer x alpha pooled as direction ``random``): median perplexity and
    distinct-2, empty-generation rate, their ratios to the unsteered run, and ``note`` (empty
    inside the fluency band, see :func:`band_note`)."""
    band = band or SteeringParams().fluency_band()
    configs = list(_configurations(samples))
    base = _fluency(configs[0][1])
    rows = []
    for (layer, alpha, mode, direction), part in configs:
        stats = _fluency(part)
        row = {"layer": layer, "alpha": alpha, "alpha_mode": mode, "direction": direction}
        row |= {"n": int(stats.pop("n"))} | stats
        for col in ("perplexity", "distinct_2"):
            if col in stats and base.get(col):
                row[f"{col}_ratio"] = stats[col] / base[col]
        row["note"] = band_note(stats, base, band)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return table


def prompt_units(samples: pd.DataFrame) -> tuple[pd.Series, str]:
    """(unit per row, unit kind): the prompt, or the counterfactual frame when the steered
    prompts include several prompts of one frame (they are not independent; their values are
    averaged per frame by the statistics)."""
    prompt = samples["prompt_id"].astype(str)
    if "frame_id" not in samples:
        return prompt, "prompt"
    frame = samples["frame_id"].fillna("").astype(str)
    per_frame = samples.loc[frame != "", ["frame_id", "prompt_id"]].drop_duplicates()
    if per_frame["frame_id"].duplicated().any():
        return frame.where(frame != "", prompt), "frame"
    return prompt, "prompt"


def sample_measurements(
    samples: pd.DataFrame, metrics: Sequence[str], band: FluencyBand | None = None
) -> pd.DataFrame:
    """samples.csv -> ``measurements.csv`` rows per prompt (unit): treatment = one steering
    configuration (layer x alpha x direction), baseline = the unsteered generation of the
    same prompt, control = the variance-matched random directions (``control`` rows) at the
    same layer and alpha, seeds averaged per prompt. ``marker_target`` is the marker column of
    the direction's emotion (``marker_<condition>``); metrics missing from the table are
    skipped; the fluency metrics (:data:`FLUENCY_METRICS`) are always added beside them.

    Two group-constant columns follow the layout's: ``unit_kind`` (prompt, or frame when
    several steered prompts share a counterfactual frame: :func:`prompt_units`) and ``note``
    (empty where the configuration's fluency stays within ``band`` of the unsteered run,
    else what left it, e.g. "fluency outside band (ppl x3.2)"; "control fluency outside
    band (...)" when the random controls left it): only rows without a note measure a
    behavioural effect of the direction rather than broken text."""
    s = samples.copy()
    s["_unit"], unit_kind = prompt_units(s)
    flu = fluency_table(s, band)
    flu = flu[flu["direction"] != UNSTEERED]
    notes = {
        (int(r.layer), float(r.alpha), str(r.alpha_mode), str(r.direction)): r.note
        for r in flu.itertuples()
    }
    metrics = list(dict.fromkeys([*metrics, *FLUENCY_METRICS]))
    control = s["control"].astype(str).str.lower() == "true"
    base = s[s["direction"] == UNSTEERED]
    steered = s[(s["direction"] != UNSTEERED) & ~control]
    randoms = s[control]
    frames = []
    for (layer, alpha, mode, direction), part in steered.groupby(
        ["layer", "alpha", "alpha_mode", "direction"], sort=True
    ):
        condition = str(part["condition"].iloc[0])
        ctrl = randoms[
            (randoms["layer"] == layer)
            & (randoms["alpha"] == alpha)
            & (randoms["alpha_mode"] == mode)
        ]
        key = (int(layer), float(alpha), str(mode))
        note = notes[(*key, str(direction))]
        if len(ctrl):
            ctrl_note = notes[(*key, "random")]
            if ctrl_note.startswith("fluency outside"):
                note = "; ".join(n for n in (note, f"control {ctrl_note}") if n)
        setting = f"direction={direction} alpha={alpha:g} mode={mode}"
        for metric in metrics:
            column = f"marker_{condition}" if metric == "marker_target" else metric
            if column not in s:
                continue
            for arm, rows in (("treatment", part), ("baseline", base), ("control", ctrl)):
                rows = rows[np.isfinite(rows[column].astype(float))]
                m = as_measurements(
                    pd.DataFrame(
                        {
                            "arm": arm,
                            "unit": rows["_unit"].to_numpy(),
                            "value": rows[column].astype(float).to_numpy(),
                        }
                    ),
                    phase="steering",
                    dataset=str(s["dataset"].iloc[0]),
                    model=str(s["model"].iloc[0]),
                    layer=int(layer),
                    site="hook_resid_pre",
                    position="window+generated",
                    condition=condition,
                    setting=setting,
                    metric=metric,
                )
                frames.append(m.assign(unit_kind=unit_kind, note=note))
    if not frames:
        return as_measurements(pd.DataFrame()).assign(unit_kind="", note="")
    return pd.concat(frames, ignore_index=True)
