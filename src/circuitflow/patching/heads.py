"""Attention-head patching and ablation: each head's ``attn.hook_z`` patched clean ->
corrupted at the suffix, zeroed, or set to its neutral mean, and the screening ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from circuitflow import store
from circuitflow.core.tokens import Tokenized
from circuitflow.patching.engine import (
    HEAD_SITE,
    MetricTokens,
    Patcher,
    chunks,
    lean,
    record_activations,
    recovery,
)
from circuitflow.patching.residual import FramePair


def mean_head_outputs(
    patcher: Patcher, toks: Sequence[Tokenized], pad_id: int, batch_size: int = 32
) -> dict[int, torch.Tensor]:
    """Mean ``attn.hook_z`` per layer and head ``[H, d_head]`` over the real non-BOS tokens."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for chunk in chunks(list(toks), batch_size):
        acts, _ = record_activations(patcher, chunk, pad_id)
        for t, a in zip(chunk, acts, strict=True):
            for layer in patcher.head_layers:
                z = a[("z", layer)][t.first :].sum(0)
                sums[layer] = sums.get(layer, 0) + z
            count += len(t.ids) - t.first
    return {layer: s / max(count, 1) for layer, s in sums.items()}


HEAD_COLUMNS = [
    "frame_id",
    "sample_id",
    "condition",
    "clean_id",
    "corrupted_id",
    "layer",
    "head",
    "hook",
    "patch_positions",
    "n_patch_positions",
    "lean_clean",
    "lean_corrupted",
    "lean_patched",
    "lean_zero",
    "lean_mean",
]


def patch_heads(
    patcher: Patcher,
    pairs: Sequence[FramePair],
    acts: Mapping[str, dict],
    leans: Mapping[str, np.ndarray],
    metric: MetricTokens,
    layers: Sequence[int],
    mean_z: Mapping[int, torch.Tensor],
    batch_size: int = 64,
    min_denominator: float = 0.5,
    progress=None,
    heads: Sequence[tuple[int, int]] | None = None,
    ablate: Sequence[str] = ("zero", "mean"),
) -> pd.DataFrame:
    """Per pair x layer x head: lean after patching the head's ``hook_z`` clean -> corrupted at
    the suffix positions, and after the ``ablate`` ablations (zero / mean) of the head at every
    position of the clean sentence (the others stay NaN). ``heads``: the (layer, head) pairs to
    run (the attribution screen), else every head of ``layers``."""
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    if heads is None:
        heads = [(layer, h) for layer in layers for h in range(patcher.n_heads)]
    heads = list(heads)
    layers = sorted({layer for layer, _ in heads})
    dev = patcher.device
    out = []
    for pair in pairs:
        ci = cond_index[pair.condition]
        values: dict[tuple[int, int], dict] = {lh: {} for lh in heads}
        # patching: run the corrupted sentence from the first suffix token
        dest, Td, Ts = pair.corrupted, len(pair.corrupted.ids), len(pair.clean.ids)
        if pair.n_suffix:
            start = Td - pair.n_suffix
            cache = patcher.prefix_cache(dest.ids, start)
            dpos = np.arange(start, Td)
            spos = np.arange(Ts - pair.n_suffix, Ts)
            for chunk in chunks(heads, batch_size):
                plan = {}
                for layer in layers:
                    sel = [(r, h) for r, (l_, h) in enumerate(chunk) if l_ == layer]
                    if not sel:
                        continue
                    z = acts[pair.clean_id][("z", layer)]  # [T, H, dh]
                    plan[("z", layer)] = (
                        torch.as_tensor(np.repeat([r for r, _ in sel], len(dpos)), device=dev),
                        torch.as_tensor(np.tile(dpos, len(sel)), device=dev),
                        torch.as_tensor(np.repeat([h for _, h in sel], len(dpos)), device=dev),
                        torch.cat([z[spos, h] for _, h in sel]).to(dev),
                    )
                ids = torch.as_tensor(dest.ids[start:])[None].repeat(len(chunk), 1)
                logits = patcher.forward(
                    ids, cache=patcher.expand(cache, len(chunk)), offset=start, plan=plan
                )
                for lh, v in zip(chunk, lean(logits.cpu(), metric)[:, ci], strict=True):
                    values[lh]["lean_patched"] = float(v)
        # ablation: run the clean sentence with the head zeroed / set to its neutral mean
        clean = pair.clean
        T = len(clean.ids)
        jobs = [(kind, lh) for kind in ablate for lh in heads]
        for chunk in chunks(jobs, batch_size):
            plan = {}
            for layer in layers:
                sel = [(r, kind, h) for r, (kind, (l_, h)) in enumerate(chunk) if l_ == layer]
                if not sel:
                    continue
                vals = [
                    torch.zeros(T, mean_z[layer].shape[-1])
                    if kind == "zero"
                    else mean_z[layer][h].expand(T, -1)
                    for _, kind, h in sel
                ]
                plan[("z", layer)] = (
                    torch.as_tensor(np.repeat([r for r, _, _ in sel], T), device=dev),
                    torch.as_tensor(np.tile(np.arange(T), len(sel)), device=dev),
                    torch.as_tensor(np.repeat([h for _, _, h in sel], T), device=dev),
                    torch.cat(vals).to(dev),
                )
            ids = torch.as_tensor(clean.ids)[None].repeat(len(chunk), 1)
            logits = patcher.forward(ids, plan=plan)
            for (kind, lh), v in zip(chunk, lean(logits.cpu(), metric)[:, ci], strict=True):
                values[lh][f"lean_{kind}"] = float(v)
        lean_clean = leans[pair.clean_id][ci]
        lean_corr = leans[pair.corrupted_id][ci]
        for (layer, h), v in values.items():
            out.append(
                {
                    "frame_id": pair.frame_id,
                    "sample_id": pair.clean_id,
                    "condition": pair.condition,
                    "clean_id": pair.clean_id,
                    "corrupted_id": pair.corrupted_id,
                    "layer": layer,
                    "head": h,
                    "hook": store.hook_name(layer, HEAD_SITE),
                    "patch_positions": "suffix",
                    "n_patch_positions": pair.n_suffix,
                    "lean_clean": lean_clean,
                    "lean_corrupted": lean_corr,
                    "lean_patched": v.get("lean_patched", np.nan),
                    "lean_zero": v.get("lean_zero", np.nan),
                    "lean_mean": v.get("lean_mean", np.nan),
                }
            )
        if progress is not None:
            progress.update(1)
    table = pd.DataFrame(out, columns=HEAD_COLUMNS)  # an empty table keeps every column
    leans = [c for c in HEAD_COLUMNS if c.startswith("lean_")]
    table[leans] = table[leans].astype(float)
    clean, corr = table["lean_clean"], table["lean_corrupted"]
    rec, small = recovery(table["lean_patched"], clean, corr, min_denominator)
    table["recovery"], table["small_denominator"] = rec, small.astype(bool)
    # fraction of the clean-vs-corrupted lean that the ablation removes (1 = all of it)
    for kind in ("zero", "mean"):
        table[f"{kind}_effect"] = 1.0 - recovery(table[f"lean_{kind}"], clean, corr)[0]
        table[f"{kind}_delta"] = table[f"lean_{kind}"] - clean
    return table


def rank_heads(heads: pd.DataFrame) -> pd.DataFrame:
    """Screening ranking per condition (and ``all``): mean recovery and ablation effects per
    head over pairs without a small denominator; ``rank`` orders by mean patching recovery."""
    ok = heads[~heads["small_denominator"].astype(bool)]
    frames = []
    for condition, part in [("all", ok), *ok.groupby("condition", sort=True)]:
        g = part.groupby(["layer", "head", "hook"], sort=True)
        t = g.agg(
            n=("recovery", "size"),
            mean_recovery=("recovery", "mean"),
            sd_recovery=("recovery", "std"),
            mean_zero_effect=("zero_effect", "mean"),
            mean_mean_effect=("mean_effect", "mean"),
            mean_zero_delta=("zero_delta", "mean"),
            mean_mean_delta=("mean_delta", "mean"),
        ).reset_index()
        t["mean_abs_recovery"] = g["recovery"].apply(lambda s: s.abs().mean()).to_numpy()
        t.insert(0, "condition", condition)
        t["rank"] = t["mean_recovery"].rank(ascending=False, method="first").astype(int)
        for kind in ("zero", "mean"):  # Int64: NaN where that ablation did not run
            t[f"rank_{kind}"] = (
                t[f"mean_{kind}_effect"].rank(ascending=False, method="first").astype("Int64")
            )
        frames.append(t.sort_values("rank"))
    n_small = int(heads["small_denominator"].astype(bool).sum()) if len(heads) else 0
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["n_small_denominator_rows"] = n_small
    return out
