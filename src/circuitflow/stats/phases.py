"""Effect sizes, tests, bootstrap CIs, multiple-comparison corrections and power analysis.

Every phase's artifact becomes rows of one tidy table (:data:`EFFECT_COLUMNS`). Phases with
per-sample data go through one path: an *adapter* turns the artifact into long
*measurements* (:data:`MEASUREMENT_COLUMNS`: one value per unit and arm, the layout of
``measurements.csv``, see :mod:`circuitflow.store`), and :func:`effect_rows` compares the
``treatment`` arm with the ``baseline`` arm (comparison ``vs_baseline``) and with the
``control`` arm (``vs_random_control``) of each group:

- units present in both arms -> **paired** design: ``scipy.stats.ttest_rel`` and Cohen's
  ``d_z`` = mean(diff) / sd(diff) (several values of one unit in an arm are averaged first,
  e.g. random-control seeds of one prompt);
- no unit in common -> **independent** design: Welch's ``scipy.stats.ttest_ind`` and Hedges'
  ``g`` (Cohen's d with the pooled SD times the exact small-sample correction ``J``).

Both get a BCa bootstrap CI of the effect (``scipy.stats.bootstrap``, seeded). Phases without
per-sample values have their own adapters: alignment overlaps (one observed value against
``n`` random or shuffled draws: the Crawford & Howell 1998 single-case t test, effect
``z_cc``) and SAE features (AUROC against 0.5: the normal approximation of the Mann-Whitney
U test, Hanley & McNeil 1982 CI). P values are corrected within a ``family`` (one phase x
dataset x model x metric) by Bonferroni and Benjamini-Hochberg (statsmodels); a family may
declare more hypotheses than it has rows (``n_family``, e.g. every SAE feature when only the
top ones are kept) and the correction then counts the missing ones as p = 1 (conservative).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

# ---------------------------------------------------------------- table layout
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
DESIGNS = ("paired", "independent", "single_case", "auroc")
COMPARISONS = {"baseline": "vs_baseline", "control": "vs_random_control"}

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


class StatsError(ValueError):
    """An input of the statistics phase is unusable; the message names it and the fix."""


# ---------------------------------------------------------------- effect sizes
def cohens_d(treatment, baseline, axis: int = -1):
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


def hedges_g(treatment, baseline, axis: int = -1):
    """Hedges' g: Cohen's d times J(n1 + n2 - 2) (vectorised along ``axis``)."""
    n = np.shape(treatment)[axis] + np.shape(baseline)[axis]
    return cohens_d(treatment, baseline, axis=axis) * hedges_correction(n - 2)


def cohens_dz(diff, axis: int = -1):
    """Cohen's d_z of paired differences: mean / sd (ddof 1) (vectorised along ``axis``)."""
    x = np.asarray(diff, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x.mean(axis=axis) / x.std(axis=axis, ddof=1)


def _bca(data: tuple, statistic, seed: int, n_resamples: int, level: float, paired=False):
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


def _check(*arms, minimum: int = 2):
    if any(len(a) < minimum for a in arms):
        raise ValueError(
            f"need at least {minimum} samples per arm, got "
            + " and ".join(str(len(a)) for a in arms)
        )
    if not all(np.isfinite(a).all() for a in arms):
        raise ValueError("NaN or inf in the compared values")


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
    y = np.r_[np.ones(len(t)), np.zeros(len(b))]
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
        "auroc": float(roc_auc_score(y, np.r_[t, b])),
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
        "test": "paired_t",
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


def auroc_test(auroc: float, n_pos: int, n_neg: int, confidence_level: float = 0.95) -> dict:
    """AUROC against 0.5 without the samples: the Mann-Whitney U normal approximation (no tie
    correction) for p, Hanley & McNeil (1982) standard error for the CI."""
    a, n1, n2 = float(auroc), int(n_pos), int(n_neg)
    if n1 < 1 or n2 < 1 or not 0 <= a <= 1:
        raise ValueError(f"AUROC test needs 0 <= auroc <= 1 and both groups (got {a}, {n1}, {n2})")
    z = (a - 0.5) * n1 * n2 / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt(
        max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a), 0) / (n1 * n2)
    )
    zc = sps.norm.ppf(0.5 + confidence_level / 2)
    return {
        "design": "auroc",
        "test": "mann_whitney_z",
        "n_treatment": n1,
        "n_baseline": n2,
        "effect_size": "auroc",
        "estimate": a,
        "ci_low": max(0.0, a - zc * se),
        "ci_high": min(1.0, a + zc * se),
        "ci_method": "hanley_mcneil",
        "statistic": float(z),
        "df": np.nan,
        "p": float(2 * sps.norm.sf(abs(z))),
        "auroc": a,
    }


# ---------------------------------------------------------------- corrections
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


# ---------------------------------------------------------------- measurements -> rows
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


def _long(frame: pd.DataFrame, **const) -> pd.DataFrame:
    for key, value in const.items():
        frame[key] = value
    for col in MEASUREMENT_COLUMNS:
        if col not in frame:
            frame[col] = "" if col not in ("layer", "value") else np.nan
    return frame[MEASUREMENT_COLUMNS]


# ---------------------------------------------------------------- phase adapters
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
    min_n: int = 2,
) -> list[dict]:
    """vectors: held-out separation along each train-split direction, condition vs baseline
    samples of the test split (independent: Welch t, Hedges' g, AUROC).

    projection: [hook, position, condition, sample]. Comparisons where every held-out value is
    identical (e.g. the last token is the same "." in every prompt at the embedding), or with
    fewer than ``min_n`` held-out samples in an arm, have no defined effect size and are left
    out.
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
                if min(treat.sum(), base.sum()) < max(min_n, 2):
                    continue
                if not np.isfinite(values[treat | base]).all() or np.ptp(values[treat | base]) == 0:
                    continue
                try:
                    result = compare_independent(
                        values[treat],
                        values[base],
                        seed=seed,
                        n_resamples=n_resamples,
                        confidence_level=confidence_level,
                    )
                except ValueError:  # no variation up to float rounding
                    continue
                rows.append(
                    {
                        "phase": "vectors",
                        "dataset": dataset,
                        "model": model,
                        "layer": layer,
                        "site": site,
                        "position": position,
                        "condition": condition,
                        "setting": "",
                        "comparison": COMPARISONS["baseline"],
                        "metric": metric,
                        "family": family_name("vectors", model, metric, dataset),
                        **result,
                    }
                )
    return rows


RECOVERY_REFERENCE = {"clean_to_corrupted": 0.0, "corrupted_to_clean": 1.0}


def patching_residual_measurements(residual: pd.DataFrame) -> pd.DataFrame:
    """patching residual.csv -> measurements: normalised recovery per pair (unit = clean
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
            _long(t.assign(arm="treatment"), phase="patching"),
            _long(b.assign(arm="baseline"), phase="patching"),
        ],
        ignore_index=True,
    )


HEAD_METRICS = {
    "recovery": ("head_patch_recovery", "suffix"),
    "zero_effect": ("head_zero_ablation_effect", "all"),
    "mean_effect": ("head_mean_ablation_effect", "all"),
}


def patching_head_measurements(heads: pd.DataFrame) -> pd.DataFrame:
    """patching heads.csv -> measurements per head (setting ``head=H``), per condition and
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
            frames.append(_long(t.assign(arm="treatment"), phase="patching"))
            frames.append(_long(t.assign(arm="baseline", value=0.0), phase="patching"))
    return (
        pd.concat(frames, ignore_index=True) if frames else _long(pd.DataFrame(), phase="patching")
    )


def directional_ablation_measurements(
    ablation: pd.DataFrame, site: str = "hook_resid_pre"
) -> pd.DataFrame:
    """patching directional_ablation.csv -> measurements per sample (unit): treatment =
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
                    _long(
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


STEERING_UNSTEERED = "none"
DEFAULT_STEERING_METRICS = (
    "marker_target",
    "vader_compound",
    "afinn",
    "polite_score",
    "perplexity",
    "distinct_2",
)


def steering_measurements(
    samples: pd.DataFrame, metrics: Sequence[str] = DEFAULT_STEERING_METRICS
) -> pd.DataFrame:
    """steering samples.csv -> measurements per prompt (unit): treatment = one steering
    configuration (layer x alpha x direction), baseline = the unsteered generation of the
    same prompt, control = the random directions (``control`` rows) at the same layer and
    alpha, seeds averaged per prompt. ``marker_target`` is the marker column of the
    direction's emotion (``marker_<condition>``); metrics missing from the table are skipped."""
    s = samples
    control = s["control"].astype(str).str.lower() == "true"
    base = s[s["direction"] == STEERING_UNSTEERED]
    steered = s[(s["direction"] != STEERING_UNSTEERED) & ~control]
    randoms = s[control]
    frames = []
    for (layer, alpha, mode, direction), part in steered.groupby(
        ["layer", "alpha", "alpha_mode", "direction"], sort=True
    ):
        condition = str(part["condition"].iloc[0])
        ctrl = randoms[
            (randoms["layer"] == layer)
            & (randoms["alpha"] == alpha)
            & (randoms["alpha_mode"] == mode)
        ]
        setting = f"direction={direction} alpha={alpha:g} mode={mode}"
        for metric in metrics:
            column = f"marker_{condition}" if metric == "marker_target" else metric
            if column not in s:
                continue
            for arm, rows in (("treatment", part), ("baseline", base), ("control", ctrl)):
                rows = rows[np.isfinite(rows[column].astype(float))]
                frames.append(
                    _long(
                        pd.DataFrame(
                            {
                                "arm": arm,
                                "unit": rows["prompt_id"].astype(str).to_numpy(),
                                "value": rows[column].astype(float).to_numpy(),
                            }
                        ),
                        phase="steering",
                        dataset=str(s["dataset"].iloc[0]),
                        model=str(s["model"].iloc[0]),
                        layer=int(layer),
                        site="hook_resid_pre",
                        position="window+generated",
                        condition=condition,
                        setting=setting,
                        metric=metric,
                    )
                )
    if not frames:
        return _long(pd.DataFrame())
    return pd.concat(frames, ignore_index=True)


def alignment_rows(
    table: pd.DataFrame, ks: Sequence[int] | None = None, matched_only: bool = True
) -> tuple[list[dict], list[str]]:
    """alignment {a}__{b}.csv -> rows: the overlap of each emotion subspace (after each map;
    ``method=none`` is the unmapped overlap_before) against the random-subspace draws
    (``vs_random_control``) and against maps fit on shuffled pairings (``vs_shuffled``, when
    the table has ``overlap_shuffled_sd``), by the Crawford-Howell single-case t test; at
    matched relative depths only (``matched_only``) and at the subspace dimensions ``ks``
    (default: every k). Model = ``a__b``, layer = layer_a, setting names method, k, layer_b."""
    t = table[table["matched_depth"].astype(bool)] if matched_only else table
    if ks is not None:
        t = t[t["k"].isin(list(ks))]
    n_random = _n_draws(table, "n_random")
    n_shuffles = _n_draws(table, "n_shuffles")
    rows, skipped = [], []
    for r in t.itertuples(index=False):
        model = f"{r.model_a}__{r.model_b}"
        metric = "overlap_before" if r.method == "none" else "overlap_after"
        value = r.overlap_before if r.method == "none" else r.overlap_after
        tests = [("vs_random_control", r.overlap_random_mean, r.overlap_random_sd, n_random)]
        if r.method != "none" and "overlap_shuffled_sd" in table:
            tests.append(("vs_shuffled", r.overlap_shuffled, r.overlap_shuffled_sd, n_shuffles))
        for comparison, mean, sd, n in tests:
            try:
                result = compare_single_case(float(value), float(mean), float(sd), int(n))
            except ValueError as err:
                skipped.append(f"alignment {model} {r.site} {r.layer_a}/{r.layer_b} k={r.k}: {err}")
                continue
            rows.append(
                {
                    "phase": "alignment",
                    "dataset": r.dataset,
                    "model": model,
                    "layer": int(r.layer_a),
                    "site": r.site,
                    "position": r.position,
                    "condition": r.condition,
                    "setting": f"method={r.method} k={int(r.k)} layer_b={int(r.layer_b)}",
                    "comparison": comparison,
                    "metric": metric,
                    "family": family_name("alignment", model, metric, r.dataset),
                    **result,
                }
            )
    return rows, skipped


def _n_draws(table: pd.DataFrame, column: str) -> int:
    if column in table and len(table):
        return int(table[column].iloc[0])
    return int(table.attrs.get(column, 0))


def sae_feature_rows(
    features: pd.DataFrame,
    metrics: Mapping,
    baseline: str,
    top_n: int = 5,
    confidence_level: float = 0.95,
) -> list[dict]:
    """SAE features.csv (+ metrics.json) -> rows: per emotion, the ``top_n`` features by
    |AUROC - 0.5| of their per-sample max activation (condition vs baseline samples, test
    split), tested against 0.5. Every live feature (firing in either group) is a hypothesis
    of the family (``n_family``), so keeping only the top rows does not weaken the
    correction. Family: sae x model x feature_auroc (every hook and architecture)."""
    f = features
    base = f[f["label"] == baseline].set_index("feature")
    rows = []
    dataset, model, hook = metrics["dataset"], metrics["model"], metrics["hook"]
    layer, site = (
        (int(hook.split(".")[1]), hook.split(".", 2)[2])
        if hook.startswith("blocks.")
        else (pd.NA, hook)
    )
    arch = metrics["architecture"]
    metric = "feature_auroc"
    cand = f[(f["label"] != baseline) & np.isfinite(f["auroc_vs_baseline"])].copy()
    live = (cand["sample_fire_rate"].to_numpy() > 0) | (
        base.loc[cand["feature"], "sample_fire_rate"].to_numpy() > 0
    )
    cand = cand[live]
    n_family = len(cand)
    cand["strength"] = (cand["auroc_vs_baseline"] - 0.5).abs()
    for label, part in cand.groupby("label", sort=True):
        top = part.sort_values(["strength", "feature"], ascending=[False, True]).head(top_n)
        for r in top.itertuples(index=False):
            b = base.loc[r.feature]
            result = auroc_test(r.auroc_vs_baseline, r.n_samples, b["n_samples"], confidence_level)
            rows.append(
                {
                    "phase": "sae",
                    "dataset": dataset,
                    "model": model,
                    "layer": layer,
                    "site": site,
                    "position": "token_max",
                    "condition": label,
                    "setting": f"architecture={arch} feature={int(r.feature)}",
                    "comparison": COMPARISONS["baseline"],
                    "metric": metric,
                    "family": family_name("sae", model, metric, dataset),
                    "mean_treatment": r.mean_max_activation,
                    "sd_treatment": np.nan,
                    "mean_baseline": b["mean_max_activation"],
                    "sd_baseline": np.nan,
                    "n_family_part": n_family,
                    **result,
                }
            )
    return rows


def sae_family_sizes(rows: Sequence[dict]) -> list[dict]:
    """Sum the per-SAE hypothesis counts into each SAE family's ``n_family``."""
    totals: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    for r in rows:
        key = (r["family"], r["setting"].split(" feature=")[0], r["site"], r["layer"])
        seen[key] = r["n_family_part"]
    for (family, *_), n in seen.items():
        totals[family] = totals.get(family, 0) + n
    return [
        {k: v for k, v in {**r, "n_family": totals[r["family"]]}.items() if k != "n_family_part"}
        for r in rows
    ]


# ---------------------------------------------------------------- power
POWER_COLUMNS = [
    "family",
    "phase",
    "dataset",
    "model",
    "metric",
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
    from statsmodels.stats.power import TTestPower

    power = TTestPower().power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided")
    if not np.isfinite(power):
        power = _normal_power(d * math.sqrt(n), n - 1, alpha)
    return float(power)


def power_independent(d: float, n1: int, n2: int, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample t test at effect d with n1 and n2 per group."""
    from statsmodels.stats.power import TTestIndPower

    power = TTestIndPower().power(
        effect_size=d, nobs1=n1, ratio=n2 / n1, alpha=alpha, alternative="two-sided"
    )
    if not np.isfinite(power):
        power = _normal_power(d * math.sqrt(n1 * n2 / (n1 + n2)), n1 + n2 - 2, alpha)
    return float(power)


def n_needed(d: float, design: str, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units needed for ``power`` at effect d: pairs (paired) or per group (independent)."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    solver = TTestIndPower() if design in ("independent", "auroc") else TTestPower()
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
    converted to d (binormal); single-case tests (alignment) have no sample size to plan.
    """
    out = []
    for family, rows in table.groupby("family", sort=True):
        first = rows.iloc[0]
        design = str(first["design"])
        row = {
            "family": family,
            "phase": first["phase"],
            "dataset": first["dataset"],
            "model": first["model"],
            "metric": first["metric"],
            "design": design,
            "n_tests": int(first["n_family"]),
            "n_significant_fdr": int((rows["p_fdr_bh"] < alpha).sum()),
            "n_observed": float(rows["n_treatment"].median()),
            "note": "",
        }
        if design == "single_case":
            row.update(
                effect_observed=float(rows["estimate"].abs().median()),
                effect_max=float(rows["estimate"].abs().max()),
                n_unit="none",
                note="single observation vs random/shuffled draws: no sample size to plan",
            )
            out.append(row)
            continue
        d = rows["estimate"].map(auroc_to_d) if design == "auroc" else rows["estimate"]
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
            note="effect as d (binormal from AUROC)" if design == "auroc" else "",
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


# ---------------------------------------------------------------- k selection
K_GROUP = [
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "site",
    "position",
    "condition",
    "method",
]
K_SELECTION_COLUMNS = [
    *K_GROUP,
    "k",
    "overlap",
    "overlap_boot_mean",
    "overlap_ci_low",
    "overlap_ci_high",
    "random_mean",
    "random_sd",
    "excess",
    "selected",
    "k_selected",
    "k_ci_low",
    "k_ci_high",
    "k_stability",
    "n_bootstrap",
    "statistic",
    "df",
    "p_vs_random",
    "p_boot",
    "p_fdr_bh",
]


def k_selection(
    table: pd.DataFrame,
    boot: pd.DataFrame,
    n_random: int,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Subspace dimension k of each bootstrapped alignment (layer pair x condition x method).

    Per k: the overlap on all samples (``table``; after the map, or before for method
    ``none``), the bootstrap mean and percentile CI over replicates (``boot``: samples
    resampled, subspaces and maps refit), and the random-subspace baseline. The selected k
    maximises the excess overlap over the random baseline on all samples; its CI is the
    percentile interval of the replicates' argmax, ``k_stability`` the fraction of replicates
    that pick the same k. At the selected k the overlap is tested against the random draws
    (Crawford-Howell t, ``p_vs_random``, BH-corrected over every selection in the table) and
    ``p_boot`` = (1 + replicates whose overlap is not above their random mean) / (1 + B).
    """
    if boot.empty:
        return pd.DataFrame(columns=K_SELECTION_COLUMNS)
    lo, hi = (1 - confidence_level) / 2, (1 + confidence_level) / 2
    full = table.set_index([*K_GROUP, "k"])
    out = []
    for key, part in boot.groupby(K_GROUP, sort=True):
        wide = part.pivot(index="replicate", columns="k", values="overlap_after")
        rand = part.pivot(index="replicate", columns="k", values="overlap_random_mean")
        ks = list(wide.columns)
        obs = full.loc[[(*key, k) for k in ks]]
        value = obs["overlap_after"].to_numpy(float)
        rmean = obs["overlap_random_mean"].to_numpy(float)
        rsd = obs["overlap_random_sd"].to_numpy(float)
        excess = value - rmean
        k_sel = ks[int(np.argmax(excess))]
        k_boot = np.asarray(ks)[np.argmax((wide - rand).to_numpy(), axis=1)]
        j = ks.index(k_sel)
        try:
            ch = compare_single_case(value[j], rmean[j], rsd[j], n_random)
        except ValueError:
            ch = {"statistic": np.nan, "df": np.nan, "p": np.nan}
        not_above = int((wide[k_sel] <= rand[k_sel]).sum())
        for i, k in enumerate(ks):
            out.append(
                {
                    **dict(zip(K_GROUP, key, strict=True)),
                    "k": k,
                    "overlap": value[i],
                    "overlap_boot_mean": float(wide[k].mean()),
                    "overlap_ci_low": float(wide[k].quantile(lo)),
                    "overlap_ci_high": float(wide[k].quantile(hi)),
                    "random_mean": rmean[i],
                    "random_sd": rsd[i],
                    "excess": excess[i],
                    "selected": k == k_sel,
                    "k_selected": k_sel,
                    "k_ci_low": float(np.quantile(k_boot, lo, method="inverted_cdf")),
                    "k_ci_high": float(np.quantile(k_boot, hi, method="inverted_cdf")),
                    "k_stability": float((k_boot == k_sel).mean()),
                    "n_bootstrap": len(wide),
                    "statistic": ch["statistic"] if k == k_sel else np.nan,
                    "df": ch["df"] if k == k_sel else np.nan,
                    "p_vs_random": ch["p"] if k == k_sel else np.nan,
                    "p_boot": (1 + not_above) / (1 + len(wide)) if k == k_sel else np.nan,
                }
            )
    return adjust_k_selection(pd.DataFrame(out))


def adjust_k_selection(frame: pd.DataFrame) -> pd.DataFrame:
    """BH-FDR of ``p_vs_random`` over every selected k of the table (one family)."""
    frame = frame.copy()
    frame["p_fdr_bh"] = np.nan
    sel = frame["selected"].astype(bool) & frame["p_vs_random"].notna()
    if sel.any():
        p = frame.loc[sel, "p_vs_random"].to_numpy(float)
        frame.loc[sel, "p_fdr_bh"] = multipletests(p, method="fdr_bh")[1]
    return frame[K_SELECTION_COLUMNS]
