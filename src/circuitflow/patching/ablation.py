"""Directional ablation of emotion directions (Tigges et al. 2023): project a direction, its
PCA subspace or random controls out of ``hook_resid_pre`` and read a final-layer probe and the
lean; plus the run's key figures and the above-chance accuracy lost."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from circuitflow import store
from circuitflow.core import rand
from circuitflow.core.errors import ConfigError
from circuitflow.core.tokens import Tokenized, right_pad
from circuitflow.patching.engine import (
    ABLATION_MODES,
    DIRECTIONS,
    POSITION_SETS,
    MetricTokens,
    Patcher,
    PatchingError,
    chunks,
    lean,
)


def position_mask(tokenizer, tok: Tokenized, kind: str) -> np.ndarray:
    """1 where ``kind`` ablates: every token (``all``), tokens outside the emotion phrase
    (``non_emotion``: names, function words, punctuation), punctuation-only tokens.

    BOS is never ablated: its activations do not depend on the input (causal attention), so
    projecting there removes no information about the sample, and its large-norm residual
    (the attention sink) makes any edit there a disruption of every later position."""
    T = len(tok.ids)
    mask = np.ones(T)
    mask[: tok.first] = 0
    if kind == "all":
        return mask
    mask[tok.span] = 0
    if kind == "non_emotion":
        return mask
    if kind == "punctuation":
        punct = set(string.punctuation)
        for i in range(tok.first, T):
            text = tokenizer.decode([int(tok.ids[i])]).strip()
            if not (text and all(ch in punct for ch in text)):
                mask[i] = 0
        return mask
    raise ConfigError(f"patching.position_sets: {kind!r} not in {', '.join(POSITION_SETS)}")


def pool_weights(tok: Tokenized, position: str) -> np.ndarray:
    """Weights over positions that reproduce the activation store's pooled positions."""
    w = np.zeros(len(tok.ids))
    if position == "last":
        w[-1] = 1
    elif position == "trigger_mean":
        w[tok.span] = 1 / len(tok.span)
    elif position == "mean":
        w[tok.first :] = 1 / (len(tok.ids) - tok.first)
    else:
        raise ConfigError(f"position {position!r} not in {', '.join(store.POSITIONS)}")
    return w


@dataclass
class Probe:
    """Standardised logistic regression, condition (1) vs baseline (0)."""

    model: Any

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, seed: int = 0) -> Probe:
        if len(np.unique(y)) < 2:
            raise PatchingError("probe: training data has a single class; add train samples")
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
        model.fit(np.asarray(X, dtype=np.float64), np.asarray(y))
        return cls(model)

    def prob(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(np.asarray(X, dtype=np.float64))[:, 1]


@dataclass(frozen=True)
class Ablation:
    """One projection applied at the chosen layers: ``bases [n_layers_ablated, k, d]``."""

    name: str
    k: int
    seed: int
    bases: np.ndarray


def ablation_set(
    directions: Mapping[int, np.ndarray],
    subspaces: Mapping[int, np.ndarray],
    layers: Sequence[int],
    k: int,
    n_random: int,
    d_model: int,
    seed: int,
) -> list[Ablation]:
    """The emotion direction, its k-dim subspace, and random controls of dimension 1 and k."""
    out = [
        Ablation(
            "direction",
            1,
            -1,
            np.stack([rand.orthonormal_rows(directions[i][None], 1) for i in layers]),
        ),
        Ablation(
            "subspace",
            k,
            -1,
            np.stack([rand.orthonormal_rows(subspaces[i][:k], k) for i in layers]),
        ),
    ]
    for r in range(n_random):
        for name, dim, seed_r in (
            ("random_direction", 1, seed + r),
            ("random_subspace", k, seed + 1000 + r),
        ):
            bases = rand.random_bases(rand.rng(seed_r), len(layers), d_model, dim)
            out.append(Ablation(name, dim, r, bases.transpose(0, 2, 1)))
    return out


def run_final(
    patcher: Patcher,
    toks: Sequence[Tokenized],
    pad_id: int,
    probe_position: str,
    layers: Sequence[int] = (),
    bases: Sequence[np.ndarray] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    centers: Mapping[int, np.ndarray] | None = None,
    record: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Final-layer pooled residual ``[n, d]`` and readout logits for one batch, with the
    per-row ``bases[i] [n_layers, k, d]`` projected out at ``layers`` where ``masks[i]``
    (to the component of ``centers[layer]`` when given: mean ablation). Residuals at the
    ``record`` layers are left in ``patcher.recorded``."""
    ids, lengths = right_pad([t.ids for t in toks], pad_id)
    B, T = ids.shape
    dev = patcher.device
    pool = np.zeros((B, T))
    for i, t in enumerate(toks):
        pool[i, : len(t.ids)] = pool_weights(t, probe_position)
    plan = {}
    if bases is not None:
        k = max(b.shape[1] for b in bases)
        stacked = np.zeros((B, len(layers), k, patcher.d_model))
        mask = np.zeros((B, T))
        for i, (b, m) in enumerate(zip(bases, masks, strict=True)):
            stacked[i, :, : b.shape[1]] = b
            mask[i, : len(m)] = m
        stacked_t = torch.as_tensor(stacked, dtype=torch.float32, device=dev)
        mask_t = torch.as_tensor(mask, dtype=torch.float32, device=dev)
        for j, layer in enumerate(layers):
            center = None
            if centers is not None:
                center = torch.as_tensor(centers[layer], dtype=torch.float32, device=dev)
            plan[("project", layer)] = (stacked_t[:, j], mask_t, center)
    logits = patcher.forward(
        ids,
        lengths,
        plan=plan,
        record={("resid", layer) for layer in record},
        pool=torch.as_tensor(pool, dtype=torch.float32, device=dev),
    )
    return patcher.pooled.cpu().numpy(), logits.cpu().numpy()


def directional_ablation(
    patcher: Patcher,
    samples: Sequence[dict],
    toks: Mapping[str, Tokenized],
    metric: MetricTokens,
    probes: Mapping[str, Probe],
    ablations: Mapping[str, list[Ablation]],
    layers: Sequence[int],
    position_sets: Sequence[str],
    probe_position: str,
    pad_id: int,
    tokenizer,
    batch_size: int = 64,
    progress=None,
    mode: str = "mean",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per test sample x condition x ablation x position set: probe probability of the
    condition and lean, beside the unablated baseline (rows with ``ablation == "none"``).

    ``mode="mean"`` sets the ablated component to its mean over the samples' tokens (BOS
    excluded) at each layer; ``"zero"`` projects it out. Returns the table and the unablated
    pooled features (for checks)."""
    if mode not in ABLATION_MODES:
        raise PatchingError(f"patching.ablation_mode: {mode!r} not in {', '.join(ABLATION_MODES)}")
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    order = sorted(range(len(samples)), key=lambda i: (len(toks[samples[i]["sample_id"]].ids), i))
    feats = np.zeros((len(samples), patcher.d_model))
    leans_base = np.zeros((len(samples), len(metric.conditions)))
    # mean ablation: the unablated residual's token mean at each ablated layer
    mean_layers = tuple(layers) if mode == "mean" else ()
    sums = {layer: torch.zeros(patcher.d_model, dtype=torch.float64) for layer in mean_layers}
    n_tok = 0
    for chunk in chunks(order, batch_size):
        ts = [toks[samples[i]["sample_id"]] for i in chunk]
        f, lg = run_final(patcher, ts, pad_id, probe_position, record=mean_layers)
        feats[chunk] = f
        leans_base[chunk] = lean(lg, metric)
        valid = torch.zeros(len(ts), max(len(t.ids) for t in ts))
        for row, t in enumerate(ts):
            valid[row, t.first : len(t.ids)] = 1
        n_tok += int(valid.sum())
        for layer in mean_layers:
            x = patcher.recorded[("resid", layer)].cpu().double()
            sums[layer] += torch.einsum("bt,btd->d", valid.double(), x)
    centers = None
    if mode == "mean":
        centers = {layer: (sums[layer] / max(n_tok, 1)).float().numpy() for layer in layers}
    out = []
    for c, abls in ablations.items():
        ci = cond_index[c]
        members = [i for i, r in enumerate(samples) if r["label"] in (c, metric.baseline)]
        prob_base = probes[c].prob(feats[members])
        base = {}
        for j, i in enumerate(members):
            r = samples[i]
            y = int(r["label"] == c)
            base[i] = (prob_base[j], leans_base[i, ci])
            out.append(_ablation_row(r, c, y, "none", 0, -1, "none", 0, *base[i], *base[i]))
        jobs = [(i, a, kind) for a in range(len(abls)) for kind in position_sets for i in members]
        jobs.sort(key=lambda j: len(toks[samples[j[0]]["sample_id"]].ids))
        for chunk in chunks(jobs, batch_size):
            ts = [toks[samples[i]["sample_id"]] for i, _, _ in chunk]
            masks = [
                position_mask(tokenizer, t, kind) for t, (_, _, kind) in zip(ts, chunk, strict=True)
            ]
            f, lg = run_final(
                patcher,
                ts,
                pad_id,
                probe_position,
                layers,
                [abls[a].bases for _, a, _ in chunk],
                masks,
                centers,
            )
            probs = probes[c].prob(f)
            leans_ = lean(lg, metric)[:, ci]
            for (i, a, kind), m, p, v in zip(chunk, masks, probs, leans_, strict=True):
                r, abl = samples[i], abls[a]
                out.append(
                    _ablation_row(
                        r,
                        c,
                        int(r["label"] == c),
                        abl.name,
                        abl.k,
                        abl.seed,
                        kind,
                        int(m.sum()),
                        p,
                        v,
                        *base[i],
                    )
                )
            if progress is not None:
                progress.update(len(chunk))
    return pd.DataFrame(out), feats


def _ablation_row(r, c, y, name, k, seed, kind, n_pos, prob, lean_, prob_base, lean_base):
    return {
        "sample_id": r["sample_id"],
        "label": r["label"],
        "frame_id": r.get("frame_id", ""),
        "condition": c,
        "is_condition": bool(y),
        "ablation": name,
        "k": k,
        "seed": seed,
        "positions": kind,
        "n_ablated_positions": n_pos,
        "probe_p": float(prob),
        "probe_correct": bool((prob >= 0.5) == bool(y)),
        "lean": float(lean_),
        "probe_p_base": float(prob_base),
        "probe_correct_base": bool((prob_base >= 0.5) == bool(y)),
        "lean_base": float(lean_base),
        "delta_lean": float(lean_ - lean_base),
    }


# ---------------------------------------------------------------- summaries
def summarize(
    residual: pd.DataFrame, heads: pd.DataFrame, ranking: pd.DataFrame, ablation: pd.DataFrame
) -> dict:
    """Key figures: best layer x position per condition, top heads, above-chance accuracy
    lost under directional ablation against the random controls."""
    out: dict = {}
    if len(residual):
        ok = residual[~residual["small_denominator"]]
        best = {}
        for (direction, c), part in ok.groupby(["direction", "condition"], sort=True):
            m = part.groupby(["layer", "position"])["recovery"].agg(["mean", "size"])
            # sites every pair has (suffix) or at least half of the pairs have
            m = m[m["size"] >= max(2, m["size"].max() // 2)]
            top = m.sort_values("mean", ascending=False).head(3)
            best.setdefault(direction, {})[c] = [
                {
                    "layer": int(lay),
                    "position": pos,
                    "mean_recovery": round(float(r["mean"]), 3),
                    "n": int(r["size"]),
                }
                for (lay, pos), r in top.iterrows()
            ]
        out["residual_best"] = best
        last = ok[(ok["position"] == "last") & (ok["direction"] == DIRECTIONS[0])]
        out["residual_last_by_layer"] = {
            int(k): round(float(v), 3) for k, v in last.groupby("layer")["recovery"].mean().items()
        }
    if len(ranking):
        top = ranking[ranking["condition"] == "all"].head(5)
        out["top_heads"] = [
            {
                "head": f"L{int(r.layer)}H{int(r.head)}",
                "mean_recovery": round(float(r.mean_recovery), 3),
                "mean_zero_effect": round(float(r.mean_zero_effect), 3),
                "mean_mean_effect": round(float(r.mean_mean_effect), 3),
            }
            for r in top.itertuples()
        ]
    if len(ablation):
        out["ablation"] = accuracy_lost(ablation).round(3).to_dict(orient="records")
    return out


def accuracy_lost(ablation: pd.DataFrame) -> pd.DataFrame:
    """Per condition x ablation x positions: probe accuracy and the fraction of the unablated
    above-chance accuracy lost, ``(acc_base - acc) / (acc_base - 0.5)``, and the same for the
    threshold-free AUROC of the probe probability and of the lean (condition vs baseline
    samples); random controls are averaged over seeds."""

    def auc(y, score):
        return roc_auc_score(y, score) if 0 < y.sum() < len(y) else np.nan

    def lost(base, value):
        return (base - value) / (base - 0.5) if base > 0.5 else np.nan

    rows = []
    abl = ablation[ablation["ablation"] != "none"]
    keys = ["condition", "ablation", "k", "positions"]
    for (c, name, k, kind), part in abl.groupby(keys, sort=True):
        per_seed = []
        for _, s in part.groupby("seed"):
            y = s["is_condition"].to_numpy(int)
            per_seed.append(
                {
                    "accuracy_base": s["probe_correct_base"].mean(),
                    "accuracy": s["probe_correct"].mean(),
                    "auroc_probe_base": auc(y, s["probe_p_base"]),
                    "auroc_probe": auc(y, s["probe_p"]),
                    "auroc_lean_base": auc(y, s["lean_base"]),
                    "auroc_lean": auc(y, s["lean"]),
                    "mean_delta_lean_condition": s.loc[s["is_condition"], "delta_lean"].mean(),
                }
            )
        m = pd.DataFrame(per_seed).mean()
        rows.append(
            {
                "condition": c,
                "ablation": name,
                "k": int(k),
                "positions": kind,
                "n_seeds": len(per_seed),
                **m.to_dict(),
                "fraction_above_chance_lost": lost(m["accuracy_base"], m["accuracy"]),
                "fraction_auroc_probe_lost": lost(m["auroc_probe_base"], m["auroc_probe"]),
                "fraction_auroc_lean_lost": lost(m["auroc_lean_base"], m["auroc_lean"]),
            }
        )
    return pd.DataFrame(rows)
