"""Patching results as per-unit measurements (``measurements.csv``) for the statistics phase.

Residual recovery per pair, head patching and ablation effects per pair, and directional
ablation per sample, each against its unpatched run (arm ``baseline``) and, where the phase
has one, its random control (arm ``control``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.store import as_measurements

RECOVERY_REFERENCE = {"clean_to_corrupted": 0.0, "corrupted_to_clean": 1.0}


def residual_measurements(residual: pd.DataFrame) -> pd.DataFrame:
    """residual.csv -> measurements: normalised recovery per pair (unit = clean
    sample) at each layer x position, treatment = patched, baseline = the unpatched run
    (recovery 0 for clean_to_corrupted, 1 for corrupted_to_clean, by definition), so the
    paired test is the one-sample t test of recovery against that value. Rows flagged
    ``small_denominator`` are left out; a position patched at several tokens of a pair
    (``suffix_mid``, ``phrase_mid``) is averaged within the pair."""
    ok = residual[~residual["small_denominator"].astype(bool) & np.isfinite(residual["recovery"])]
    t = ok.assign(
        metric="recovery_" + ok["direction"],
        unit=ok["clean_id"],
        value=ok["recovery"],
        site=ok["hook"].str.split(".", n=2).str[2],
    )
    b = t.assign(value=t["direction"].map(RECOVERY_REFERENCE))
    return pd.concat(
        [
            as_measurements(t.assign(arm="treatment"), phase="patching"),
            as_measurements(b.assign(arm="baseline"), phase="patching"),
        ],
        ignore_index=True,
    )


HEAD_METRICS = {
    "recovery": ("head_patch_recovery", "suffix"),
    "zero_effect": ("head_zero_ablation_effect", "all"),
    "mean_effect": ("head_mean_ablation_effect", "all"),
}


def head_measurements(heads: pd.DataFrame) -> pd.DataFrame:
    """heads.csv -> measurements per head (setting ``head=H``), per condition and
    pooled (condition ``all``): patch recovery (clean -> corrupted at the suffix) and the
    zero / mean ablation effect (fraction of the clean-vs-corrupted lean removed), each
    against 0 (the unpatched / unablated run). ``small_denominator`` rows are left out."""
    ok = heads[~heads["small_denominator"].astype(bool)]
    frames = []
    for column, (metric, position) in HEAD_METRICS.items():
        part = ok[np.isfinite(ok[column])]
        for cond_frame in (part, part.assign(condition="all")):
            t = cond_frame.assign(
                metric=metric,
                position=position,
                site=cond_frame["hook"].str.split(".", n=2).str[2],
                setting="head=" + cond_frame["head"].astype(int).astype(str),
                unit=cond_frame["clean_id"],
                value=cond_frame[column],
            )
            frames.append(as_measurements(t.assign(arm="treatment"), phase="patching"))
            frames.append(as_measurements(t.assign(arm="baseline", value=0.0), phase="patching"))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else as_measurements(pd.DataFrame(), phase="patching")
    )


def directional_ablation_measurements(
    ablation: pd.DataFrame, site: str = "hook_resid_pre"
) -> pd.DataFrame:
    """directional_ablation.csv -> measurements per sample (unit): treatment =
    ablating the emotion direction / subspace at every chosen layer, baseline = unablated,
    control = ablating random directions / subspaces of the same dimension (seeds averaged
    per sample); position = the ablated position set. Metrics: ``ablation_probe_p_true``
    (final-layer probe probability of the sample's true class, all samples of the condition
    and the baseline label) and ``ablation_lean`` (next-token emotional lean, condition
    samples only)."""
    a = ablation.copy()
    a["probe_p_true"] = np.where(a["is_condition"].astype(bool), a["probe_p"], 1 - a["probe_p"])
    a["probe_p_true_base"] = np.where(
        a["is_condition"].astype(bool), a["probe_p_base"], 1 - a["probe_p_base"]
    )
    frames = []
    ablated = a[a["ablation"] != "none"]
    for kind in ("direction", "subspace"):
        treat = ablated[ablated["ablation"] == kind]
        ctrl = ablated[ablated["ablation"] == f"random_{kind}"]
        for metric, value_col, base_col, rows_of in (
            ("ablation_probe_p_true", "probe_p_true", "probe_p_true_base", False),
            ("ablation_lean", "lean", "lean_base", True),
        ):
            for arm, part, col in (
                ("treatment", treat, value_col),
                ("baseline", treat, base_col),
                ("control", ctrl, value_col),
            ):
                if rows_of:
                    part = part[part["is_condition"].astype(bool)]
                k = part["k"].astype(int)
                frames.append(
                    as_measurements(
                        part.assign(
                            arm=arm,
                            metric=metric,
                            position=part["positions"],
                            setting=f"ablation={kind} k=" + k.astype(str),
                            unit=part["sample_id"],
                            value=part[col].astype(float),
                        ),
                        phase="patching",
                        site=site,
                        layer=pd.NA,
                    )
                )
    return pd.concat(frames, ignore_index=True)


def text_measurements(
    residual: pd.DataFrame, heads: pd.DataFrame, ablation: pd.DataFrame
) -> pd.DataFrame:
    """The three tables of one text patching run as one ``measurements.csv`` frame."""
    parts = [residual_measurements(residual), head_measurements(heads)]
    parts.append(directional_ablation_measurements(ablation))
    return pd.concat([p for p in parts if len(p)], ignore_index=True)
