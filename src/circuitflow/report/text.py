"""Figures of the text track (and the phases both tracks share): separability, direction
cosines, steering, patching, alignment, SAE metrics (the summary is in :mod:`.summary`)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from circuitflow.report.common import ALPHA, PALETTE, _style


def separability_by_layer(table: pd.DataFrame) -> Figure:
    """Held-out Cohen's d of the mean-difference projection across depth, per model/position."""
    _style()
    rows = table[
        (table.phase == "vectors")
        & (table.metric == "projection_on_mean_diff")
        & (table.site == "hook_resid_post")
    ].copy()
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


def cosine_matrices(matrices: Mapping[str, tuple[list[str], np.ndarray, str]]) -> Figure:
    """Cosine between condition directions (emotions, image attributes), one panel per model:
    {model: (conditions, M, hook)}; panels widen with their number of conditions."""
    _style()
    sizes = [len(conditions) for conditions, _, _ in matrices.values()]
    widths = [max(3.6, 0.45 * n + 1.2) for n in sizes]
    fig, axes = plt.subplots(
        1,
        len(matrices),
        figsize=(sum(widths), max(3.2, 0.4 * max(sizes) + 1.2)),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, (model, (conditions, matrix, hook)) in zip(axes[0], matrices.items(), strict=True):
        sns.heatmap(
            pd.DataFrame(matrix, index=conditions, columns=conditions),
            vmin=-1,
            vmax=1,
            cmap="vlag",
            annot=len(conditions) <= 8,
            fmt=".2f",
            square=True,
            cbar=False,
            ax=ax,
        )
        ax.set_title(f"{model}\n{hook}", fontsize=9)
    fig.suptitle(
        "Cosine similarity of condition directions (text: last token; images: mean)", y=1.04
    )
    return fig


def layer_cosines(model: str, hooks: list[str], matrix: np.ndarray, condition: str) -> Figure:
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


def parse_setting(setting: object) -> dict[str, str]:
    """``"direction=anger alpha=0.25 mode=relative"`` -> {"direction": "anger", ...}."""
    if not isinstance(setting, str):
        return {}
    return dict(part.split("=", 1) for part in setting.split() if "=" in part)


def significance_mark(p_baseline: float, p_control: float = np.nan, alpha: float = ALPHA) -> str:
    """``*`` survives BH-FDR vs baseline; ``†`` also vs the random control."""
    mark = "*" if p_baseline < alpha else ""
    if mark and p_control < alpha:
        mark += "†"
    return mark


def _annotated_heatmap(ax, values: pd.DataFrame, marks: pd.DataFrame, center=0.0, **kw):
    marks = marks.reindex_like(values).astype(object)
    marks = marks.where(marks.notna(), "")
    annot = values.map(lambda v: "" if pd.isna(v) else f"{v:.2f}") + marks
    sns.heatmap(values, annot=annot, fmt="", center=center, cmap="vlag", ax=ax, **kw)
    ax.tick_params(axis="y", rotation=0)


STEERING_COMPARISONS = ("vs_baseline", "vs_random_control")


def steering_effects(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Steering rows of ``metric`` with layer, alpha, direction parsed from ``setting``:
    one row per (dataset, model, condition, direction, layer, alpha) with d_z and corrected
    p vs the unsteered baseline and vs the random control."""
    rows = table[(table.phase == "steering") & (table.metric == metric)].copy()
    if rows.empty:
        return rows
    parsed = rows.setting.map(parse_setting)
    rows["direction"] = parsed.map(lambda d: d.get("direction", ""))
    rows["alpha"] = parsed.map(lambda d: float(d.get("alpha", "nan")))
    rows["mode"] = parsed.map(lambda d: d.get("mode", ""))
    rows["alpha_label"] = rows["alpha"].map("{:g}".format) + " " + rows["mode"]
    keys = ["dataset", "model", "condition", "direction", "layer", "alpha", "mode", "alpha_label"]
    wide = rows.pivot_table(
        index=keys, columns="comparison", values=["estimate", "p_fdr_bh"], aggfunc="first"
    )
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    for col in (f"{a}_{b}" for a in ("estimate", "p_fdr_bh") for b in STEERING_COMPARISONS):
        if col not in wide:
            wide[col] = np.nan
    return wide.reset_index()


def steering_heatmap(table: pd.DataFrame, metric: str, alpha: float = ALPHA) -> Figure:
    """Layer x alpha heatmaps of d_z (steered vs unsteered, same prompts) for the emotion
    directions: rows models, columns emotions; * survives BH-FDR, † also vs random control."""
    _style()
    eff = steering_effects(table, metric)
    if len(eff):
        eff = eff[(eff.direction == eff.condition) & eff.estimate_vs_baseline.notna()]
    models = sorted(eff.model.unique()) if len(eff) else []
    conditions = sorted(eff.condition.unique()) if len(eff) else []
    fig, axes = plt.subplots(
        max(len(models), 1),
        max(len(conditions), 1),
        figsize=(3.4 * max(len(conditions), 1), 2.6 * max(len(models), 1)),
        squeeze=False,
    )
    if not len(eff):
        axes[0, 0].text(0.5, 0.5, f"no steering rows for {metric}", ha="center")
        axes[0, 0].axis("off")
        return fig
    lim = float(np.nanmax(np.abs(eff["estimate_vs_baseline"]))) or 1.0
    for i, model in enumerate(models):
        for j, condition in enumerate(conditions):
            ax = axes[i, j]
            part = eff[(eff.model == model) & (eff.condition == condition)]
            if part.empty:
                ax.axis("off")
                continue
            values = part.pivot(index="layer", columns="alpha_label", values="estimate_vs_baseline")
            p_ctrl = part.get("p_fdr_bh_vs_random_control", pd.Series(np.nan, part.index))
            marks = part.assign(
                mark=[
                    significance_mark(a, b, alpha)
                    for a, b in zip(part["p_fdr_bh_vs_baseline"], p_ctrl, strict=True)
                ]
            ).pivot(index="layer", columns="alpha_label", values="mark")
            _annotated_heatmap(ax, values, marks, vmin=-lim, vmax=lim, cbar=False)
            ax.set_title(f"{model}: {condition}", fontsize=9)
            ax.set_xlabel("alpha")
            ax.set_ylabel("layer (resid_pre)")
    fig.suptitle(
        f"Steering: d_z of {metric}, steered vs unsteered (* BH-FDR < {alpha}, † also vs random)",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def patching_position_heatmap(
    residual: pd.DataFrame, table: pd.DataFrame, model: str, alpha: float = ALPHA
) -> Figure:
    """Layer x position mean recovery of residual patching, one panel per direction x emotion;
    * the one-sample test of recovery against the unpatched run survives BH-FDR."""
    _style()
    ok = residual[~residual["small_denominator"].astype(bool)]
    directions = ["clean_to_corrupted", "corrupted_to_clean"]
    conditions = sorted(residual.condition.unique())
    order = [
        "phrase_first",
        "phrase_mid",
        "phrase_last",
        "phrase_block",
        "post_phrase",
        "suffix_mid",
        "last",
    ]
    fig, axes = plt.subplots(
        len(directions),
        max(len(conditions), 1),
        figsize=(3.6 * max(len(conditions), 1), 3.4 * len(directions)),
        squeeze=False,
    )
    sig = table[
        (table.phase == "patching")
        & (table.model == model)
        & table.metric.str.startswith("recovery_")
    ]
    for i, direction in enumerate(directions):
        for j, condition in enumerate(conditions):
            ax = axes[i, j]
            part = ok[(ok.direction == direction) & (ok.condition == condition)]
            if part.empty:
                ax.text(
                    0.5,
                    0.5,
                    "no pair with a large enough\nclean-corrupted difference",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
                ax.axis("off")
                continue
            values = part.groupby(["layer", "position"]).recovery.mean().unstack()
            values = values[[c for c in order if c in values.columns]]
            s = sig[(sig.metric == f"recovery_{direction}") & (sig.condition == condition)]
            marks = s.assign(mark=np.where(s.p_fdr_bh < alpha, "*", "")).pivot_table(
                index="layer", columns="position", values="mark", aggfunc="first"
            )
            _annotated_heatmap(
                ax,
                values,
                marks,
                center=0.0 if i == 0 else 1.0,
                vmin=-0.25,
                vmax=1.25,
                cbar=False,
                annot_kws={"fontsize": 6},
            )
            ax.set_title(f"{condition}: {direction.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("position")
            ax.set_ylabel("layer (resid_pre)")
    fig.suptitle(f"{model}: residual patching recovery (* BH-FDR < {alpha})", y=1.01)
    fig.tight_layout()
    return fig


HEAD_PANELS = {
    "mean_recovery": ("head_patch_recovery", "patch recovery"),
    "mean_zero_effect": ("head_zero_ablation_effect", "zero-ablation effect"),
    "mean_mean_effect": ("head_mean_ablation_effect", "mean-ablation effect"),
}


def head_heatmap(
    ranking: pd.DataFrame, table: pd.DataFrame, model: str, alpha: float = ALPHA
) -> Figure:
    """Layer x head means over all pairs (condition ``all``) of patch recovery and the zero /
    mean ablation effects; * the test against 0 survives BH-FDR."""
    _style()
    r = ranking[ranking.condition == "all"]
    fig, axes = plt.subplots(
        1, 3, figsize=(12, 0.5 + 0.45 * max(r.layer.nunique(), 2)), squeeze=False
    )
    sig = table[(table.phase == "patching") & (table.model == model) & (table.condition == "all")]
    heads = sig.setting.map(lambda s: parse_setting(s).get("head"))
    sig = sig.assign(head=pd.to_numeric(heads, errors="coerce"))
    for ax, (column, (metric, title)) in zip(axes[0], HEAD_PANELS.items(), strict=True):
        if r.empty:
            ax.text(0.5, 0.5, "no pair with a large enough\nclean-corrupted difference",
                    ha="center", va="center", fontsize=8)  # fmt: skip
            ax.axis("off")
            continue
        if r[column].isna().all():
            ax.text(0.5, 0.5, f"{title}: not run\n(patching.head_ablations)",
                    ha="center", va="center", fontsize=8)  # fmt: skip
            ax.axis("off")
            continue
        values = r.pivot(index="layer", columns="head", values=column)
        s = sig[sig.metric == metric]
        marks = s.assign(mark=np.where(s.p_fdr_bh < alpha, "*", "")).pivot_table(
            index="layer", columns="head", values="mark", aggfunc="first"
        )
        marks.columns = marks.columns.astype(int)
        _annotated_heatmap(
            ax, values, marks, vmin=-1, vmax=1, cbar=False, annot_kws={"fontsize": 6}
        )
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{model}: attention heads (mean over pairs; * BH-FDR < {alpha})", y=1.03)
    fig.tight_layout()
    return fig


def overlap_vs_k(alignment: pd.DataFrame, site: str = "hook_resid_post") -> Figure:
    """Subspace overlap vs k at matched relative depths (mean over matched layer pairs):
    before mapping (method none), after each map, shuffled-pairing maps (dashed), and the
    random-subspace band (mean ± 1.96 sd, descriptive)."""
    _style()
    a = alignment[alignment.matched_depth.astype(bool) & (alignment.site == site)]
    if "measure" in a:
        a = a[a.measure == "subspace_overlap"]
    positions = sorted(a.position.unique())
    conditions = sorted(a.condition.unique())
    fig, axes = plt.subplots(
        max(len(positions), 1),
        max(len(conditions), 1),
        figsize=(3.6 * max(len(conditions), 1), 2.8 * max(len(positions), 1)),
        squeeze=False,
        sharey=True,
    )
    palette = dict(
        zip(["none", "procrustes", "ridge", "cca"], sns.color_palette("deep", 4), strict=True)
    )
    for i, position in enumerate(positions):
        for j, condition in enumerate(conditions):
            ax = axes[i, j]
            part = a[(a.position == position) & (a.condition == condition)]
            m = part.groupby(["method", "k"]).mean(numeric_only=True).reset_index()
            rand = m.groupby("k").mean(numeric_only=True).reset_index()
            ax.plot(
                rand.k, rand.overlap_before, marker="o", ms=3, color="0.4", label="before (no map)"
            )
            ax.fill_between(
                rand.k,
                rand.overlap_random_mean - 1.96 * rand.overlap_random_sd,
                rand.overlap_random_mean + 1.96 * rand.overlap_random_sd,
                color="0.8",
                label="random subspace (±1.96 sd)",
            )
            for method, g in m[m.method != "none"].groupby("method"):
                label = f"after: {method}"
                ax.plot(
                    g.k, g.overlap_after, marker="o", ms=3, color=palette.get(method), label=label
                )
                if g.overlap_shuffled.notna().any():
                    ax.plot(
                        g.k,
                        g.overlap_shuffled,
                        ls="--",
                        lw=1,
                        color=palette.get(method),
                        label=f"shuffled: {method}",
                    )
            ax.set_title(f"{condition} ({position})", fontsize=9)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("k")
            ax.set_ylabel("overlap (mean cos²)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    pair = f"{alignment.model_a.iloc[0]} -> {alignment.model_b.iloc[0]}" if len(alignment) else ""
    fig.suptitle(f"Emotion-subspace overlap vs k, {pair}, {site} at matched depths", y=1.02)
    fig.tight_layout()
    return fig


SAE_METRICS = {
    "explained_variance": "explained variance",
    "l0": "L0",
    "dead_fraction": "dead fraction",
    "ce_loss_recovered": "CE loss recovered",
}


def sae_metric_frame(metrics: list[dict]) -> pd.DataFrame:
    """metrics.json dicts -> one row per SAE with the held-out metrics and CE loss recovered."""
    return pd.DataFrame(
        [
            {
                "sae": f"{m['model']}\n{m['hook'].replace('blocks.', 'L').replace('.hook_', ' ')}",
                "architecture": m["architecture"],
                **{k: m["held_out"][k] for k in ("explained_variance", "l0", "dead_fraction")},
                "ce_loss_recovered": m["ce_loss"]["ce_loss_recovered"],
            }
            for m in metrics
        ]
    )


def sae_metric_bars(metrics: list[dict]) -> Figure:
    """Held-out explained variance, L0, dead fraction and CE loss recovered of every SAE."""
    _style()
    frame = sae_metric_frame(metrics)
    fig, axes = plt.subplots(
        1, len(SAE_METRICS), figsize=(3.2 * len(SAE_METRICS), 3.2), squeeze=False
    )
    for ax, (column, title) in zip(axes[0], SAE_METRICS.items(), strict=True):
        if frame.empty:
            ax.axis("off")
            continue
        sns.barplot(data=frame, x="sae", y=column, hue="architecture", ax=ax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelsize=7)
        if ax.get_legend() is not None and column != "explained_variance":
            ax.get_legend().remove()
    fig.suptitle("Sparse autoencoders: held-out metrics (test split)", y=1.03)
    fig.tight_layout()
    return fig
