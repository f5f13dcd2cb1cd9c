"""Figures and the plain-words summary for the report (seaborn, one consistent style)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

ALPHA = 0.05
PALETTE = {"gratitude": "#2a9d8f", "anger": "#e63946", "apology": "#457b9d"}


def _style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def save(fig, path) -> None:
    """PNG without metadata that changes between runs."""
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def separability_by_layer(table: pd.DataFrame):
    """Held-out Cohen's d of the mean-difference projection across depth, per model/position."""
    _style()
    rows = table[(table.phase == "vectors") & (table.site == "hook_resid_post")].copy()
    n_layers = rows.groupby("model").layer.transform("max") + 1
    rows["relative depth"] = (rows.layer + 1) / n_layers
    rows["significant"] = rows.p_fdr_bh < ALPHA
    grid = sns.relplot(
        data=rows,
        x="relative depth",
        y="estimate",
        hue="condition",
        col="position",
        row="model",
        kind="line",
        marker="o",
        palette=PALETTE,
        height=2.6,
        aspect=1.3,
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels("layer / n_layers (hook_resid_post)", "held-out effect size")
    grid.figure.suptitle(
        "Separability of emotion vs neutral along the train-split direction", y=1.02
    )
    return grid.figure


def cosine_matrices(matrices: Mapping[str, tuple[list[str], np.ndarray, str]]):
    """Cosine between emotion directions, one panel per model: {model: (conditions, M, hook)}."""
    _style()
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.2), squeeze=False)
    for ax, (model, (conditions, matrix, hook)) in zip(axes[0], matrices.items(), strict=True):
        sns.heatmap(
            pd.DataFrame(matrix, index=conditions, columns=conditions),
            vmin=-1,
            vmax=1,
            cmap="vlag",
            annot=True,
            fmt=".2f",
            square=True,
            cbar=False,
            ax=ax,
        )
        ax.set_title(f"{model}\n{hook}", fontsize=9)
    fig.suptitle("Cosine similarity of emotion directions (last token)", y=1.04)
    return fig


def layer_cosines(model: str, hooks: list[str], matrix: np.ndarray, condition: str):
    """Cosine of one emotion's direction across layers (hook x hook)."""
    _style()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    labels = [h.replace("blocks.", "").replace(".hook_", " ") for h in hooks]
    sns.heatmap(
        pd.DataFrame(matrix, index=labels, columns=labels),
        vmin=-1,
        vmax=1,
        cmap="vlag",
        square=True,
        ax=ax,
        cbar_kws={"shrink": 0.7},
        xticklabels=max(1, len(hooks) // 10),
        yticklabels=max(1, len(hooks) // 10),
    )
    ax.set_title(f"{model}: {condition} direction across layers (last token)", fontsize=10)
    return fig


def summary_markdown(table: pd.DataFrame) -> str:
    """Plain-words summary: per model and phase, which effects survive BH-FDR."""
    lines = ["# circuitflow summary", ""]
    lines.append(
        f"Effects are tested within families (one phase x dataset x model x metric) and "
        f"corrected with Benjamini-Hochberg; 'survives' means p_fdr_bh < {ALPHA}."
    )
    for (model, phase), rows in table.groupby(["model", "phase"], sort=True):
        sig = rows[rows.p_fdr_bh < ALPHA]
        lines += ["", f"## {model} — {phase}", ""]
        lines.append(f"{len(sig)} of {len(rows)} comparisons survive BH-FDR.")
        for condition, crow in rows.groupby("condition", sort=True):
            best = crow.loc[crow.estimate.abs().idxmax()]
            csig = crow[crow.p_fdr_bh < ALPHA]
            lines.append(
                f"- {condition} ({best.comparison}): {len(csig)}/{len(crow)} survive; "
                f"strongest at layer {best.layer} {best.site} ({best.position}): "
                f"{best.effect_size} = {best.estimate:.2f} "
                f"[{best.ci_low:.2f}, {best.ci_high:.2f}], p_fdr_bh = {best.p_fdr_bh:.2g}"
                + (f", AUROC {best.auroc:.2f}" if pd.notna(best.auroc) else "")
                + "."
            )
    return "\n".join(lines) + "\n"
