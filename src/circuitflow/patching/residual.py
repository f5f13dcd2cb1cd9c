"""Residual-stream patching of counterfactual frames: aligned (clean, corrupted) pairs, the
token sites patched together, and the lean after patching ``hook_resid_pre`` at each site.

Pairs and positions. A counterfactual frame has one sentence per label that differ only in
the emotion phrase. Each pair is (clean = frame.<condition>, corrupted = frame.<baseline>).
Token positions are aligned by role: tokens before the phrase (the prefix) are identical in
both versions and, under causal attention, so are their activations: they are never patched
(patching them is exactly a no-op). Tokens after the phrase (the suffix) are aligned from the
end. Phrase tokens are patched one by one, and as one block, only when both phrases have the
same number of tokens (``phrase_equal``); otherwise only suffix positions are patched. Pairs
whose prefix or suffix token ids differ (a tokenizer merging across the phrase boundary) are
excluded and counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuitflow import store
from circuitflow.core.tokens import Tokenized
from circuitflow.patching.engine import (
    DIRECTIONS,
    RESID_SITE,
    MetricTokens,
    Patcher,
    PatchingError,
    chunks,
    lean,
    recovery,
)


@dataclass(frozen=True)
class FramePair:
    """A counterfactual pair: clean (condition) and corrupted (baseline) of one frame."""

    frame_id: str
    condition: str
    clean_id: str
    corrupted_id: str
    clean: Tokenized
    corrupted: Tokenized
    n_prefix: int
    n_suffix: int

    @property
    def phrase_equal(self) -> bool:
        return len(self.clean.span) == len(self.corrupted.span)


@dataclass(frozen=True)
class Site:
    """Positions patched together, in the destination and the source sequence."""

    position: str  # phrase_first | phrase_mid | phrase_last | phrase_block | post_phrase | ...
    role: str  # phrase | suffix
    dest: np.ndarray
    src: np.ndarray
    offset_from_end: int


def align_pair(
    frame_id: str, condition: str, clean_id, corrupted_id, clean, corrupted
) -> FramePair:
    """Check prefix/suffix token identity and return the pair; raises PatchingError if a
    tokenizer merged tokens across the phrase boundary differently in the two versions."""
    n_pre = int(clean.span[0])
    n_suf_c = len(clean.ids) - int(clean.span[-1]) - 1
    n_suf_n = len(corrupted.ids) - int(corrupted.span[-1]) - 1
    if (
        n_pre != int(corrupted.span[0])
        or not np.array_equal(clean.ids[:n_pre], corrupted.ids[:n_pre])
        or n_suf_c != n_suf_n
        or (n_suf_c and not np.array_equal(clean.ids[-n_suf_c:], corrupted.ids[-n_suf_n:]))
    ):
        raise PatchingError(f"frame {frame_id}: {clean_id} and {corrupted_id} misalign")
    return FramePair(frame_id, condition, clean_id, corrupted_id, clean, corrupted, n_pre, n_suf_c)


def pair_sites(pair: FramePair, direction: str) -> tuple[list[Site], int]:
    """Patched sites for ``direction`` and the first destination position they touch."""
    dest, src = (
        (pair.corrupted, pair.clean) if direction == DIRECTIONS[0] else (pair.clean, pair.corrupted)
    )
    Td, Ts = len(dest.ids), len(src.ids)
    sites = []
    if pair.phrase_equal:
        n = len(dest.span)
        for i in range(n):
            name = "phrase_last" if i == n - 1 else ("phrase_first" if i == 0 else "phrase_mid")
            p = pair.n_prefix + i
            sites.append(Site(name, "phrase", np.array([p]), np.array([p]), p - Td))
        if n > 1:
            block = np.arange(pair.n_prefix, pair.n_prefix + n)
            sites.append(Site("phrase_block", "phrase", block, block, pair.n_prefix - Td))
    for j in range(pair.n_suffix, 0, -1):
        name = "last" if j == 1 else ("post_phrase" if j == pair.n_suffix else "suffix_mid")
        sites.append(Site(name, "suffix", np.array([Td - j]), np.array([Ts - j]), -j))
    start = pair.n_prefix if pair.phrase_equal else Td - pair.n_suffix
    return sites, start


def frame_pairs(
    rows: Sequence[dict],
    toks: Mapping[str, Tokenized],
    frame_ids: Sequence[str],
    conditions: Sequence[str],
    baseline: str,
) -> tuple[list[FramePair], list[str]]:
    """Aligned pairs of the chosen frames and the ids of pairs that could not be aligned."""
    by_frame: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.get("frame_id"):
            by_frame.setdefault(r["frame_id"], {})[r["label"]] = r["sample_id"]
    pairs, excluded = [], []
    for fid in frame_ids:
        versions = by_frame[fid]
        if baseline not in versions:
            continue
        for c in conditions:
            if c not in versions:
                continue
            a, b = versions[c], versions[baseline]
            try:
                pairs.append(align_pair(fid, c, a, b, toks[a], toks[b]))
            except PatchingError:
                excluded.append(a)
    return pairs, excluded


def choose_frames(rows: Sequence[dict], split: str, n: int, labels: Sequence[str], seed: int):
    """Up to ``n`` frames of ``split`` that have every label, seeded, in id order."""
    by_frame: dict[str, set] = {}
    splits: dict[str, str] = {}
    for r in rows:
        if r.get("frame_id"):
            by_frame.setdefault(r["frame_id"], set()).add(r["label"])
            splits[r["frame_id"]] = r["split"]
    ids = sorted(
        f for f, have in by_frame.items() if set(labels) <= have and split in ("all", splits[f])
    )
    if not ids:
        raise PatchingError(
            f"patching: the dataset has no counterfactual frame in split {split!r} with every "
            f"label ({', '.join(labels)}); set patching.split or add frames"
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [ids[i] for i in sorted(pick)]


# ---------------------------------------------------------------- residual patching
RESIDUAL_COLUMNS = [
    "frame_id",
    "sample_id",
    "condition",
    "clean_id",
    "corrupted_id",
    "direction",
    "layer",
    "hook",
    "position",
    "role",
    "token_index",
    "n_positions",
    "offset_from_end",
    "token",
    "phrase_equal",
    "lean_clean",
    "lean_corrupted",
    "lean_patched",
    "recovery",
    "small_denominator",
]


def patch_residual(
    patcher: Patcher,
    pairs: Sequence[FramePair],
    acts: Mapping[str, dict],
    leans: Mapping[str, np.ndarray],
    metric: MetricTokens,
    layers: Sequence[int],
    batch_size: int = 64,
    min_denominator: float = 0.5,
    tokenizer=None,
    progress=None,
    only: set[tuple[int, str]] | None = None,
) -> pd.DataFrame:
    """Per pair x direction x layer x site: lean after patching hook_resid_pre. ``only``:
    the (layer, site position) pairs to patch (the attribution screen), else every one."""
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    out = []
    caches: dict = {}
    for pair in pairs:
        ci = cond_index[pair.condition]
        lean_clean = leans[pair.clean_id][ci]
        lean_corr = leans[pair.corrupted_id][ci]
        for direction in DIRECTIONS:
            dest_id, src_id = (
                (pair.corrupted_id, pair.clean_id)
                if direction == DIRECTIONS[0]
                else (pair.clean_id, pair.corrupted_id)
            )
            dest = pair.corrupted if direction == DIRECTIONS[0] else pair.clean
            sites, start = pair_sites(pair, direction)
            key = (dest_id, start)
            if key not in caches:
                caches[key] = patcher.prefix_cache(dest.ids, start)
            jobs = [
                (layer, site)
                for layer in layers
                for site in sites
                if only is None or (layer, site.position) in only
            ]
            if not jobs:
                continue
            for chunk in chunks(jobs, batch_size):
                plan = {}
                for layer in layers:
                    sel = [(r, s) for r, (l_, s) in enumerate(chunk) if l_ == layer]
                    if not sel:
                        continue
                    rows = np.concatenate([[r] * len(s.dest) for r, s in sel])
                    pos = np.concatenate([s.dest for _, s in sel])
                    src_pos = np.concatenate([s.src for _, s in sel])
                    values = acts[src_id][("resid", layer)][src_pos]
                    plan[("resid", layer)] = (
                        torch.as_tensor(rows, device=patcher.device),
                        torch.as_tensor(pos, device=patcher.device),
                        values.to(patcher.device),
                    )
                ids = torch.as_tensor(dest.ids[start:])[None].repeat(len(chunk), 1)
                logits = patcher.forward(
                    ids, cache=patcher.expand(caches[key], len(chunk)), offset=start, plan=plan
                )
                patched = lean(logits.cpu(), metric)[:, ci]
                for (layer, site), value in zip(chunk, patched, strict=True):
                    out.append(
                        {
                            "frame_id": pair.frame_id,
                            "sample_id": pair.clean_id,
                            "condition": pair.condition,
                            "clean_id": pair.clean_id,
                            "corrupted_id": pair.corrupted_id,
                            "direction": direction,
                            "layer": layer,
                            "hook": store.hook_name(layer, RESID_SITE),
                            "position": site.position,
                            "role": site.role,
                            "token_index": int(site.dest[0]),
                            "n_positions": len(site.dest),
                            "offset_from_end": site.offset_from_end,
                            "token": _token(tokenizer, dest.ids, site.dest),
                            "phrase_equal": pair.phrase_equal,
                            "lean_clean": lean_clean,
                            "lean_corrupted": lean_corr,
                            "lean_patched": float(value),
                        }
                    )
        caches = {k: v for k, v in caches.items() if k[0] in (pair.corrupted_id,)}
        if progress is not None:
            progress.update(1)
    table = pd.DataFrame(out, columns=RESIDUAL_COLUMNS[:-2])  # an empty table keeps them
    leans = ["lean_clean", "lean_corrupted", "lean_patched"]
    table[leans] = table[leans].astype(float)
    rec, small = recovery(
        table["lean_patched"], table["lean_clean"], table["lean_corrupted"], min_denominator
    )
    table["recovery"], table["small_denominator"] = rec, small.astype(bool)
    return table


def _token(tokenizer, ids: np.ndarray, positions: np.ndarray) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode(ids[positions].tolist())
