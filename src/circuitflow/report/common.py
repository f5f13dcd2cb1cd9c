"""The report's one plotting style: seaborn theme, colours, significance level, and PNG saving
without run-dependent metadata (so figures are byte-identical across runs)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ALPHA = 0.05
PALETTE = {"gratitude": "#2a9d8f", "anger": "#e63946", "apology": "#457b9d"}


def _style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def save(fig: Figure, path: str | os.PathLike) -> None:
    """PNG without metadata that changes between runs."""
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
