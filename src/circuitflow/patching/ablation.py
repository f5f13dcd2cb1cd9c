"""Directional ablation of emotion directions (Tigges et al. 2023): project a direction, its
PCA subspace or a control (:mod:`.controls`) out of ``hook_resid_pre`` and read the lean and a
final-layer probe, both the one fit on unablated train features (fixed) and one refit on train
features ablated the same way; plus the run's key figures and the above-chance accuracy lost."""

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
from circuitflow.core.errors import ConfigError
from circuitflow.core.tokens import Tokenized, right_pad
from circuitflow.patching.engine import (
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
    """One projection applied at the chosen layers: ``bases [n_layers_ablated, k, d]``;
    ``refit``: the probe is also refit on train samples ablated the same way."""

    name: str
    k: int
    seed: int
    bases: np.ndarray
    refit: bool = False


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


def _can_refit(y: np.ndarray) -> bool:
    return len(y) > 0 and min(int(y.sum()), int(len(y) - y.sum())) >= 2


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
    centers: Mapping[int, np.ndarray] | None = None,
    refit: tuple[Sequence[dict], np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per test sample x condition x ablation x position set: the fixed probe's probability
    of the condition (``probe_p``), the refit probe's (``probe_p_refit``) and the lean, beside
    the unablated baseline (rows with ``ablation == "none"``).

    ``centers`` {layer: [d]}: the train split's token means; the ablated component is set to
    the centre's (mean ablation). ``None``: it is projected out (zero ablation).
    ``refit`` = (train samples, their unablated final-layer features): for every ablation with
    ``refit``, a probe is fit per condition x ablation x position set on the train samples
    ablated the same way and read on the ablated test samples (Tigges et al. 2023: an ablation
    that removes the information also defeats the refit probe; one that only moves features
    off the fixed probe's distribution does not); ``probe_p_refit_base``: refit on the
    unablated train features, read on the unablated test samples. Conditions with fewer than
    2 train samples of a class, and ``refit=None``, give NaN. Returns the table and the
    unablated test features (for checks)."""
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    order = sorted(range(len(samples)), key=lambda i: (len(toks[samples[i]["sample_id"]].ids), i))
    feats = np.zeros((len(samples), patcher.d_model))
    leans_base = np.zeros((len(samples), len(metric.conditions)))
    for chunk in chunks(order, batch_size):
        ts = [toks[samples[i]["sample_id"]] for i in chunk]
        f, lg = run_final(patcher, ts, pad_id, probe_position)
        feats[chunk] = f
        leans_base[chunk] = lean(lg, metric)
    train, train_feats = refit if refit is not None else ([], np.zeros((0, patcher.d_model)))
    rows_of = {"test": samples, "train": train}
    out = []
    for c, abls in ablations.items():
        ci = cond_index[c]
        members = [i for i, r in enumerate(samples) if r["label"] in (c, metric.baseline)]
        tmembers = [j for j, r in enumerate(train) if r["label"] in (c, metric.baseline)]
        y_train = np.array([int(train[j]["label"] == c) for j in tmembers], dtype=int)
        can_refit = _can_refit(y_train)
        prob_base = probes[c].prob(feats[members])
        refit_base = np.full(len(members), np.nan)
        if can_refit:
            probe = Probe.fit(train_feats[tmembers], y_train, seed)
            refit_base = probe.prob(feats[members])
        base = {}
        for j, i in enumerate(members):
            r = samples[i]
            base[i] = (prob_base[j], leans_base[i, ci], refit_base[j])
            out.append(_ablation_row(r, c, "none", 0, -1, "none", 0, *base[i], *base[i]))
        jobs = [
            ("test", i, a, kind)
            for a in range(len(abls))
            for kind in position_sets
            for i in members
        ]
        if can_refit:
            jobs += [
                ("train", j, a, kind)
                for a in range(len(abls))
                if abls[a].refit
                for kind in position_sets
                for j in tmembers
            ]
        jobs.sort(key=lambda j: len(toks[rows_of[j[0]][j[1]]["sample_id"]].ids))
        if progress is not None:
            progress.total = (progress.total or 0) + len(jobs)
            progress.refresh()
        got = {}
        for chunk in chunks(jobs, batch_size):
            ts = [toks[rows_of[role][i]["sample_id"]] for role, i, _, _ in chunk]
            masks = [position_mask(tokenizer, t, job[3]) for t, job in zip(ts, chunk, strict=True)]
            f, lg = run_final(
                patcher,
                ts,
                pad_id,
                probe_position,
                layers,
                [abls[job[2]].bases for job in chunk],
                masks,
                centers,
            )
            for job, m, fi, v in zip(chunk, masks, f, lean(lg, metric)[:, ci], strict=True):
                got[job] = (fi, float(v), int(m.sum()))
            if progress is not None:
                progress.update(len(chunk))
        refit_p: dict = {}
        for a in range(len(abls)):
            for kind in position_sets:
                if not (can_refit and abls[a].refit):
                    continue
                X = np.stack([got["train", j, a, kind][0] for j in tmembers])
                probe = Probe.fit(X, y_train, seed)
                Xt = np.stack([got["test", i, a, kind][0] for i in members])
                refit_p[a, kind] = dict(zip(members, probe.prob(Xt), strict=True))
        fixed = {
            (a, kind): dict(
                zip(
                    members,
                    probes[c].prob(np.stack([got["test", i, a, kind][0] for i in members])),
                    strict=True,
                )
            )
            for a in range(len(abls))
            for kind in position_sets
        }
        for a, abl in enumerate(abls):
            for kind in position_sets:
                for i in members:
                    _, v, n_pos = got["test", i, a, kind]
                    p_refit = refit_p.get((a, kind), {}).get(i, np.nan)
                    out.append(
                        _ablation_row(
                            samples[i],
                            c,
                            abl.name,
                            abl.k,
                            abl.seed,
                            kind,
                            n_pos,
                            fixed[a, kind][i],
                            v,
                            p_refit,
                            *base[i],
                        )
                    )
    return pd.DataFrame(out), feats


def _ablation_row(r, c, name, k, seed, kind, n_pos, prob, lean_, refit, prob_b, lean_b, refit_b):
    y = r["label"] == c
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
        "probe_correct": bool((prob >= 0.5) == y),
        "probe_p_refit": float(refit),
        "lean": float(lean_),
        "probe_p_base": float(prob_b),
        "probe_correct_base": bool((prob_b >= 0.5) == y),
        "probe_p_refit_base": float(refit_b),
        "lean_base": float(lean_b),
        "delta_lean": float(lean_ - lean_b),
    }


# ---------------------------------------------------------------- summaries
def summarize(
    residual: pd.DataFrame,
    heads: pd.DataFrame,
    ranking: pd.DataFrame,
    ablation: pd.DataFrame,
    controls: pd.DataFrame | None = None,
) -> dict:
    """Key figures: best layer x position per condition, top heads, above-chance accuracy
    lost under directional ablation against its controls, and the median ratio of the
    variance each control carries to the treatment's over the train and the test tokens
    (``controls``: ablation_controls.csv)."""
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
    for col in ("variance_ratio", "variance_ratio_test"):
        if controls is not None and col in controls:
            ratio = controls.groupby("ablation", sort=True)[col].median()
            out[f"control_{col}"] = {k: round(float(v), 4) for k, v in ratio.items()}
    return out


def accuracy_lost(ablation: pd.DataFrame) -> pd.DataFrame:
    """Per condition x ablation x positions: probe accuracy and the fraction of the unablated
    above-chance accuracy lost, ``(acc_base - acc) / (acc_base - 0.5)``, for the fixed and the
    refit probe, and the same for the threshold-free AUROC of the probe probability and of the
    lean (condition vs baseline samples); controls are averaged over seeds."""

    def auc(y, score):
        ok = np.isfinite(score)
        y, score = y[ok], score[ok]
        return roc_auc_score(y, score) if 0 < y.sum() < len(y) else np.nan

    def acc(y, p):
        ok = np.isfinite(p)
        return float(((p[ok] >= 0.5) == y[ok].astype(bool)).mean()) if ok.any() else np.nan

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
                    "auroc_probe_base": auc(y, s["probe_p_base"].to_numpy(float)),
                    "auroc_probe": auc(y, s["probe_p"].to_numpy(float)),
                    "accuracy_refit_base": acc(y, s["probe_p_refit_base"].to_numpy(float)),
                    "accuracy_refit": acc(y, s["probe_p_refit"].to_numpy(float)),
                    "auroc_lean_base": auc(y, s["lean_base"].to_numpy(float)),
                    "auroc_lean": auc(y, s["lean"].to_numpy(float)),
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
                "fraction_refit_above_chance_lost": lost(
                    m["accuracy_refit_base"], m["accuracy_refit"]
                ),
                "fraction_auroc_probe_lost": lost(m["auroc_probe_base"], m["auroc_probe"]),
                "fraction_auroc_lean_lost": lost(m["auroc_lean_base"], m["auroc_lean"]),
            }
        )
    return pd.DataFrame(rows)
