"""The effect table's layout (:data:`EFFECT_COLUMNS`), its families and their corrections.

P values are corrected within a ``family`` (one phase x dataset x model x metric) by
Bonferroni and Benjamini-Hochberg (statsmodels); a family may declare more hypotheses than it
has rows (``n_family``) and the missing ones then count as p = 1 (conservative).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

KEYS = [
    "phase",
    "dataset",
    "model",
    "layer",
    "site",
    "position",
    "condition",
    "setting",
    "comparison",
    "metric",
]
EFFECT_COLUMNS = [
    *KEYS,
    "family",
    "design",
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
    "ci_method",
    "statistic",
    "df",
    "p",
    "p_bonferroni",
    "p_fdr_bh",
    "n_family",
    "auroc",
]
# layer: empty for effects over all layers (directional ablation) or a model pair's grid;
# sd_*: empty for a single observation; ci/df/auroc: where the method has none.
OPTIONAL = {"layer", "sd_treatment", "sd_baseline", "ci_low", "ci_high", "df", "auroc"}
REQUIRED = [c for c in EFFECT_COLUMNS if c not in OPTIONAL]
DESIGNS = ("paired", "independent", "single_case", "auroc", "permutation")
COMPARISONS = {"baseline": "vs_baseline", "control": "vs_random_control"}


def family_name(phase: str, model: str, metric: str, dataset: str = "") -> str:
    """A family of tests corrected together: one phase x model x metric (per dataset)."""
    return "/".join(x for x in (phase, dataset, model, metric) if x)


def adjust_pvalues(table: pd.DataFrame) -> pd.DataFrame:
    """Fill ``p_bonferroni``, ``p_fdr_bh`` and ``n_family`` within each ``family``.

    A family counts max(its rows, its largest ``n_family``) hypotheses (``n_family`` may be
    absent or NaN); hypotheses without a row enter as p = 1, which can only raise the
    adjusted values of the rows present.
    """
    table = table.copy()
    declared = table["n_family"] if "n_family" in table else pd.Series(np.nan, table.index)
    table["p_bonferroni"] = np.nan
    table["p_fdr_bh"] = np.nan
    table["n_family"] = 0
    for _, idx in table.groupby("family", sort=True).groups.items():
        p = table.loc[idx, "p"].to_numpy(dtype=float)
        m = int(max(len(p), np.nanmax(declared.loc[idx].to_numpy(float), initial=0)))
        padded = np.r_[p, np.ones(m - len(p))]
        table.loc[idx, "p_bonferroni"] = multipletests(padded, method="bonferroni")[1][: len(p)]
        table.loc[idx, "p_fdr_bh"] = multipletests(padded, method="fdr_bh")[1][: len(p)]
        table.loc[idx, "n_family"] = m
    return table


def finalize(rows: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """Order, correct and check an effect-size table."""
    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in EFFECT_COLUMNS:
        if col not in table:
            table[col] = np.nan
    if "setting" in table:
        table["setting"] = table["setting"].fillna("")
    table = adjust_pvalues(table[EFFECT_COLUMNS])
    table["layer"] = table["layer"].astype("Int64")
    validate_effect_table(table)
    return table.sort_values(KEYS, kind="stable", na_position="first").reset_index(drop=True)


def validate_effect_table(table: pd.DataFrame) -> None:
    """Columns present and in order; no NaN where a value is required."""
    if list(table.columns) != EFFECT_COLUMNS:
        raise ValueError(f"effect table columns {list(table.columns)} != {EFFECT_COLUMNS}")
    for col in REQUIRED:
        if table[col].isna().any():
            first = table.index[table[col].isna()][0]
            raise ValueError(f"effect table: column {col!r} is empty in row {first}")
    bad = sorted(set(table["design"]) - set(DESIGNS))
    if bad:
        raise ValueError(f"effect table: design {bad[0]!r} is not one of {list(DESIGNS)}")
