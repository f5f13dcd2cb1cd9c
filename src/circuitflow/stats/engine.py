"""The generic engine: long per-unit measurements in, effect rows out.

Every phase hands its per-unit values as :data:`MEASUREMENT_COLUMNS` (the ``measurements.csv``
layout, see :mod:`circuitflow.store`); :func:`effect_rows` compares the ``treatment`` arm of
each group with its ``baseline`` and ``control`` arms, paired on common units, else
independent. It reads no phase's private columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow import store
from circuitflow.core.errors import CircuitflowError
from circuitflow.stats.corrections import COMPARISONS, family_name
from circuitflow.stats.effects import (
    auroc_test,
    compare_independent,
    compare_paired,
    compare_permutation,
    compare_single_case,
)

# Long per-unit measurements: the input of effect_rows and the measurements.csv layout.
MEASUREMENT_COLUMNS = store.MEASUREMENT_COLUMNS
ARMS = ("treatment", "baseline", "control")
_GROUP = [c for c in MEASUREMENT_COLUMNS if c not in ("arm", "unit", "value")]

# Per-comparison summaries: the input of summary_rows and the summaries.csv layout, for the
# designs without per-unit values (one observed value against a reference distribution).
SUMMARY_COLUMNS = [
    *_GROUP,
    "comparison",
    "design",
    "value",
    "reference_mean",
    "reference_sd",
    "n_treatment",
    "n_reference",
    "n_reference_ge",
    "mean_treatment",
    "mean_baseline",
    "family_part",
    "n_family_part",
]


class StatsError(CircuitflowError, ValueError):
    """An input of the statistics phase is unusable; the message names it and the fix."""


def validate_measurements(m: pd.DataFrame, source: str = "measurements") -> pd.DataFrame:
    """Check a measurements table (``setting`` and ``layer`` may be absent); returns it with
    every column of :data:`MEASUREMENT_COLUMNS` in order."""
    m = m.copy()
    if "setting" not in m:
        m["setting"] = ""
    if "layer" not in m:
        m["layer"] = pd.NA
    missing = [c for c in MEASUREMENT_COLUMNS if c not in m]
    if missing:
        raise StatsError(f"{source}: missing columns {missing}; see circuitflow.store docstring")
    bad = sorted(set(m["arm"]) - set(ARMS))
    if bad:
        raise StatsError(f"{source}: arm {bad[0]!r} is not one of {list(ARMS)}")
    if not np.isfinite(pd.to_numeric(m["value"], errors="coerce")).all():
        raise StatsError(f"{source}: column 'value' has empty, NaN or non-numeric entries")
    m["setting"] = m["setting"].fillna("")
    for col in ("site", "position", "condition"):
        m[col] = m[col].fillna("").astype(str)
    m["layer"] = m["layer"].astype("Int64")
    m["unit"] = m["unit"].astype(str)
    m["value"] = m["value"].astype(float)
    return m[MEASUREMENT_COLUMNS]


def _per_unit(part: pd.DataFrame) -> pd.Series:
    return part.groupby("unit", sort=True)["value"].mean()


def compare_arms(
    treatment: pd.Series,
    other: pd.Series,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> dict:
    """Per-unit values (index = unit) of two arms: paired on the common units when the arms
    share any, else independent."""
    common = treatment.index.intersection(other.index)
    if len(common):
        return compare_paired(treatment[common], other[common], seed, n_resamples, confidence_level)
    return compare_independent(treatment, other, seed, n_resamples, confidence_level)


def effect_rows(
    measurements: pd.DataFrame,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    min_n: int = 3,
) -> tuple[list[dict], list[str]]:
    """Effect rows of every group (all columns but arm, unit, value): treatment vs baseline
    and vs control, where those arms exist. Returns (rows, skipped: one line per comparison
    left out, e.g. fewer than ``min_n`` units or no variation)."""
    rows, skipped = [], []
    m = measurements
    if not len(m):
        return rows, skipped
    keys = m[_GROUP].astype(object).where(m[_GROUP].notna(), None)
    for key, part in m.groupby([keys[c] for c in _GROUP], sort=True, dropna=False):
        meta = dict(zip(_GROUP, key, strict=True))
        arms = {arm: _per_unit(g) for arm, g in part.groupby("arm")}
        if "treatment" not in arms:
            continue
        for arm, comparison in COMPARISONS.items():
            if arm not in arms:
                continue
            t, o = arms["treatment"], arms[arm]
            common = t.index.intersection(o.index)
            n = len(common) if len(common) else min(len(t), len(o))
            label = "/".join(str(v) for v in key if v not in (None, "")) + f" {comparison}"
            if n < min_n:
                skipped.append(f"{label}: {n} units < {min_n}")
                continue
            try:
                result = compare_arms(t, o, seed, n_resamples, confidence_level)
            except ValueError as err:
                skipped.append(f"{label}: {err}")
                continue
            rows.append(
                {
                    **meta,
                    "comparison": comparison,
                    "family": family_name(
                        meta["phase"], meta["model"], meta["metric"], meta["dataset"]
                    ),
                    **result,
                }
            )
    return rows, skipped


as_measurements = store.as_measurements


def _single_case(r, confidence_level: float) -> dict:
    return compare_single_case(
        float(r.value), float(r.reference_mean), float(r.reference_sd), int(r.n_reference)
    )


def _auroc(r, confidence_level: float) -> dict:
    result = auroc_test(float(r.value), int(r.n_treatment), int(r.n_reference), confidence_level)
    return {
        "mean_treatment": r.mean_treatment,
        "sd_treatment": np.nan,
        "mean_baseline": r.mean_baseline,
        "sd_baseline": np.nan,
        **result,
    }


def _permutation(r, confidence_level: float) -> dict:
    return compare_permutation(
        float(r.value),
        int(r.n_reference),
        int(r.n_reference_ge),
        float(r.reference_mean),
        float(r.reference_sd),
    )


# design -> test of one summary row (the designs of EFFECT_COLUMNS without per-unit values)
SUMMARY_DESIGNS = {"single_case": _single_case, "auroc": _auroc, "permutation": _permutation}


def validate_summaries(s: pd.DataFrame, source: str = "summaries") -> pd.DataFrame:
    """Check a summaries table; returns it with every column of :data:`SUMMARY_COLUMNS`."""
    s = s.copy()
    for col in ("setting", "family_part"):
        if col not in s:
            s[col] = ""
    optional = (
        "layer",
        "reference_mean",
        "reference_sd",
        "n_treatment",
        "n_reference",
        "n_reference_ge",
    )
    for col in (*optional, "mean_treatment", "mean_baseline", "n_family_part"):
        if col not in s:
            s[col] = np.nan
    missing = [c for c in SUMMARY_COLUMNS if c not in s]
    if missing:
        raise StatsError(f"{source}: missing columns {missing}; see circuitflow.store docstring")
    bad = sorted(set(s["design"]) - set(SUMMARY_DESIGNS))
    if bad:
        raise StatsError(f"{source}: design {bad[0]!r} is not one of {list(SUMMARY_DESIGNS)}")
    for col in ("setting", "family_part", "site", "position", "condition"):
        s[col] = s[col].fillna("").astype(str)
    s["layer"] = s["layer"].astype("Int64")
    return s[SUMMARY_COLUMNS]


def summary_rows(
    summaries: pd.DataFrame, confidence_level: float = 0.95
) -> tuple[list[dict], list[str]]:
    """Effect rows of every summary row by its design (single-case t, AUROC z). A family's
    ``n_family`` is the sum of ``n_family_part`` over its distinct ``family_part`` (e.g. the
    live features of each SAE when only the top ones are rows). Returns (rows, skipped)."""
    rows, skipped, parts = [], [], {}
    for r in summaries.itertuples(index=False):
        meta = {c: getattr(r, c) for c in _GROUP}
        meta["layer"] = None if pd.isna(meta["layer"]) else int(meta["layer"])
        family = family_name(r.phase, r.model, r.metric, r.dataset)
        try:
            result = SUMMARY_DESIGNS[r.design](r, confidence_level)
        except ValueError as err:
            label = "/".join(str(v) for v in meta.values() if v not in (None, ""))
            skipped.append(f"{label} {r.comparison}: {err}")
            continue
        if r.family_part:
            parts[family, r.family_part] = int(r.n_family_part)
        rows.append({**meta, "comparison": r.comparison, "family": family, **result})
    totals: dict[str, int] = {}
    for (family, _), n in parts.items():
        totals[family] = totals.get(family, 0) + n
    for row in rows:
        if row["family"] in totals:
            row["n_family"] = totals[row["family"]]
    return rows, skipped
