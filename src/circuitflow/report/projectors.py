"""Figures of the projector study: held-out scores by projector with photo-level CIs, and the
training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from circuitflow.report.common import _style


def photo_scores(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Long per-photo means (rows: architecture, source, metric, value, arm) of held-out
    caption NLL and retrieval accuracy (mean over attributes), with the mismatched-image null."""
    out = []
    for arm, prefix in (("own image", ""), ("mismatched image", "mismatched_")):
        retrieval = [c for c in evaluations if c.startswith(f"{prefix}retrieval_")]
        t = evaluations.assign(
            caption_nll=evaluations[f"{prefix}caption_nll"],
            retrieval_accuracy=evaluations[retrieval].mean(axis=1),
        )
        per = t.groupby(["architecture", "source"])[["caption_nll", "retrieval_accuracy"]].mean()
        long = per.reset_index().melt(["architecture", "source"], var_name="metric")
        out.append(long.assign(arm=arm))
    return pd.concat(out, ignore_index=True)


def projector_scores(evaluations: pd.DataFrame, chance: float) -> Figure:
    """Per projector: held-out caption NLL and retrieval accuracy, bars = mean over test
    photos with a 95% bootstrap CI over photos, beside the mismatched-image null; the dashed
    line is chance retrieval."""
    _style()
    scores = photo_scores(evaluations)
    order = (
        scores[(scores.metric == "caption_nll") & (scores.arm == "own image")]
        .groupby("architecture")["value"]
        .mean()
        .sort_values()
        .index
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (metric, label) in zip(
        axes,
        (("caption_nll", "caption NLL (nats/token)"), ("retrieval_accuracy", "retrieval")),
        strict=True,
    ):
        sns.barplot(
            scores[scores.metric == metric], x="architecture", y="value", hue="arm",
            order=list(order), errorbar=("ci", 95), seed=0, ax=ax,
        )  # fmt: skip
        ax.set_ylabel(label)
        ax.set_xlabel("")
        if metric == "retrieval_accuracy":
            ax.axhline(chance, ls="--", c="k", lw=0.8)
    n = evaluations["source"].nunique()
    fig.suptitle(f"held-out photos (n = {n}; CI over photos; ordered by NLL)", y=1.02)
    fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame) -> Figure:
    """Caption loss per optimizer step of every trained VLM (rows: model, step, loss)."""
    _style()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(curves, x="step", y="loss", hue="model", ax=ax)
    ax.set_ylabel("caption loss (nats/token)")
    fig.tight_layout()
    return fig
