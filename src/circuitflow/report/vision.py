"""Figures of the vision track: probe scores by layer, where each attribute becomes decodable
along tower -> projector -> language model, stimulus grids, and patching or steering effects by
layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from circuitflow import store
from circuitflow.report.common import _style


def _hook_order(hooks) -> list[str]:
    """Block hooks in forward order: a VLM's vision tower, its projector, its language model."""
    return store.forward_order(hooks)


def _short(hook: str) -> str:
    if hook.startswith(f"{store.PROJECTOR}."):
        return "proj"
    return hook.replace("vision.blocks.", "v").replace("blocks.", "").split(".")[0]


def _stages(order: list[str]) -> list[str]:
    """Stage of each hook: tower, projector, lm (a VLM's language model) or encoder (a vision
    encoder's own blocks)."""
    vlm = any(h.partition(".")[0] in (*store.TOWERS, store.PROJECTOR) for h in order)
    out = []
    for h in order:
        stage = h.partition(".")[0]
        if stage == store.PROJECTOR:
            out.append("projector")
        else:
            out.append("tower" if stage in store.TOWERS else "lm" if vlm else "encoder")
    return out


def first_decodable(
    probes: pd.DataFrame, level: float = 0.9, min_gain: float = 0.1
) -> pd.DataFrame:
    """Per model x position x target: the first hook in forward order whose held-out probe
    score reaches ``level`` x the target's best score over hooks, its stage (tower |
    projector | lm | encoder) and score, the best score and its hook, the score at the
    projector (NaN without one), and ``decodable``: the best score beats chance (probes.csv's
    ``chance``, 0 when absent) by ``min_gain``. probes: probes.csv rows."""
    if "chance" not in probes:
        probes = probes.assign(chance=0.0)
    rows = []
    for (model, position, target), part in probes.groupby(["model", "position", "target"]):
        scores = part.groupby("hook").score.mean()
        order = _hook_order(scores.index)
        best = float(scores.max())
        stages = dict(zip(order, _stages(order), strict=True))
        first = next(h for h in order if scores[h] >= level * best)
        proj = [h for h in order if stages[h] == "projector"]
        rows.append(
            {
                "model": model,
                "position": position,
                "target": target,
                "first_hook": first,
                "first_stage": stages[first],
                "first_score": float(scores[first]),
                "best_score": best,
                "best_hook": max(order, key=scores.get),
                "projector_score": float(scores[proj[0]]) if proj else np.nan,
                "decodable": best >= float(part.chance.max()) + min_gain,
            }
        )
    return pd.DataFrame(rows)


def decodability_by_stage(probes: pd.DataFrame, position: str = "mean", level: float = 0.9):
    """Where each attribute becomes decodable: held-out probe score by target (rows) x hook
    (columns, forward order: tower | projector | LM, split by lines), one panel per model; a
    dot marks the first hook reaching ``level`` x the target's best score (targets whose best
    beats chance by 0.1, :func:`first_decodable`)."""
    _style()
    t = probes[probes.position == position]
    models = list(dict.fromkeys(t.model))
    first = first_decodable(t, level)
    fig, axes = plt.subplots(
        len(models), 1, figsize=(11, 1.2 + 0.42 * t.target.nunique() * len(models)), squeeze=False
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = t[t.model == model]
        order = _hook_order(part.hook)
        grid = part.pivot_table(index="target", columns="hook", values="score")[order]
        sns.heatmap(
            grid.clip(lower=-0.5),
            ax=ax,
            cmap="viridis",
            vmin=-0.5,
            vmax=1.0,
            cbar_kws={"label": "held-out R² / accuracy", "shrink": 0.8},
        )
        stages = _stages(order)
        for i in range(1, len(order)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i, color="white", lw=2)
        mine = first[first.model == model].set_index("target")
        for y, target in enumerate(grid.index):
            if not mine.loc[target, "decodable"]:
                continue
            x = order.index(mine.loc[target, "first_hook"])
            ax.plot(x + 0.5, y + 0.5, "o", color="white", ms=5, mec="black")
        ax.set_xticks(np.arange(len(order)) + 0.5, [_short(h) for h in order], fontsize=6)
        ax.set(xlabel="hook (v = vision tower block, proj = projector, then LM / encoder block)")
        ax.set_ylabel("")
        ax.set_title(f"{model}: where each attribute becomes decodable ({position})", fontsize=9)
    fig.tight_layout()
    return fig


def probe_scores_by_layer(probes: pd.DataFrame, position: str = "mean") -> Figure:
    """Held-out probe score (R² for graded attributes, accuracy for composition) by hook, one
    panel per model; dotted: the composition classifier's chance (majority class)."""
    _style()
    t = probes[probes.position == position]
    models = list(dict.fromkeys(t.model))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = t[t.model == model]
        order = _hook_order(part.hook)
        part = part.assign(x=part.hook.map({h: i for i, h in enumerate(order)}))
        sns.lineplot(data=part, x="x", y="score", hue="target", marker="o", ax=ax)
        chance = part[part.kind == "classification"].groupby("x").chance.mean()
        if len(chance):
            ax.plot(chance.index, chance.values, ":", color="grey", label="composition chance")
        ax.set_xticks(range(len(order)), [_short(h) for h in order], fontsize=7)
        ax.set(xlabel="hook (block)", ylabel="held-out R² / accuracy", title=model)
        ax.set_ylim(max(-0.5, ax.get_ylim()[0]), 1.02)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def stimulus_grid(rows: list[dict], images: np.ndarray, source: str, max_cols: int = 6) -> Figure:
    """One photo's stimuli: a row per attribute (original first), variants by level."""
    mine = [r for r in rows if r["frame_id"] == source]
    original = next(r for r in mine if r["label"] == r.get("baseline", "original"))
    groups: dict[str, list[dict]] = {}
    for r in mine:
        if r["attribute"] != "original":
            groups.setdefault(r["attribute"], []).append(r)
    n_cols = min(max_cols, 1 + max((len(v) for v in groups.values()), default=0))
    fig, axes = plt.subplots(
        len(groups), n_cols, figsize=(1.6 * n_cols, 1.7 * len(groups)), squeeze=False
    )
    for ax_row, (attribute, variants) in zip(axes, groups.items(), strict=True):
        cells = [original, *sorted(variants, key=lambda r: r["level"])][:n_cols]
        for ax, r in zip(ax_row, cells, strict=False):
            ax.imshow(images[r["image_index"]])
            title = "original" if r is original else f"{r['label']}\n{r['level']:+.2g}"
            ax.set_title(title, fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in ax_row[len(cells) :]:
            ax.axis("off")
        ax_row[0].set_ylabel(attribute, fontsize=8)
    fig.suptitle(f"stimuli of {source} (level per attribute)", fontsize=9)
    fig.tight_layout()
    return fig


def vision_effect_by_layer(table: pd.DataFrame, value: str, title: str, ylabel: str) -> Figure:
    """Mean ``value`` (95% CI over pairs) by hook, per attribute: treatment solid, random
    control dashed. ``table``: recovery.csv (valid rows) or steering samples.csv rows."""
    _style()
    order = list(dict.fromkeys(table.hook))
    t = table.assign(x=table.hook.map({h: i for i, h in enumerate(order)}))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(
        data=t,
        x="x",
        y=value,
        hue="attribute",
        style="arm",
        markers=True,
        errorbar=("ci", 95),
        style_order=["treatment", "control"],
        ax=ax,
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(order)), [_short(h) for h in order], fontsize=7)
    ax.set(xlabel="hook (block)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
