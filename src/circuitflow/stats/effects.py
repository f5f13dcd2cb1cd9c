"""The generic designs: effect sizes, their tests and CIs, for two arms or one observation.

Paired (``ttest_rel``, Cohen's ``d_z``) and independent (Welch, Hedges' ``g``) comparisons get
a seeded BCa bootstrap CI; the rank design (``scipy.stats.mannwhitneyu``, AUROC with the Hanley
& McNeil CI) compares two independent arms without assuming normal values; a single
observation against ``n`` draws gets the Crawford-Howell t test (``z_cc``), one against its
permutation null the empirical p. Each returns the design columns of one effect-table row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy import stats as sps


def cohens_d(treatment: ArrayLike, baseline: ArrayLike, axis: int = -1) -> np.ndarray:
    """Cohen's d with the pooled standard deviation (vectorised along ``axis``)."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    n1, n2 = t.shape[axis], b.shape[axis]
    v1, v2 = t.var(axis=axis, ddof=1), b.var(axis=axis, ddof=1)
    pooled = np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    with np.errstate(divide="ignore", invalid="ignore"):  # constant resamples -> nan/inf
        return (t.mean(axis=axis) - b.mean(axis=axis)) / pooled


def hedges_correction(df: float) -> float:
    """Exact small-sample factor J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)) (Hedges 1981)."""
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def hedges_g(treatment: ArrayLike, baseline: ArrayLike, axis: int = -1) -> np.ndarray:
    """Hedges' g: Cohen's d times J(n1 + n2 - 2) (vectorised along ``axis``)."""
    n = np.shape(treatment)[axis] + np.shape(baseline)[axis]
    return cohens_d(treatment, baseline, axis=axis) * hedges_correction(n - 2)


def cohens_dz(diff: ArrayLike, axis: int = -1) -> np.ndarray:
    """Cohen's d_z of paired differences: mean / sd (ddof 1) (vectorised along ``axis``)."""
    x = np.asarray(diff, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x.mean(axis=axis) / x.std(axis=axis, ddof=1)


def _bca(
    data: tuple,
    statistic: Callable,
    seed: int,
    n_resamples: int,
    level: float,
    paired: bool = False,
) -> tuple[float, float]:
    """BCa bootstrap CI (scipy.stats.bootstrap, seeded); (nan, nan) when it is degenerate or
    a bound is infinite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning -> nan bounds
        ci = sps.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            confidence_level=level,
            method="BCa",
            vectorized=True,
            paired=paired,
            rng=np.random.default_rng(seed),
        ).confidence_interval
    low, high = float(ci.low), float(ci.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # e.g. a resample with zero spread
        return np.nan, np.nan
    return low, high


# Spread below this fraction of the values' magnitude is float rounding (e.g. a recovery of
# exactly 1 computed in float32), not variation: effect sizes would be ~1e6 and meaningless.
RELATIVE_PRECISION = 1e-5


def _no_spread(x: np.ndarray, scale: float) -> bool:
    return bool(np.std(x) <= RELATIVE_PRECISION * max(scale, np.finfo(float).tiny))


def _check(*arms: np.ndarray, minimum: int = 2) -> None:
    if any(len(a) < minimum for a in arms):
        raise ValueError(
            f"need at least {minimum} samples per arm, got "
            + " and ".join(str(len(a)) for a in arms)
        )
    if not all(np.isfinite(a).all() for a in arms):
        raise ValueError("NaN or inf in the compared values")


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2: the Mann-Whitney U over n_pos * n_neg, equal to
    sklearn's roc_auc_score (average ranks for ties) at a fraction of its per-call cost."""
    ranks = sps.rankdata(np.r_[positive, negative])
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compare_independent(
    treatment: Sequence[float],
    baseline: Sequence[float],
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> dict:
    """Welch's t test, Hedges' g with a BCa bootstrap CI, AUROC (treatment = positive)."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    _check(t, b)
    scale = max(np.abs(t).max(), np.abs(b).max())
    if _no_spread(t, scale) and _no_spread(b, scale):
        raise ValueError("no variation within either arm (up to float rounding): g is undefined")
    welch = sps.ttest_ind(t, b, equal_var=False)
    low, high = _bca((t, b), hedges_g, seed, n_resamples, confidence_level)
    return {
        "design": "independent",
        "test": "welch_t",
        "n_treatment": len(t),
        "n_baseline": len(b),
        "mean_treatment": t.mean(),
        "sd_treatment": t.std(ddof=1),
        "mean_baseline": b.mean(),
        "sd_baseline": b.std(ddof=1),
        "effect_size": "hedges_g",
        "estimate": float(hedges_g(t, b)),
        "ci_low": low,
        "ci_high": high,
        "ci_method": "bca_bootstrap",
        "statistic": float(welch.statistic),
        "df": float(welch.df),
        "p": float(welch.pvalue),
        "auroc": auroc(t, b),
    }


def compare_paired(
    treatment: Sequence[float],
    baseline: Sequence[float],
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> dict:
    """Paired t test (``ttest_rel``) and Cohen's d_z with a BCa bootstrap CI over pairs."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if len(t) != len(b):
        raise ValueError(f"paired arms differ in length: {len(t)} and {len(b)}")
    _check(t, b)
    diff = t - b
    if _no_spread(diff, max(np.abs(t).max(), np.abs(b).max())):
        raise ValueError(
            "every paired difference is the same (up to float rounding): d_z and the t test "
            "are undefined"
        )
    res = sps.ttest_rel(t, b)
    low, high = _bca((diff,), cohens_dz, seed, n_resamples, confidence_level)
    return {
        "design": "paired",
        "test": "ttest_rel",
        "n_treatment": len(t),
        "n_baseline": len(b),
        "mean_treatment": t.mean(),
        "sd_treatment": t.std(ddof=1),
        "mean_baseline": b.mean(),
        "sd_baseline": b.std(ddof=1),
        "effect_size": "cohens_dz",
        "estimate": float(cohens_dz(diff)),
        "ci_low": low,
        "ci_high": high,
        "ci_method": "bca_bootstrap",
        "statistic": float(res.statistic),
        "df": float(res.df),
        "p": float(res.pvalue),
        "auroc": np.nan,
    }


def compare_single_case(value: float, mean: float, sd: float, n: int) -> dict:
    """One observation against a sample of ``n`` draws summarised by mean and sd:
    Crawford & Howell (1998) t = (x - mean) / (sd sqrt((n + 1) / n)), df = n - 1, two-sided;
    effect z_cc = (x - mean) / sd."""
    if n < 2 or not (sd > 0) or not all(map(math.isfinite, (value, mean, sd))):
        raise ValueError(f"single-case test needs n >= 2 finite draws with sd > 0 (n={n}, sd={sd})")
    t = (value - mean) / (sd * math.sqrt((n + 1) / n))
    return {
        "design": "single_case",
        "test": "crawford_howell_t",
        "n_treatment": 1,
        "n_baseline": int(n),
        "mean_treatment": float(value),
        "sd_treatment": np.nan,
        "mean_baseline": float(mean),
        "sd_baseline": float(sd),
        "effect_size": "z_cc",
        "estimate": float((value - mean) / sd),
        "ci_low": np.nan,
        "ci_high": np.nan,
        "ci_method": "none",
        "statistic": float(t),
        "df": float(n - 1),
        "p": float(2 * sps.t.sf(abs(t), n - 1)),
        "auroc": np.nan,
    }


def compare_permutation(
    value: float, n_null: int, n_null_ge: int, null_mean: float, null_sd: float
) -> dict:
    """One observed statistic against ``n_null`` draws of its null (the same operation on
    permuted labels or shuffled pairings): the one-sided empirical p = (1 + #null >= observed)
    / (1 + n_null) (Phipson & Smyth 2010), effect z = (value - null mean) / null sd."""
    if n_null < 1 or not 0 <= n_null_ge <= n_null or not math.isfinite(value):
        raise ValueError(
            f"permutation test needs n_null >= 1 draws and 0 <= n_null_ge <= n_null "
            f"(n_null={n_null}, n_null_ge={n_null_ge})"
        )
    z = (value - null_mean) / null_sd if null_sd > 0 else np.nan
    return {
        "design": "permutation",
        "test": "permutation_empirical_p",
        "n_treatment": 1,
        "n_baseline": int(n_null),
        "mean_treatment": float(value),
        "sd_treatment": np.nan,
        "mean_baseline": float(null_mean),
        "sd_baseline": float(null_sd),
        "effect_size": "z_null",
        "estimate": float(z),
        "ci_low": np.nan,
        "ci_high": np.nan,
        "ci_method": "none",
        "statistic": float(value),
        "df": np.nan,
        "p": float((1 + n_null_ge) / (1 + n_null)),
        "auroc": np.nan,
    }


def hanley_mcneil_se(auroc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC (Hanley & McNeil 1982, exponential approximation)."""
    a = float(auroc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    v = a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)
    return math.sqrt(max(v, 0.0) / (n_pos * n_neg))


def compare_rank(
    treatment: Sequence[float], baseline: Sequence[float], confidence_level: float = 0.95
) -> dict:
    """Two independent arms by ranks: the two-sided Mann-Whitney U test
    (``scipy.stats.mannwhitneyu``) and AUROC = U / (n1 n2) (treatment = positive, ties count
    one half) with the Hanley & McNeil (1982) CI.

    The p value is scipy's ``method="auto"``: the exact null distribution of U when an arm has
    at most 8 values and no value is tied, else the normal approximation with the tie and
    continuity corrections; ``test`` names which (``mannwhitneyu_exact`` /
    ``mannwhitneyu_asymptotic``)."""
    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    _check(t, b, minimum=1)
    both = np.r_[t, b]
    if np.all(both == both[0]):
        raise ValueError("every value of both arms is the same: the rank test is undefined")
    n1, n2 = len(t), len(b)
    method = "exact" if min(n1, n2) <= 8 and len(np.unique(both)) == len(both) else "asymptotic"
    res = sps.mannwhitneyu(t, b, alternative="two-sided", method=method)
    a = float(res.statistic) / (n1 * n2)
    half = sps.norm.ppf(0.5 + confidence_level / 2) * hanley_mcneil_se(a, n1, n2)
    return {
        "design": "rank",
        "test": f"mannwhitneyu_{method}",
        "n_treatment": n1,
        "n_baseline": n2,
        "mean_treatment": t.mean(),
        "sd_treatment": t.std(ddof=1) if n1 > 1 else np.nan,
        "mean_baseline": b.mean(),
        "sd_baseline": b.std(ddof=1) if n2 > 1 else np.nan,
        "effect_size": "auroc",
        "estimate": a,
        "ci_low": max(0.0, a - half),
        "ci_high": min(1.0, a + half),
        "ci_method": "hanley_mcneil",
        "statistic": float(res.statistic),
        "df": np.nan,
        "p": float(res.pvalue),
        "auroc": a,
    }


# The effect size each design reports (also named by the rows of comparisons left untested).
EFFECT_SIZES = {
    "paired": "cohens_dz",
    "independent": "hedges_g",
    "rank": "auroc",
    "single_case": "z_cc",
    "permutation": "z_null",
}
