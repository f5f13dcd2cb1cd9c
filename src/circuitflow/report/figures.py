"""The one figure of each answer, drawn from its annotated rows (:func:`.answers.annotate`):
``*`` marks a row that counts for the claim (BH-significant, n >= headline_n), ``°`` one that
is significant with fewer units (shown, not a headline)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from circuitflow import store
from circuitflow.report.common import PALETTE, _style
from circuitflow.report.questions import FLOW_POSITIONS
from circuitflow.report.text import parse_setting


def _claim(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    return rows[rows["claim"] == key] if len(rows) else rows


def mark(row) -> str:
    """``*`` counts, ``°`` significant with n < headline_n (or excluded), else ''."""
    if row["counts"]:
        return "*"
    return "°" if row["supports"] else ""


def _marked_heatmap(
    ax, part: pd.DataFrame, index: str, columns: str, values: str, order=None, **kw
):
    """Heatmap of ``values`` (mean per cell) with :func:`mark` annotations; ``order``: the
    column order (default sorted)."""
    grid = part.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")
    if order is not None:
        grid = grid.reindex(columns=list(order))
    marks = part.assign(m=part.apply(mark, axis=1)).pivot_table(
        index=index, columns=columns, values="m", aggfunc=lambda s: max(s, key=len)
    )
    marks = marks.reindex_like(grid).fillna("")
    sns.heatmap(grid, annot=marks, fmt="", cmap="vlag", center=0.0, ax=ax, **kw)
    ax.tick_params(axis="y", rotation=0)


def _empty(text: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


def directions_figure(rows: pd.DataFrame) -> Figure:
    """Held-out effect size (Hedges' g, 95% CI band) by layer per model: emotion vs neutral
    (solid) and vs the other emotions (dashed); filled markers count for the claim."""
    _style()
    data = rows[rows["claim"].isin(["separation", "specificity"]) & rows.tested]
    if data.empty:
        return _empty("no vectors rows")
    models = sorted(data.model.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = data[data.model == model]
        for (claim, condition), g in part.groupby(["claim", "condition"]):
            g = g.sort_values("layer")
            color = PALETTE.get(condition)
            style = "-" if claim == "separation" else "--"
            ax.plot(
                g.layer,
                g.estimate,
                style,
                color=color,
                lw=1.3,
                label=f"{condition} vs {'neutral' if claim == 'separation' else 'others'}",
            )
            ax.fill_between(g.layer, g.ci_low, g.ci_high, color=color, alpha=0.12, lw=0)
            hit = g[g.counts]
            ax.scatter(hit.layer, hit.estimate, color=color, s=14, zorder=3)
            miss = g[~g.counts]
            ax.scatter(
                miss.layer, miss.estimate, facecolors="white", edgecolors=color, s=14, zorder=3
            )
        ax.axhline(0, color="0.5", lw=0.8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("held-out Hedges' g")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Separation along the train-split direction (filled: BH q < alpha, n >= 10)")
    fig.tight_layout()
    return fig


def flow_figure(rows: pd.DataFrame) -> Figure:
    """Where each emotion is written in, carried and read out: position x layer of the mean
    recovery estimated by attribution patching (full grid), one panel per model x emotion;
    marks from exact residual patching of the screened sites."""
    _style()
    grid = _claim(rows, "flow_grid")
    exact = rows[rows["claim"].isin(["readout", "written_in"])] if len(rows) else rows
    if grid.empty:
        return _empty("no attribution-patching rows")
    models = sorted(grid.model.unique())
    conditions = sorted(grid.condition.unique())
    fig, axes = plt.subplots(
        len(models),
        len(conditions),
        figsize=(4.6 * len(conditions), 2.6 * len(models)),
        squeeze=False,
    )
    order = [p for p in FLOW_POSITIONS if p in set(grid.position)]
    for i, model in enumerate(models):
        for j, condition in enumerate(conditions):
            ax = axes[i, j]
            part = grid[(grid.model == model) & (grid.condition == condition)]
            values = part.pivot_table(
                index="position", columns="layer", values="mean_treatment", aggfunc="mean"
            ).reindex(order)
            values.columns = values.columns.astype(int)
            e = exact[(exact.model == model) & (exact.condition == condition)]
            marks = pd.DataFrame("", index=values.index, columns=values.columns)
            for r in e.itertuples():
                if r.position in marks.index and int(r.layer) in marks.columns:
                    marks.loc[r.position, int(r.layer)] = mark(r._asdict())
            sns.heatmap(
                values,
                annot=marks,
                fmt="",
                cmap="vlag",
                center=0.0,
                vmin=-1.0,
                vmax=1.0,
                cbar=j == len(conditions) - 1,
                ax=ax,
                annot_kws={"fontsize": 7},
            )
            ax.set_title(f"{model}: {condition}", fontsize=9)
            ax.set_xlabel("layer (hook_resid_pre)")
            ax.set_ylabel("")
            ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(
        "Emotion flow: recovery of the emotional lean when one residual site is patched "
        "(AtP estimate; * exact patching, BH q < alpha, n >= 10; ° exact, n < 10)",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def alignment_figure(rows: pd.DataFrame, key: str) -> Figure:
    """Observed overlap after each map (solid) and the null's mean (dashed) by layer of the
    first model, one panel per k x emotion; filled markers count for the claim."""
    _style()
    data = _claim(rows, key)
    data = data[data.tested] if len(data) else data
    if data.empty:
        return _empty("no alignment rows")
    parsed = data.setting.map(parse_setting)
    data = data.assign(
        method=parsed.map(lambda d: d.get("method")), k=parsed.map(lambda d: d.get("k"))
    )
    ks, conditions = sorted(data.k.unique(), key=int), sorted(data.condition.unique())
    fig, axes = plt.subplots(
        len(ks),
        len(conditions),
        figsize=(3.8 * len(conditions), 2.7 * len(ks)),
        squeeze=False,
        sharey=True,
    )
    colors = dict(zip(sorted(data.method.unique()), sns.color_palette("deep"), strict=False))
    for i, k in enumerate(ks):
        for j, condition in enumerate(conditions):
            ax = axes[i, j]
            part = data[(data.k == k) & (data.condition == condition)]
            for method, g in part.groupby("method"):
                g = g.sort_values("layer")
                c = colors[method]
                ax.plot(g.layer, g.mean_treatment, "-", color=c, lw=1.2, label=f"after: {method}")
                ax.plot(g.layer, g.mean_baseline, "--", color=c, lw=0.8, label=f"null: {method}")
                hit = g[g.counts]
                ax.scatter(hit.layer, hit.mean_treatment, color=c, s=10, zorder=3)
            ax.set_title(f"{condition}, k = {k}", fontsize=9)
            ax.set_xlabel(f"layer of {data.model.iloc[0].split('__')[0]}")
            ax.set_ylabel("overlap (mean cos²)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)
    fig.suptitle(f"Subspace overlap after the neutral-space map vs the null ({data.model.iloc[0]})")
    fig.tight_layout()
    return fig


def heads_figure(rows: pd.DataFrame, key: str = "head_patching") -> Figure:
    """Layer x head d_z of head patching (pooled over emotions) per model, screened heads."""
    _style()
    data = _claim(rows, key)
    data = data[data.tested] if len(data) else data
    if data.empty:
        return _empty("no head-patching rows")
    data = data.assign(
        head=data.setting.map(lambda s: int(parse_setting(s).get("head", -1))),
        layer=data.layer.astype(int),
    )
    models = sorted(data.model.unique())
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.4 * len(models), 0.9 + 0.3 * data.layer.nunique()), squeeze=False
    )
    for ax, model in zip(axes[0], models, strict=True):
        _marked_heatmap(
            ax,
            data[data.model == model],
            "layer",
            "head",
            "estimate",
            vmin=-2,
            vmax=2,
            cbar_kws={"label": "d_z"},
        )
        ax.set_title(model, fontsize=10)
    fig.suptitle("Head patching recovery (d_z vs the unpatched run; * BH q < alpha, n >= 10)")
    fig.tight_layout()
    return fig


def features_figure(rows: pd.DataFrame, key: str = "feature_auroc") -> Figure:
    """Held-out AUROC (Hanley-McNeil CI) of each tested SAE feature vs neutral, per model."""
    _style()
    data = _claim(rows, key)
    data = data[data.tested] if len(data) else data
    if data.empty:
        return _empty("no SAE feature rows")
    data = data.assign(
        architecture=data.setting.map(lambda s: parse_setting(s).get("architecture"))
    )
    models = sorted(data.model.unique())
    fig, axes = plt.subplots(
        1, len(models), figsize=(4.6 * len(models), 3.2), squeeze=False, sharey=True
    )
    for ax, model in zip(axes[0], models, strict=True):
        part = data[data.model == model].reset_index(drop=True)
        x = part.condition.astype("category").cat.codes + part.architecture.eq("topk") * 0.25
        for arch, color in (("standard", "#457b9d"), ("topk", "#e76f51")):
            sel = part.architecture == arch
            ax.errorbar(
                x[sel],
                part.estimate[sel],
                yerr=[
                    part.estimate[sel] - part.ci_low[sel],
                    part.ci_high[sel] - part.estimate[sel],
                ],
                fmt="o",
                ms=3,
                color=color,
                label=arch,
                lw=0.8,
            )
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(range(part.condition.nunique()), sorted(part.condition.unique()))
        ax.set_title(f"{model} ({part.site.iloc[0]} L{int(part.layer.iloc[0])})", fontsize=9)
        ax.set_ylabel("test AUROC vs neutral")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("SAE features chosen on train prompts, tested on test prompts")
    fig.tight_layout()
    return fig


def aesthetics_figure(rows: pd.DataFrame, key: str) -> Figure:
    """Condition x hook (forward order) of -d_z of probe error vs shuffled-target probes
    (positive: the probe beats the shuffled control); the best position per cell."""
    _style()
    data = _claim(rows, key)
    data = data[data.tested] if len(data) else data
    if data.empty:
        return _empty("no probe rows")
    data = data.sort_values("p_fdr_bh", kind="stable").drop_duplicates(
        ["model", "site", "layer", "condition"]
    )
    data = data.assign(
        hook=[store.hook_name(int(r.layer), r.site) for r in data.itertuples()],
        gain=-pd.to_numeric(data.estimate, errors="coerce"),
    )
    models = sorted(data.model.unique())
    fig, axes = plt.subplots(
        len(models),
        1,
        figsize=(12, 1.2 + 0.35 * data.condition.nunique() * len(models)),
        squeeze=False,
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = data[data.model == model]
        order = store.forward_order(part.hook.unique())
        _marked_heatmap(
            ax,
            part,
            "condition",
            "hook",
            "gain",
            order=order,
            vmin=-2,
            vmax=2,
            cbar_kws={"label": "-d_z"},
            annot_kws={"fontsize": 7},
        )
        short = [h.replace("blocks.", "").replace(".hook_", " ") for h in order]
        ax.set_xticks(np.arange(len(order)) + 0.5, short, rotation=90, fontsize=6)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("")
    fig.suptitle("Probe error below shuffled-target probes (-d_z; * BH q < alpha, n >= 10)")
    fig.tight_layout()
    return fig


def projectors_figure(ranking: pd.DataFrame | None, rows: pd.DataFrame) -> Figure:
    """ranking.csv's image gain and retrieval accuracy by projector (chance 1/3), with n."""
    _style()
    if ranking is None or not len(ranking):
        return _empty("no projector ranking")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0))
    r = ranking.sort_values("rank")
    sns.barplot(data=r, x="architecture", y="caption_nll_image_gain", ax=axes[0], color="#457b9d")
    axes[0].axhline(0, color="0.3", lw=0.8)
    axes[0].set_ylabel("image gain (nats / token)")
    sns.barplot(data=r, x="architecture", y="retrieval_accuracy", ax=axes[1], color="#2a9d8f")
    axes[1].axhline(1 / 3, color="0.3", lw=0.8, ls="--")
    axes[1].set_ylabel("retrieval accuracy (chance 1/3)")
    n = rows[rows.tested].n_units.max() if len(rows) and rows.tested.any() else np.nan
    units = f"{int(n)} test photos" if pd.notna(n) else "test photos"
    small = len(rows) and rows.tested.any() and bool(rows[rows.tested].small_n.all())
    flag = ": n < headline_n, not a headline" if small else ""
    fig.suptitle(f"Projector study: held-out scores over {units} (ranking.csv{flag})")
    fig.tight_layout()
    return fig
