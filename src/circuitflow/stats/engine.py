"""The generic engine: long per-unit measurements in, effect rows out.

Every phase hands its per-unit values as :data:`MEASUREMENT_COLUMNS` (the ``measurements.csv``
layout, see :mod:`circuitflow.store`); :func:`effect_rows` compares the ``treatment`` arm of
each group with its ``baseline`` and ``control`` arms, paired on common units, else
independent. It reads no phase's private columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.core.errors import CircuitflowError
from circuitflow.stats.corrections import COMPARISONS, family_name
from circuitflow.stats.effects import compare_independent, compare_paired

# Long per-unit measurements: the input of effect_rows and the measurements.csv layout.
MEASUREMENT_COLUMNS = [
    "phase",
    "dataset",
    "model",
    "layer",
    "site",
    "position",
    "condition",
    "setting",
    "metric",
    "arm",
    "unit",
    "value",
]
ARMS = ("treatment", "baseline", "control")
_GROUP = [c for c in MEASUREMENT_COLUMNS if c not in ("arm", "unit", "value")]


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


def as_measurements(frame: pd.DataFrame, **const) -> pd.DataFrame:
    """``frame`` with the columns ``const`` set and every missing measurement column empty,
    in :data:`MEASUREMENT_COLUMNS` order (``frame`` is modified in place)."""
    for key, value in const.items():
        frame[key] = value
    for col in MEASUREMENT_COLUMNS:
        if col not in frame:
            frame[col] = "" if col not in ("layer", "value") else np.nan
    return frame[MEASUREMENT_COLUMNS]
