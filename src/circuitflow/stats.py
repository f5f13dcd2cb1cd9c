"""Effect sizes, tests and multiple-comparison corrections for the tidy effect-size table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

# One row per (phase, dataset, model, layer, site, position, condition, comparison, metric).
EFFECT_COLUMNS = [
    "phase",
    "dataset",
    "model",
    "layer",
    "site",
    "position",
    "condition",
    "comparison",
    "metric",
    "family",
    "test",
    "n_treatment",
    "n_baseline",
    "mean_treatment",
    "sd_treatment",
    "mean_baseline",
    "sd_baseline",
    "effect_size",
    "estimate",
    "ci_low",
    "ci_high",
    "statistic",
    "df",
    "p",
    "p_bonferroni",
    "p_fdr_bh",
    "auroc",
]
REQUIRED = [c for c in EFFECT_COLUMNS if c not in ("ci_low", "ci_high", "auroc", "df")]


def cohens_d(treatment, baseline, axis: int = -1):
    """Cohen's d with the pooled standard deviation (vectorised along ``axis``)."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    n1, n2 = t.shape[axis], b.shape[axis]
    v1, v2 = t.var(axis=axis, ddof=1), b.var(axis=axis, ddof=1)
    pooled = np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    with np.errstate(divide="ignore", invalid="ignore"):  # constant resamples -> nan/inf
        return (t.mean(axis=axis) - b.mean(axis=axis)) / pooled


def compare_independent(
    treatment: Sequence[float],
    baseline: Sequence[float],
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> dict:
    """Welch's t-test, Cohen's d with a BCa bootstrap CI, and AUROC (treatment = positive)."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if len(t) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per arm, got {len(t)} and {len(b)}")
    if not (np.isfinite(t).all() and np.isfinite(b).all()):
        raise ValueError("NaN or inf in the compared values")
    welch = sps.ttest_ind(t, b, equal_var=False)
    ci = sps.bootstrap(
        (t, b),
        cohens_d,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="BCa",
        vectorized=True,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    y = np.r_[np.ones(len(t)), np.zeros(len(b))]
    return {
        "test": "welch_t",
        "n_treatment": len(t),
        "n_baseline": len(b),
        "mean_treatment": t.mean(),
        "sd_treatment": t.std(ddof=1),
        "mean_baseline": b.mean(),
        "sd_baseline": b.std(ddof=1),
        "effect_size": "cohens_d",
        "estimate": float(cohens_d(t, b)),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "statistic": float(welch.statistic),
        "df": float(welch.df),
        "p": float(welch.pvalue),
        "auroc": float(roc_auc_score(y, np.r_[t, b])),
    }


def adjust_pvalues(table: pd.DataFrame) -> pd.DataFrame:
    """Fill ``p_bonferroni`` and ``p_fdr_bh`` within each ``family``."""
    table = table.copy()
    table["p_bonferroni"] = np.nan
    table["p_fdr_bh"] = np.nan
    for _, idx in table.groupby("family", sort=True).groups.items():
        p = table.loc[idx, "p"].to_numpy(dtype=float)
        table.loc[idx, "p_bonferroni"] = multipletests(p, method="bonferroni")[1]
        table.loc[idx, "p_fdr_bh"] = multipletests(p, method="fdr_bh")[1]
    return table


def family_name(phase: str, model: str, metric: str, dataset: str = "") -> str:
    """A family of tests corrected together: one phase x model x metric (per dataset)."""
    return "/".join(x for x in (phase, dataset, model, metric) if x)


def finalize(rows: Sequence[dict]) -> pd.DataFrame:
    """Order, correct and check an effect-size table."""
    table = pd.DataFrame(list(rows))
    for col in EFFECT_COLUMNS:
        if col not in table:
            table[col] = np.nan
    table = adjust_pvalues(table[EFFECT_COLUMNS])
    validate_effect_table(table)
    keys = [
        "phase",
        "dataset",
        "model",
        "layer",
        "site",
        "position",
        "condition",
        "comparison",
        "metric",
    ]
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def validate_effect_table(table: pd.DataFrame) -> None:
    """Columns present and in order; no NaN where a value is required."""
    if list(table.columns) != EFFECT_COLUMNS:
        raise ValueError(f"effect table columns {list(table.columns)} != {EFFECT_COLUMNS}")
    for col in REQUIRED:
        if table[col].isna().any():
            first = table.index[table[col].isna()][0]
            raise ValueError(f"effect table: column {col!r} is empty in row {first}")


def separation_rows(
    projection: np.ndarray,
    hooks: Sequence[str],
    positions: Sequence[str],
    conditions: Sequence[str],
    labels: np.ndarray,
    split: np.ndarray,
    baseline: str,
    dataset: str,
    model: str,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> list[dict]:
    """Held-out separation along each train-split direction: condition vs baseline, test split.

    projection: [hook, position, condition, sample]. Comparisons where every held-out value is
    identical (e.g. the last token is the same "." in every prompt at the embedding) have no
    defined effect size and are left out.
    """
    from circuitflow.store import parse_hook_name

    test = split == "test"
    base = test & (labels == baseline)
    metric = "projection_on_mean_diff"
    rows = []
    for h, hook in enumerate(hooks):
        layer, site = parse_hook_name(hook)
        for p, position in enumerate(positions):
            for c, condition in enumerate(conditions):
                treat = test & (labels == condition)
                values = projection[h, p, c]
                if np.ptp(values[treat | base]) == 0:
                    continue
                result = compare_independent(
                    values[treat],
                    values[base],
                    seed=seed,
                    n_resamples=n_resamples,
                    confidence_level=confidence_level,
                )
                rows.append(
                    {
                        "phase": "vectors",
                        "dataset": dataset,
                        "model": model,
                        "layer": layer,
                        "site": site,
                        "position": position,
                        "condition": condition,
                        "comparison": f"vs_{baseline}",
                        "metric": metric,
                        "family": family_name("vectors", model, metric, dataset),
                        **result,
                    }
                )
    return rows
