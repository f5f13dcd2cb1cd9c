"""SAE feature cards in the manner of Neuronpedia / SAEDashboard: per top feature of each
condition, the test samples where it fires most with each token shaded by its activation,
the activation histogram by label, the logit effect of its decoder direction through the
unembedding (W_dec[f] @ W_U, final-norm scale folded in as TransformerLens' ``fold_ln``
does) and its held-out AUROC from the effect table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from safetensors import safe_open

from circuitflow.report.answers import small_n_mask, unit_of
from circuitflow.report.common import _style, save
from circuitflow.report.html import card_html
from circuitflow.report.text import parse_setting

CARDS_FILE = "cards.csv"
CARD_COLUMNS = [
    "condition", "feature", "file", "auroc_train", "auroc_test", "ci_low", "ci_high",
    "p_fdr_bh", "top_token",
]  # fmt: skip
UNEMBED_KEYS = ("lm_head.weight", "embed_out.weight")  # untied output matrices
TIED_KEYS = ("embed_tokens.weight", "wte.weight", "embed_in.weight")
NORM_KEYS = ("model.norm.weight", "final_layernorm.weight", "ln_f.weight", "final_norm.weight")


# ---------------------------------------------------------------- unembedding
def _find(names: Sequence[str], suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        hits = sorted(n for n in names if n.endswith(suffix) and "vision" not in n)
        if hits:
            return min(hits, key=len)
    return None


def unembedding(folder: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W_U^T [vocab, d_model] as stored, final-norm scale [d_model] or None) of a prepared
    causal-LM folder (safetensors), or None when the folder has no output matrix. Gemma's
    RMSNorm multiplies by 1 + weight; others by weight."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    where = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            where.update({name: path for name in f.keys()})  # noqa: SIM118
    key = _find(list(where), UNEMBED_KEYS) or _find(list(where), TIED_KEYS)
    if key is None:
        return None
    with safe_open(where[key], framework="pt") as f:
        matrix = f.get_tensor(key)
    norm_key = _find(list(where), NORM_KEYS)
    scale = None
    if norm_key is not None:
        with safe_open(where[norm_key], framework="pt") as f:
            scale = f.get_tensor(norm_key).float()
        cfg_path = folder / "config.json"
        model_type = (
            json.loads(cfg_path.read_text()).get("model_type", "") if cfg_path.exists() else ""
        )
        if model_type.startswith("gemma"):
            scale = 1.0 + scale
    return matrix, scale


def logit_effects(
    directions: np.ndarray,
    matrix: torch.Tensor,
    scale: torch.Tensor | None = None,
    k: int = 10,
    chunk: int = 32768,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per direction [n, d_model]: (top token ids, their logit effects, bottom ids, effects)
    of ``(direction * scale) @ matrix.T``, the matrix read ``chunk`` vocabulary rows at a time."""
    d = torch.as_tensor(np.asarray(directions, dtype=np.float32))
    if scale is not None:
        d = d * scale.float()
    parts = [d @ matrix[i : i + chunk].float().T for i in range(0, matrix.shape[0], chunk)]
    logits = torch.cat(parts, dim=1)
    k = min(k, logits.shape[1])
    top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
    return [
        (
            top.indices[i].numpy(),
            top.values[i].numpy(),
            bottom.indices[i].numpy(),
            bottom.values[i].numpy(),
        )
        for i in range(len(d))
    ]


# ---------------------------------------------------------------- samples
def token_pieces(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each token adds: decode(ids[: i + 1]) minus decode(ids[: i]) (robust to
    byte-level BPE and SentencePiece spaces); a piece that does not extend the prefix is
    decoded alone."""
    pieces, prev = [], ""
    for i in range(len(ids)):
        text = decode(list(ids[: i + 1]))
        pieces.append(text[len(prev) :] if text.startswith(prev) else decode([ids[i]]))
        prev = text
    return pieces


def choose_features(features: pd.DataFrame, per_condition: int, baseline: str) -> pd.DataFrame:
    """Per non-baseline label, the ``per_condition`` features tested for it (``selected``)
    with the largest train AUROC (chosen on train samples, as the SAE phase does; features
    that fire less on the label than on the baseline are left to the effect table)."""
    f = features[(features.label != baseline)]
    if "selected" in f:
        f = f[f.selected.astype(str).str.lower().isin(["true", "1"])]
    f = f.sort_values(["label", "auroc_train", "feature"], ascending=[True, False, True])
    return f.groupby("label", sort=True).head(per_condition)


def activation_figure(
    sample_max: np.ndarray,
    labels: np.ndarray,
    condition: str,
    baseline: str,
    token_acts: np.ndarray,
) -> Figure:
    """Left: per-sample max activation by label (what the AUROC compares); right: the
    density of non-zero per-token activations (log count)."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 2.6))
    groups = {condition: labels == condition, baseline: labels == baseline}
    groups["other labels"] = ~(groups[condition] | groups[baseline])
    bins = np.linspace(0, max(float(sample_max.max()), 1e-6), 30)
    for (name, sel), color in zip(groups.items(), ("#e76f51", "#457b9d", "#bbbbbb"), strict=True):
        if sel.any():
            axes[0].hist(
                sample_max[sel],
                bins=bins,
                alpha=0.6,
                color=color,
                label=f"{name} (n = {int(sel.sum())})",
            )
    axes[0].set_xlabel("max activation over the sample's tokens")
    axes[0].set_ylabel("test samples")
    axes[0].legend(fontsize=7)
    live = token_acts[token_acts > 0]
    axes[1].hist(live if live.size else [0.0], bins=40, color="#e76f51", log=True)
    axes[1].set_xlabel(f"non-zero token activations ({live.size} of {token_acts.size} tokens)")
    fig.tight_layout()
    return fig


def _auroc_text(effects: pd.DataFrame, headline_n: int) -> dict:
    if not len(effects):
        return {"text": "not in effect_sizes.csv", "flag": ""}
    r = effects.iloc[0]
    unit = unit_of(r.test) or "unit"
    text = (
        f"AUROC {r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] vs neutral test samples "
        f"(Mann-Whitney U, p_fdr_bh = {r.p_fdr_bh:.2g}, n = {int(r.n_treatment)} vs "
        f"{int(r.n_baseline)} {unit}s; {int(r.n_family)} hypotheses in the family)"
    )
    small = bool(small_n_mask(effects.iloc[:1], headline_n).iloc[0])
    flag = f"n < headline_n {headline_n}: not a headline" if small else ""
    return {"text": text, "flag": flag}


def sae_effect_rows(
    table: pd.DataFrame, model: str, hook_layer: int, site: str, architecture: str
) -> pd.DataFrame:
    """The effect rows of one SAE's tested features (phase sae, metric feature_max_activation),
    with ``feature`` parsed from ``setting``."""
    t = table[
        (table.phase == "sae")
        & (table.metric == "feature_max_activation")
        & (table.model == model)
        & (table.site == site)
        & (pd.to_numeric(table.layer, errors="coerce") == hook_layer)
    ]
    parsed = t.setting.map(parse_setting)
    t = t[parsed.map(lambda d: d.get("architecture")) == architecture]
    return t.assign(feature=parsed[t.index].map(lambda d: int(d.get("feature", -1))))


def _decoded(ids, values, decode) -> list[tuple[str, float]]:
    return [(decode([int(i)]), float(v)) for i, v in zip(ids, values, strict=True)]


def write_cards(
    out_dir: str | os.PathLike,
    *,
    feature_acts: np.ndarray,
    sample_index: np.ndarray,
    token_ids: np.ndarray,
    samples: Sequence[Mapping],
    chosen: pd.DataFrame,
    effects: pd.DataFrame,
    decode: Callable[[list[int]], str],
    logits: Sequence[tuple] | None,
    meta: Mapping[str, str],
    n_samples: int = 8,
    index_href: str = "",
    headline_n: int = 10,
) -> pd.DataFrame:
    """One card per chosen feature (``chosen``: rows of :func:`choose_features`, in order):
    ``{label}_f{feature}.html`` + ``.png`` in ``out_dir``, and ``cards.csv`` listing them.

    feature_acts [n_tokens, n_chosen]: each chosen feature's activation on the test tokens;
    sample_index [n_tokens] indexes ``samples`` (dicts with sample_id, label, text);
    token_ids [n_tokens]; logits: per chosen feature (top ids, values, bottom ids, values)
    or None (no unembedding); meta: model, hook, architecture, dataset, baseline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.array([s["label"] for s in samples])
    rows = []
    for j, feat in enumerate(chosen.itertuples()):
        acts = np.asarray(feature_acts[:, j], dtype=np.float64)
        smax = np.zeros(len(samples))
        np.maximum.at(smax, sample_index, acts)
        name = f"{feat.label}_f{int(feat.feature)}"
        save(
            activation_figure(smax, labels, feat.label, meta["baseline"], acts), out / f"{name}.png"
        )
        peak = float(acts.max()) if acts.size else 0.0
        shown = []
        for s in np.argsort(-smax, kind="stable")[:n_samples]:
            if smax[s] <= 0:
                break
            sel = np.flatnonzero(sample_index == s)
            pieces = token_pieces([int(t) for t in token_ids[sel]], decode)
            shown.append(
                {
                    "sample_id": samples[s]["sample_id"],
                    "label": samples[s]["label"],
                    "max": float(smax[s]),
                    "tokens": [
                        (p, float(a), float(a) / peak if peak > 0 else 0.0)
                        for p, a in zip(pieces, acts[sel], strict=True)
                    ],
                }
            )
        eff = effects[(effects.feature == int(feat.feature)) & (effects.condition == feat.label)]
        logit_lists = None
        if logits is not None:
            top_ids, top_v, bot_ids, bot_v = logits[j]
            logit_lists = {
                "promoted": _decoded(top_ids, top_v, decode),
                "suppressed": _decoded(bot_ids, bot_v, decode),
            }
        context = {
            **meta,
            "feature": int(feat.feature),
            "condition": feat.label,
            "auroc": _auroc_text(eff, headline_n),
            "auroc_train": float(feat.auroc_train),
            "fire_rate": float(feat.fire_rate),
            "figure": f"{name}.png",
            "logits": logit_lists,
            "samples": shown,
            "index_href": index_href,
        }
        (out / f"{name}.html").write_text(card_html(context))
        r = eff.iloc[0] if len(eff) else None
        rows.append(
            {
                "condition": feat.label,
                "feature": int(feat.feature),
                "file": f"{name}.html",
                "auroc_train": float(feat.auroc_train),
                "auroc_test": float(r.estimate) if r is not None else np.nan,
                "ci_low": float(r.ci_low) if r is not None else np.nan,
                "ci_high": float(r.ci_high) if r is not None else np.nan,
                "p_fdr_bh": float(r.p_fdr_bh) if r is not None else np.nan,
                "top_token": max(shown[0]["tokens"], key=lambda t: t[1])[0] if shown else "",
            }
        )
    table = pd.DataFrame(rows, columns=CARD_COLUMNS)
    table.to_csv(out / CARDS_FILE, index=False)
    return table
