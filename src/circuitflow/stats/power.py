"""Post-hoc power and planned sample sizes of each family of the effect table.

Paired designs use statsmodels' ``TTestPower`` (n = pairs), independent ones
``TTestIndPower`` (n = per group); AUROCs (rank design) are converted to d (binormal);
single-case and permutation tests have no sample size to plan; comparisons left untested
(test ``none``) count in ``n_tests`` but not in the observed n and effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.power import TTestIndPower, TTestPower

from circuitflow.stats.corrections import SKIPPED_TEST

POWER_COLUMNS = [
    "family",
    "phase",
    "dataset",
    "model",
    "metric",
    "comparison",
    "design",
    "n_tests",
    "n_significant_fdr",
    "n_observed",
    "effect_observed",
    "effect_max",
    "power_observed",
    "power_observed_bonferroni",
    "n_for_d_0.2",
    "n_for_d_0.3",
    "n_for_d_0.5",
    "n_unit",
    "note",
]


def _normal_power(nc: float, df: float, alpha: float) -> float:
    """Two-sided power from the normal approximation of the noncentral t (used only where
    statsmodels' noncentral t returns NaN, i.e. at very large noncentrality, power ~1)."""
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc))


def power_paired(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided paired (one-sample) t test at effect d_z and n pairs."""
    power = TTestPower().power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided")
    if not np.isfinite(power):
        power = _normal_power(d * math.sqrt(n), n - 1, alpha)
    return float(power)


def power_independent(d: float, n1: int, n2: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t test at effect d with n1 and n2 per group."""
    power = TTestIndPower().power(
        effect_size=d, nobs1=n1, ratio=n2 / n1, alpha=alpha, alternative="two-sided"
    )
    if not np.isfinite(power):
        power = _normal_power(d * math.sqrt(n1 * n2 / (n1 + n2)), n1 + n2 - 2, alpha)
    return float(power)


def n_needed(d: float, design: str, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units needed for ``power`` at effect d: pairs (paired) or per group (independent)."""
    solver = TTestIndPower() if design in ("independent", "rank") else TTestPower()
    return float(
        solver.solve_power(effect_size=d, alpha=alpha, power=power, alternative="two-sided")
    )


def auroc_to_d(auroc: float) -> float:
    """Binormal equal-variance conversion: d = sqrt(2) Phi^-1(AUROC)."""
    return float(math.sqrt(2) * sps.norm.ppf(min(max(auroc, 1e-9), 1 - 1e-9)))


def power_table(
    table: pd.DataFrame,
    alpha: float = 0.05,
    power: float = 0.8,
    targets: Sequence[float] = (0.2, 0.3, 0.5),
) -> pd.DataFrame:
    """Per family: post-hoc power at the median observed n and median |effect| (at alpha and
    at the Bonferroni alpha / n_family), and the units needed for d = ``targets``.

    Paired and one-sample designs use ``TTestPower`` (n = pairs), independent ones
    ``TTestIndPower`` (n = per group, the observed ratio for post-hoc power); SAE AUROCs are
    converted to d (binormal); single-case and permutation tests (alignment) have no sample
    size to plan. Rows left untested (test ``none``) count only in ``n_tests``.
    """
    out = []
    for family, every in table.groupby("family", sort=True):
        first = every.iloc[0]
        rows = every[(every["test"] != SKIPPED_TEST) & every["estimate"].notna()]
        design = str((rows if len(rows) else every)["design"].iloc[0])
        row = {
            "family": family,
            "phase": first["phase"],
            "dataset": first["dataset"],
            "model": first["model"],
            "metric": first["metric"],
            "comparison": first["comparison"],
            "design": design,
            "n_tests": int(first["n_family"]),
            "n_significant_fdr": int((every["p_fdr_bh"] < alpha).sum()),
            "n_observed": float(rows["n_treatment"].median()) if len(rows) else np.nan,
            "note": "",
        }
        if not len(rows):
            row.update(n_unit="none", note="no comparison of the family could be tested")
            out.append(row)
            continue
        if design in ("single_case", "permutation"):
            row.update(
                effect_observed=float(rows["estimate"].abs().median()),
                effect_max=float(rows["estimate"].abs().max()),
                n_unit="none",
                note="single observation vs random/shuffled draws: no sample size to plan",
            )
            out.append(row)
            continue
        d = rows["estimate"].map(auroc_to_d) if design == "rank" else rows["estimate"]
        d = d.abs()
        n1 = int(rows["n_treatment"].median())
        n2 = int(rows["n_baseline"].median())
        eff = float(d.median())
        bonf = alpha / max(int(first["n_family"]), 1)
        if design == "paired":
            p_obs, p_bonf = power_paired(eff, n1, alpha), power_paired(eff, n1, bonf)
        else:
            p_obs, p_bonf = (
                power_independent(eff, n1, n2, alpha),
                power_independent(eff, n1, n2, bonf),
            )
        row.update(
            effect_observed=eff,
            effect_max=float(d.max()),
            power_observed=p_obs,
            power_observed_bonferroni=p_bonf,
            n_unit="pairs" if design == "paired" else "per group",
            note="effect as d (binormal from AUROC)" if design == "rank" else "",
        )
        for target in targets:
            row[f"n_for_d_{target:g}"] = math.ceil(n_needed(target, design, alpha, power))
        out.append(row)
    frame = pd.DataFrame(out)
    for col in POWER_COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    extra = [c for c in frame.columns if c not in POWER_COLUMNS]
    return frame[POWER_COLUMNS + extra]
