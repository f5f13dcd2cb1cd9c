"""The generic engine: long per-unit measurements in, effect rows out.

Every phase hands its per-unit values as :data:`MEASUREMENT_COLUMNS` (the ``measurements.csv``
layout, see :mod:`circuitflow.store`) plus the optional group-constant
:data:`MEASUREMENT_OPTIONAL` columns; :func:`effect_rows` compares the ``treatment`` arm of
each group with its ``baseline`` and ``control`` arms, paired on common units, else
independent, or by ranks (``design`` = ``rank``). It reads no phase's private columns. A
comparison that cannot be tested stays a row (p = 1, the reason in ``note``) so that it counts
in its family.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from circuitflow import store
from circuitflow.core.errors import CircuitflowError
from circuitflow.stats.corrections import COMPARISONS, family_name, join_notes, skipped_row
from circuitflow.stats.effects import (
    EFFECT_SIZES,
    compare_independent,
    compare_paired,
    compare_permutation,
    compare_rank,
    compare_single_case,
)

# Long per-unit measurements: the input of effect_rows and the measurements.csv layout.
MEASUREMENT_COLUMNS = store.MEASUREMENT_COLUMNS
MEASUREMENT_OPTIONAL = store.MEASUREMENT_OPTIONAL
ARMS = ("treatment", "baseline", "control")
_GROUP = [c for c in MEASUREMENT_COLUMNS if c not in ("arm", "unit", "value")]

# Per-comparison summaries: the input of summary_rows and the summaries.csv layout, for the
# designs without per-unit values (one observed value against a reference distribution).
SUMMARY_COLUMNS = [*store.SUMMARY_COLUMNS, *store.SUMMARY_OPTIONAL]


class StatsError(CircuitflowError, ValueError):
    """An input of the statistics phase is unusable; the message names it and the fix."""


def _label(key) -> str:
    return "/".join(str(v) for v in key if not pd.isna(v) and str(v) != "")


def _group_keys(m: pd.DataFrame) -> list[pd.Series]:
    keys = m[_GROUP].astype(object).where(m[_GROUP].notna(), None)
    return [keys[c] for c in _GROUP]


def validate_measurements(m: pd.DataFrame, source: str = "measurements") -> pd.DataFrame:
    """Check a measurements table (``setting``, ``layer`` and the optional columns may be
    absent); returns it with :data:`MEASUREMENT_COLUMNS` then :data:`MEASUREMENT_OPTIONAL`.

    ``unit_kind`` must be one of ``store.UNIT_KINDS`` and ``design`` one of
    ``store.MEASUREMENT_DESIGNS``; each optional column is constant within a group."""
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
    for col in MEASUREMENT_OPTIONAL:
        if col == "n_family_part":
            m[col] = pd.to_numeric(m[col], errors="coerce") if col in m else np.nan
        else:
            m[col] = m[col].astype(object).where(m[col].notna(), "").astype(str) if col in m else ""
    for col, allowed in (
        ("unit_kind", ("", *store.UNIT_KINDS)),
        ("design", store.MEASUREMENT_DESIGNS),
    ):
        bad = sorted(set(m[col]) - set(allowed))
        if bad:
            raise StatsError(
                f"{source}: {col} {bad[0]!r} is not one of {[a for a in allowed if a]}"
                + (" (or empty)" if "" in allowed else "")
            )
    if len(m):
        group = m.groupby(_group_keys(m), sort=True, dropna=False).ngroup()
        for col in MEASUREMENT_OPTIONAL:
            counts = m[col].groupby(group).nunique(dropna=False)
            if (counts > 1).any():
                rows = m[group == counts.index[counts > 1][0]]
                values = ", ".join(sorted(rows[col].astype(str).unique()))
                raise StatsError(
                    f"{source}: column {col!r} varies within the group "
                    f"{_label(rows.iloc[0][_GROUP])} ({values}); write one value per group, "
                    "or tell the groups apart in 'setting'"
                )
    return m[[*MEASUREMENT_COLUMNS, *MEASUREMENT_OPTIONAL]]


def _groups(m: pd.DataFrame) -> Iterator[tuple[tuple, pd.Series, dict[str, pd.Series]]]:
    """Per group (sorted by key): its key, its first row and the per-unit mean of each arm
    (index = unit, sorted). One groupby over the whole table, not one per group."""
    keys = _group_keys(m)
    gid = m.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    means = (
        pd.DataFrame({"g": gid, "arm": m["arm"].to_numpy(), "unit": m["unit"].to_numpy()})
        .assign(value=m["value"].to_numpy())
        .groupby(["g", "arm", "unit"], sort=True)["value"]
        .mean()
    )
    first_rows = np.unique(gid, return_index=True)[1]  # group g's first row, g = 0, 1, ...
    firsts = m.iloc[first_rows]
    g_of, arm_of = (means.index.get_level_values(i).to_numpy() for i in (0, 1))
    units, values = means.index.get_level_values(2), means.to_numpy()
    bounds = np.flatnonzero(np.r_[True, (g_of[1:] != g_of[:-1]) | (arm_of[1:] != arm_of[:-1])])
    bounds = np.r_[bounds, len(means)]
    arms: dict[int, dict[str, pd.Series]] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        arms.setdefault(int(g_of[lo]), {})[arm_of[lo]] = pd.Series(
            values[lo:hi], index=units[lo:hi], name="value"
        )
    key_rows = pd.DataFrame(dict(zip(_GROUP, keys, strict=True))).iloc[first_rows]
    rows = zip(firsts.iterrows(), key_rows.itertuples(index=False), strict=True)
    for g, ((_, first), key) in enumerate(rows):
        yield tuple(key), first, arms.get(g, {})


def compare_arms(
    treatment: pd.Series,
    other: pd.Series,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    design: str = "",
) -> dict:
    """Per-unit values (index = unit) of two arms: by ranks for ``design`` ``rank``, else
    paired on the common units when the arms share any, else independent."""
    if design == store.RANK_DESIGN:
        return compare_rank(treatment, other, confidence_level)
    common = treatment.index.intersection(other.index)
    if len(common):
        return compare_paired(treatment[common], other[common], seed, n_resamples, confidence_level)
    return compare_independent(treatment, other, seed, n_resamples, confidence_level)


def _declare_family_sizes(rows: list[dict], parts: dict) -> None:
    """n_family of each family with parts: the sum of n_family_part over its distinct parts."""
    totals: dict[str, int] = {}
    for (family, _), n in parts.items():
        totals[family] = totals.get(family, 0) + n
    for row in rows:
        if row["family"] in totals:
            row["n_family"] = totals[row["family"]]


def effect_rows(
    measurements: pd.DataFrame,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    min_n: int = 3,
    headline_n: int = 10,
) -> tuple[list[dict], list[str]]:
    """Effect rows of every group (all columns but arm, unit, value and the optional ones):
    treatment vs baseline and vs control, where those arms exist.

    A comparison that cannot be tested (fewer than ``min_n`` units, no variation) is a row too:
    p = 1, no estimate, the reason in ``note`` (it counts in n_family). ``unit_kind`` is named
    in ``test`` ("ttest_rel by frame"); the group's ``note`` is copied (joined with a skip
    reason); ``n_family_part`` of distinct ``family_part`` sum to the family's n_family. A
    tested comparison with fewer than ``headline_n`` units says so in ``note`` (not a headline).
    Returns (rows, skipped: one line per comparison left untested, for the log)."""
    rows, skipped, parts = [], [], {}
    m = measurements
    if not len(m):
        return rows, skipped
    for col in MEASUREMENT_OPTIONAL:
        if col not in m:
            m = m.assign(**{col: np.nan if col == "n_family_part" else ""})
    for key, first, arms in _groups(m):
        meta = dict(zip(_GROUP, key, strict=True))
        design, unit_kind = str(first["design"]), str(first["unit_kind"])
        note = join_notes(first["note"])
        if "treatment" not in arms:
            continue
        for arm, comparison in COMPARISONS.items():
            if arm not in arms:
                continue
            t, o = arms["treatment"], arms[arm]
            common = [] if design == store.RANK_DESIGN else t.index.intersection(o.index)
            n = len(common) if len(common) else min(len(t), len(o))
            family = family_name(
                meta["phase"], meta["model"], meta["metric"], meta["dataset"], comparison
            )
            base = {**meta, "comparison": comparison, "family": family, "note": note}
            if first["family_part"]:
                parts[family, first["family_part"]] = int(first["n_family_part"])
            reason = f"{n} units < min_n {min_n}" if n < min_n else ""
            if not reason:
                try:
                    result = compare_arms(t, o, seed, n_resamples, confidence_level, design)
                except ValueError as err:
                    reason = str(err)
            if reason:
                skipped.append(f"{_label(key)} {comparison}: {reason}")
                planned = design or ("paired" if len(common) else "independent")
                rows.append(
                    skipped_row(
                        base,
                        planned,
                        EFFECT_SIZES[planned],
                        reason,
                        n_treatment=len(common) or len(t),
                        n_baseline=len(common) or len(o),
                        mean_treatment=float(t.mean()),
                        mean_baseline=float(o.mean()),
                    )
                )
                continue
            if unit_kind:
                result["test"] = f"{result['test']} by {unit_kind}"
            if n < headline_n:
                base["note"] = join_notes(
                    note, f"{n} units < headline_n {headline_n}: not a headline"
                )
            rows.append({**base, **result})
    _declare_family_sizes(rows, parts)
    return rows, skipped


as_measurements = store.as_measurements


def _single_case(r, confidence_level: float) -> dict:
    return compare_single_case(
        float(r.value), float(r.reference_mean), float(r.reference_sd), int(r.n_reference)
    )


def _permutation(r, confidence_level: float) -> dict:
    return compare_permutation(
        float(r.value),
        int(r.n_reference),
        int(r.n_reference_ge),
        float(r.reference_mean),
        float(r.reference_sd),
    )


# design -> test of one summary row (the designs of EFFECT_COLUMNS without per-unit values)
SUMMARY_DESIGNS = {"single_case": _single_case, "permutation": _permutation}


def validate_summaries(s: pd.DataFrame, source: str = "summaries") -> pd.DataFrame:
    """Check a summaries table; returns it with every column of :data:`SUMMARY_COLUMNS`."""
    s = s.copy()
    for col in ("setting", "family_part", "note"):
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
    for col in ("setting", "family_part", "site", "position", "condition", "note"):
        s[col] = s[col].astype(object).where(s[col].notna(), "").astype(str)
    s["layer"] = s["layer"].astype("Int64")
    return s[SUMMARY_COLUMNS]


def _known(r) -> dict:
    """What a summary row tells of its arms, for the row of a comparison left untested."""

    def first(*values):
        return next((float(v) for v in values if pd.notna(v)), np.nan)

    return {
        "n_treatment": first(r.n_treatment, 1.0),
        "n_baseline": first(r.n_reference),
        "mean_treatment": first(r.mean_treatment, r.value),
        "mean_baseline": first(r.mean_baseline, r.reference_mean),
    }


def summary_rows(
    summaries: pd.DataFrame, confidence_level: float = 0.95
) -> tuple[list[dict], list[str]]:
    """Effect rows of every summary row by its design (single-case t, permutation p). A
    family's ``n_family`` is the sum of ``n_family_part`` over its distinct ``family_part``
    (e.g. the live features of each SAE when only the top ones are rows). A row whose test
    cannot run stays (p = 1, the reason in ``note``); a summary's ``note`` is copied.
    Returns (rows, skipped: one line per comparison left untested)."""
    rows, skipped, parts = [], [], {}
    for r in summaries.itertuples(index=False):
        meta = {c: getattr(r, c) for c in _GROUP}
        meta["layer"] = None if pd.isna(meta["layer"]) else int(meta["layer"])
        family = family_name(r.phase, r.model, r.metric, r.dataset, r.comparison)
        base = {**meta, "comparison": r.comparison, "family": family, "note": join_notes(r.note)}
        if r.family_part:
            parts[family, r.family_part] = int(r.n_family_part)
        try:
            result = SUMMARY_DESIGNS[r.design](r, confidence_level)
        except ValueError as err:
            skipped.append(f"{_label(meta.values())} {r.comparison}: {err}")
            rows.append(skipped_row(base, r.design, EFFECT_SIZES[r.design], str(err), **_known(r)))
            continue
        rows.append({**base, **result})
    _declare_family_sizes(rows, parts)
    return rows, skipped
