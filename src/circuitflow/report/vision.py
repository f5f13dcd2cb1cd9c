"""Figures of the vision track: probe scores by layer, stimulus grids, and patching or steering
effects by layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from circuitflow.report.common import _style


def _hook_order(hooks) -> list[str]:
    """Block hooks in forward order: a VLM's vision tower before its language model."""

    def key(h):
        return (0 if h.startswith("vision.") else 1, int(h.removeprefix("vision.").split(".")[1]))

    return sorted(set(hooks), key=key)


def _short(hook: str) -> str:
    return hook.replace("vision.blocks.", "v").replace("blocks.", "").split(".")[0]


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
