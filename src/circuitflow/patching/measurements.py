"""Patching results as per-unit measurements (``measurements.csv``) for the statistics phase.

Residual recovery and head patching / ablation effects per counterfactual frame (the pairs
of one frame share its sentence: unit = frame id, ``unit_kind`` frame; the statistics phase
averages a unit's values), and directional ablation per test sample (``unit_kind`` sample),
each against its unpatched run (arm ``baseline``) and, where the phase has one, its control
(arm ``control``: variance-matched random directions for directional ablation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.store import MEASUREMENT_COLUMNS
from circuitflow.store import as_measurements as _as_measurements

UNIT_KIND = "unit_kind"  # optional group-constant column: what one independent unit is


def as_measurements(frame: pd.DataFrame, unit_kind: str, **const) -> pd.DataFrame:
    """:func:`circuitflow.store.as_measurements` plus the ``unit_kind`` column."""
    return _as_measurements(frame, **const).assign(**{UNIT_KIND: unit_kind})


RECOVERY_REFERENCE = {"clean_to_corrupted": 0.0, "corrupted_to_clean": 1.0}


def residual_measurements(residual: pd.DataFrame) -> pd.DataFrame:
    """residual.csv -> measurements: normalised recovery per frame (unit = frame id) at each
    layer x position, treatment = patched, baseline = the unpatched run (recovery 0 for
    clean_to_corrupted, 1 for corrupted_to_clean, by definition), so the paired test is the
    one-sample t test of recovery against that value. Rows flagged ``small_denominator`` are
    left out; a position patched at several tokens of a pair (``suffix_mid``,
    ``phrase_mid``) is averaged within the unit."""
    rec = pd.to_numeric(residual["recovery"], errors="coerce")  # an empty CSV reads as text
    ok = residual[~residual["small_denominator"].astype(bool) & np.isfinite(rec)]
    t = ok.assign(
        metric="recovery_" + ok["direction"],
        unit=ok["frame_id"],
        value=ok["recovery"],
        site=ok["hook"].str.split(".", n=2).str[2],
    )
    b = t.assign(value=t["direction"].map(RECOVERY_REFERENCE))
    return pd.concat(
        [
            as_measurements(t.assign(arm="treatment"), "frame", phase="patching"),
            as_measurements(b.assign(arm="baseline"), "frame", phase="patching"),
        ],
        ignore_index=True,
    )


HEAD_METRICS = {
    "recovery": ("head_patch_recovery", "suffix"),
    "zero_effect": ("head_zero_ablation_effect", "all"),
    "mean_effect": ("head_mean_ablation_effect", "all"),
}


def head_measurements(heads: pd.DataFrame) -> pd.DataFrame:
    """heads.csv -> measurements per head (setting ``head=H``) and frame (unit), per
    condition and pooled (condition ``all``: the frame's pairs are averaged within the
    unit): patch recovery (clean -> corrupted at the suffix) and the zero / mean ablation
    effect (fraction of the clean-vs-corrupted lean removed), each against 0 (the unpatched /
    unablated run). ``small_denominator`` rows are left out."""
    ok = heads[~heads["small_denominator"].astype(bool)]
    frames = []
    for column, (metric, position) in HEAD_METRICS.items():
        part = ok[np.isfinite(pd.to_numeric(ok[column], errors="coerce"))]
        for cond_frame in (part, part.assign(condition="all")):
            t = cond_frame.assign(
                metric=metric,
                position=position,
                site=cond_frame["hook"].str.split(".", n=2).str[2],
                setting="head=" + cond_frame["head"].astype(int).astype(str),
                unit=cond_frame["frame_id"],
                value=cond_frame[column],
            )
            frames.append(as_measurements(t.assign(arm="treatment"), "frame", phase="patching"))
            frames.append(
                as_measurements(t.assign(arm="baseline", value=0.0), "frame", phase="patching")
            )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[*MEASUREMENT_COLUMNS, UNIT_KIND])
    )


# metric -> (value column, baseline column, condition samples only)
ABLATION_METRICS = {
    "ablation_probe_p_true": ("probe_p_true", "probe_p_true_base", False),
    "ablation_probe_p_true_refit": ("probe_p_true_refit", "probe_p_true_refit_base", False),
    "ablation_lean": ("lean", "lean_base", True),
}
# treatment -> {control ablation: setting suffix}; "" is the tested control (arm control)
ABLATION_CONTROL_GROUPS = {
    "direction": {
        "matched_direction": "",
        "shuffled_mean_diff": " control=shuffled_mean_diff",
        "random_direction": " control=isotropic",
    },
    "subspace": {"matched_subspace": "", "random_subspace": " control=isotropic"},
}


def directional_ablation_measurements(
    ablation: pd.DataFrame, site: str = "hook_resid_pre"
) -> pd.DataFrame:
    """directional_ablation.csv -> measurements per test sample (unit, ``unit_kind``
    sample); position = the ablated position set.

    Setting ``ablation=<direction|subspace> k=K``: treatment = ablating the emotion direction
    / subspace at every chosen layer, baseline = unablated, control = ablating random
    directions / bases matched in the variance they carry (seeds averaged per sample by the
    statistics phase). Settings ``... control=shuffled_mean_diff`` (the direction against the
    mean difference of shuffled labels) and ``... control=isotropic`` (against uniform random
    directions / subspaces of R^d) hold only treatment and control rows. Metrics:
    ``ablation_probe_p_true`` (the fixed final-layer probe's probability of the sample's true
    class, condition and baseline samples), ``ablation_probe_p_true_refit`` (the same for the
    probe refit on train features ablated the same way; baseline: refit on unablated train
    features) and ``ablation_lean`` (next-token emotional lean, condition samples only). Rows
    without a value (no refit) are left out."""
    a = ablation.copy()
    is_c = a["is_condition"].astype(bool)
    for col in ("probe_p", "probe_p_base", "probe_p_refit", "probe_p_refit_base"):
        values = a[col] if col in a else pd.Series(np.nan, index=a.index)
        a[col.replace("probe_p", "probe_p_true")] = np.where(is_c, values, 1 - values)
    frames = []
    for kind, controls in ABLATION_CONTROL_GROUPS.items():
        treat = a[a["ablation"] == kind]
        for control, suffix in controls.items():
            ctrl = a[a["ablation"] == control]
            if suffix and not len(ctrl):
                continue
            arms = [("treatment", treat, 0), ("control", ctrl, 0)]
            if not suffix:
                arms.insert(1, ("baseline", treat, 1))
            for metric, (value_col, base_col, condition_only) in ABLATION_METRICS.items():
                for arm, part, use_base in arms:
                    col = base_col if use_base else value_col
                    if condition_only:
                        part = part[part["is_condition"].astype(bool)]
                    part = part[np.isfinite(part[col].astype(float))]
                    if not len(part):
                        continue
                    k = part["k"].astype(int).astype(str)
                    frames.append(
                        as_measurements(
                            part.assign(
                                arm=arm,
                                metric=metric,
                                position=part["positions"],
                                setting=f"ablation={kind} k=" + k + suffix,
                                unit=part["sample_id"],
                                value=part[col].astype(float),
                            ),
                            "sample",
                            phase="patching",
                            site=site,
                            layer=pd.NA,
                        )
                    )
    if not frames:
        return pd.DataFrame(columns=[*MEASUREMENT_COLUMNS, UNIT_KIND])
    return pd.concat(frames, ignore_index=True)


ATTRIBUTION_NODES = {"resid": "atp_", "mlp": "atp_mlp_"}  # node -> metric prefix


def attribution_measurements(table: pd.DataFrame, frames) -> pd.DataFrame:
    """attribution.csv.gz -> measurements of the AtP estimates on ``frames`` (the exact
    patching frames, not the screen's), unit = frame as for exact patching: residual and MLP
    sites (``atp_recovery_<direction>``, ``atp_mlp_recovery_<direction>``) and each head's
    patch (``atp_head_patch_recovery``, per condition), each against the unpatched run."""
    t = table[table["frame_id"].isin(set(frames))]
    parts = []
    for node, prefix in ATTRIBUTION_NODES.items():
        part = t[(t["node"] == node) & t["patch"].isin(list(RECOVERY_REFERENCE))]
        m = residual_measurements(part.rename(columns={"patch": "direction"}))
        parts.append(m.assign(metric=prefix + m["metric"]))
    heads = t[t["patch"] == "head_patch"].assign(zero_effect=np.nan, mean_effect=np.nan)
    m = head_measurements(heads)
    m = m[m["condition"] != "all"]
    parts.append(m.assign(metric="atp_" + m["metric"]))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=[*MEASUREMENT_COLUMNS, UNIT_KIND])
    return pd.concat(parts, ignore_index=True)


def text_measurements(
    residual: pd.DataFrame, heads: pd.DataFrame, ablation: pd.DataFrame
) -> pd.DataFrame:
    """The three tables of one text patching run as one ``measurements.csv`` frame."""
    parts = [residual_measurements(residual), head_measurements(heads)]
    parts.append(directional_ablation_measurements(ablation))
    return pd.concat([p for p in parts if len(p)], ignore_index=True)
