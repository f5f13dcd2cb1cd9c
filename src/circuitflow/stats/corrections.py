"""The effect table's layout (:data:`EFFECT_COLUMNS`), its families and their corrections.

P values are corrected within a ``family`` (one phase x dataset x model x metric x
comparison) by Bonferroni and Benjamini-Hochberg (statsmodels); a family may declare more
hypotheses than it has rows (``n_family``) and the missing ones then count as p = 1
(conservative). A comparison that could not be tested (too few units, no variation) stays a
row with ``test`` :data:`SKIPPED_TEST`, p = 1, no estimate and the reason in ``note``: it
counts in its family.
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
    "note",
]
# layer: empty for effects over all layers (directional ablation) or a model pair's grid;
# sd_*: empty for a single observation; ci/df/auroc: where the method has none; estimate and
# statistic: where the test could not be run (or a null without spread); note: empty string
# when there is nothing to flag.
OPTIONAL = {
    "layer",
    "sd_treatment",
    "sd_baseline",
    "estimate",
    "ci_low",
    "ci_high",
    "statistic",
    "df",
    "auroc",
    "note",
}
REQUIRED = [c for c in EFFECT_COLUMNS if c not in OPTIONAL]
DESIGNS = ("paired", "independent", "rank", "single_case", "permutation")
COMPARISONS = {"baseline": "vs_baseline", "control": "vs_random_control"}
# The test of a comparison left untested: p = 1, the reason in note; its arms' sizes and means
# may be empty (a summary without them).
SKIPPED_TEST = "none"
_SKIPPED_MAY_LACK = {"n_treatment", "n_baseline", "mean_treatment", "mean_baseline"}


def family_name(
    phase: str, model: str, metric: str, dataset: str = "", comparison: str = ""
) -> str:
    """A family of tests corrected together: one phase x dataset x model x metric x
    comparison (empty parts are left out)."""
    return "/".join(x for x in (phase, dataset, model, metric, comparison) if x)


def join_notes(*notes) -> str:
    """Non-empty notes (None and NaN count as empty) joined with '; ', each once."""
    out = []
    for note in notes:
        text = "" if note is None or (isinstance(note, float) and np.isnan(note)) else str(note)
        if text and text not in out:
            out.append(text)
    return "; ".join(out)


def skipped_row(meta: dict, design: str, effect_size: str, reason: str, **known) -> dict:
    """The effect row of a comparison that could not be tested: p = 1 (it counts in its
    family and can only make the correction stricter), no estimate, ``reason`` in note;
    ``known``: what is known of its arms (n_treatment, mean_baseline, ...)."""
    return {
        **meta,
        "design": design,
        "test": SKIPPED_TEST,
        "effect_size": effect_size,
        "estimate": np.nan,
        "ci_method": "none",
        "statistic": np.nan,
        "p": 1.0,
        **known,
        "note": join_notes(reason, meta.get("note")),
    }


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
    for col in ("setting", "note"):
        table[col] = table[col].astype(object).where(table[col].notna(), "").astype(str)
    table = adjust_pvalues(table[EFFECT_COLUMNS])
    table["layer"] = table["layer"].astype("Int64")
    validate_effect_table(table)
    return table.sort_values(KEYS, kind="stable", na_position="first").reset_index(drop=True)


def validate_effect_table(table: pd.DataFrame) -> None:
    """Columns present and in order; no NaN where a value is required (a skipped row, test
    :data:`SKIPPED_TEST`, may lack its arms' sizes and means, and needs p = 1 and a note)."""
    if list(table.columns) != EFFECT_COLUMNS:
        raise ValueError(f"effect table columns {list(table.columns)} != {EFFECT_COLUMNS}")
    skipped = (table["test"] == SKIPPED_TEST).to_numpy()
    for col in REQUIRED:
        empty = table[col].isna().to_numpy(copy=True)
        if col in _SKIPPED_MAY_LACK:
            empty &= ~skipped
        if empty.any():
            first = table.index[empty][0]
            raise ValueError(f"effect table: column {col!r} is empty in row {first}")
    note = table["note"].astype(object).where(table["note"].notna(), "").astype(str).to_numpy()
    bad = skipped & ((note == "") | (table["p"].to_numpy(dtype=float) != 1))
    if bad.any():
        raise ValueError(
            f"effect table: row {table.index[bad][0]} has test {SKIPPED_TEST!r} but no note "
            "or p != 1; a skipped comparison gives its reason and p = 1"
        )
    bad = sorted(set(table["design"]) - set(DESIGNS))
    if bad:
        raise ValueError(f"effect table: design {bad[0]!r} is not one of {list(DESIGNS)}")
