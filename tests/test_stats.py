"""circuitflow.stats: effect sizes, tests, bootstrap CIs, corrections, power, phase adapters."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from circuitflow import alignment, patching, sae, stats, steering, vectors


# ---------------------------------------------------------------- Cohen's d, Hedges' g, d_z
def test_cohens_d_closed_form():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 4.0, 6.0, 8.0])
    # means 2.5 and 5; sample variances 5/3 and 20/3; pooled var (3*5/3 + 3*20/3)/6 = 25/6
    pooled_sd = math.sqrt((3 * (5 / 3) + 3 * (20 / 3)) / 6)
    assert stats.cohens_d(t, b) == pytest.approx((2.5 - 5) / pooled_sd, rel=1e-12)
    assert stats.cohens_d(t, b) == pytest.approx(-1.2247448713915890, rel=1e-12)  # -sqrt(1.5)
    assert stats.cohens_d(b, t) == pytest.approx(1.2247448713915890, rel=1e-12)


def test_cohens_d_unequal_sizes_and_vectorised():
    t = np.array([3.0, 5.0, 7.0])  # mean 5, var 4
    b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, var 2.5
    pooled = math.sqrt((2 * 4 + 4 * 2.5) / 6)  # sqrt(3)
    assert stats.cohens_d(t, b) == pytest.approx(2 / pooled, rel=1e-12)
    batch_t = np.stack([t, t + 1, 2 * t])
    batch_b = np.stack([b, b, b])
    np.testing.assert_allclose(
        stats.cohens_d(batch_t, batch_b, axis=-1),
        [2 / pooled, 3 / pooled, (10 - 3) / math.sqrt((2 * 16 + 4 * 2.5) / 6)],
        rtol=1e-12,
    )


def test_hedges_g_closed_form():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 4.0, 6.0, 8.0])
    # J(df = 6) = Gamma(3) / (sqrt(3) Gamma(5/2)) = 2 / (sqrt(3) * 3 sqrt(pi) / 4)
    j6 = 2 / (math.sqrt(3) * 0.75 * math.sqrt(math.pi))
    assert j6 == pytest.approx(0.8686, abs=1e-4)
    assert stats.hedges_correction(6) == pytest.approx(j6, rel=1e-12)
    assert stats.hedges_g(t, b) == pytest.approx(-math.sqrt(1.5) * j6, rel=1e-12)
    # Hedges' approximation 1 - 3 / (4 df - 1) is within 0.1% here and exact in the limit
    assert stats.hedges_correction(6) == pytest.approx(1 - 3 / 23, rel=2e-3)
    assert stats.hedges_correction(1000) == pytest.approx(1 - 3 / 3999, rel=1e-6)


def test_cohens_dz_and_paired_test_closed_form():
    t = np.array([3.0, 5.0, 4.0, 8.0])
    b = np.array([1.0, 2.0, 2.0, 4.0])
    # differences 2, 3, 2, 4: mean 2.75, sd sqrt(2.75 / 3)
    dz = 2.75 / math.sqrt(2.75 / 3)
    assert stats.cohens_dz(t - b) == pytest.approx(dz, rel=1e-12)
    r = stats.compare_paired(t, b, seed=0, n_resamples=200)
    assert r["estimate"] == pytest.approx(dz, rel=1e-12)
    assert r["effect_size"] == "cohens_dz" and r["design"] == "paired"
    # paired t = d_z sqrt(n), df = n - 1; p from the t distribution, as scipy
    assert r["statistic"] == pytest.approx(dz * 2, rel=1e-12)
    assert r["df"] == 3
    assert r["p"] == pytest.approx(2 * sps.t.sf(dz * 2, 3), rel=1e-10)
    assert r["p"] == pytest.approx(sps.ttest_rel(t, b).pvalue, rel=1e-12)
    assert r["p"] == pytest.approx(0.010477, abs=1e-6)  # t(3) = 5.7446
    assert r["mean_treatment"] == 5.0 and r["mean_baseline"] == 2.25


def test_compare_paired_rejects_constant_differences():
    with pytest.raises(ValueError, match="every paired difference is the same"):
        stats.compare_paired([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], seed=0)
    # a recovery of 1 computed in float32: spread 1e-7 is rounding, not variation
    ones = np.array([1.0, 1.0 + 1e-7, 1.0 - 1e-7, 1.0 + 2e-7])
    with pytest.raises(ValueError, match="up to float rounding"):
        stats.compare_paired(ones, np.zeros(4), seed=0)
    with pytest.raises(ValueError, match="no variation within either arm"):
        stats.compare_independent(ones, ones - 0.5, seed=0)
    with pytest.raises(ValueError, match="paired arms differ in length: 3 and 2"):
        stats.compare_paired([1.0, 2.0, 3.0], [0.0, 1.0], seed=0)


# ---------------------------------------------------------------- compare_independent
def test_compare_independent_matches_scipy_and_hand_values():
    t = [1.0, 2.0, 3.0, 3.0]
    b = [0.0, 2.0, 3.0]
    r = stats.compare_independent(t, b, seed=0, n_resamples=200)
    welch = sps.ttest_ind(t, b, equal_var=False)
    assert r["statistic"] == pytest.approx(welch.statistic, rel=1e-12)
    assert r["p"] == pytest.approx(welch.pvalue, rel=1e-12)
    assert r["df"] == pytest.approx(welch.df, rel=1e-12)
    # AUROC with ties: P(t > b) + 0.5 P(t = b) over the 12 pairs
    assert r["auroc"] == pytest.approx((1 + 1.5 + 2.5 + 2.5) / 12)
    assert r["n_treatment"] == 4 and r["n_baseline"] == 3
    assert r["mean_treatment"] == pytest.approx(2.25)
    assert r["sd_baseline"] == pytest.approx(math.sqrt(7 / 3))
    assert r["estimate"] == pytest.approx(stats.cohens_d(t, b) * stats.hedges_correction(5))
    assert r["test"] == "welch_t" and r["effect_size"] == "hedges_g"
    assert r["design"] == "independent"


def test_known_p_value():
    # Welch t on two fixed samples, by the textbook formulas
    t = np.array([5.1, 4.9, 5.6, 5.8, 6.0, 5.5])
    b = np.array([4.2, 4.8, 4.4, 5.0, 4.6, 4.1, 4.9])
    v1, v2 = t.var(ddof=1) / 6, b.var(ddof=1) / 7
    welch_t = (t.mean() - b.mean()) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / 5 + v2**2 / 6)  # Welch-Satterthwaite
    r = stats.compare_independent(t, b, seed=0, n_resamples=200)
    assert r["statistic"] == pytest.approx(welch_t, rel=1e-12)
    assert r["df"] == pytest.approx(df, rel=1e-12)
    assert r["p"] == pytest.approx(2 * sps.t.sf(welch_t, df), rel=1e-10)
    assert r["p"] == pytest.approx(0.0017912, abs=1e-7)  # t = 4.232, df = 9.865


def test_bootstrap_ci_deterministic_per_seed():
    rng = np.random.default_rng(0)
    t, b = rng.normal(0.8, 1, 25), rng.normal(0, 1, 25)
    a1 = stats.compare_independent(t, b, seed=11, n_resamples=300)
    a2 = stats.compare_independent(t, b, seed=11, n_resamples=300)
    other = stats.compare_independent(t, b, seed=12, n_resamples=300)
    assert (a1["ci_low"], a1["ci_high"]) == (a2["ci_low"], a2["ci_high"])
    assert (a1["ci_low"], a1["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert a1["ci_low"] < a1["estimate"] < a1["ci_high"]


def test_bootstrap_ci_coverage_independent():
    """The 95% BCa interval for g covers the true d at close to the nominal rate."""
    rng = np.random.default_rng(2024)
    true_d, reps, covered = 0.5, 150, 0
    widths = []
    for i in range(reps):
        t = rng.normal(true_d, 1.0, 30)
        b = rng.normal(0.0, 1.0, 30)
        r = stats.compare_independent(t, b, seed=i, n_resamples=400)
        covered += r["ci_low"] <= true_d <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert 0.88 <= covered / reps <= 0.99, covered / reps
    # width of a 95% CI on d with n=30 per arm is about 2 * 1.96 * sqrt(2/30 + d^2/120)
    assert np.median(widths) == pytest.approx(2 * 1.96 * math.sqrt(2 / 30 + 0.25 / 120), rel=0.15)


def test_bootstrap_ci_coverage_paired():
    """The 95% BCa interval for d_z covers the true d_z at close to the nominal rate."""
    rng = np.random.default_rng(7)
    true_dz, reps, covered = 0.6, 150, 0
    for i in range(reps):
        b = rng.normal(0.0, 1.0, 25)
        t = b + rng.normal(true_dz, 1.0, 25)  # differences ~ N(0.6, 1): d_z = 0.6
        r = stats.compare_paired(t, b, seed=i, n_resamples=400)
        covered += r["ci_low"] <= true_dz <= r["ci_high"]
    assert 0.87 <= covered / reps <= 0.99, covered / reps


def test_compare_independent_rejects_bad_input():
    with pytest.raises(ValueError) as err:
        stats.compare_independent([1.0], [1.0, 2.0, 3.0], seed=0)
    assert str(err.value) == "need at least 2 samples per arm, got 1 and 3"
    with pytest.raises(ValueError) as err:
        stats.compare_independent([1.0, np.nan], [1.0, 2.0], seed=0)
    assert str(err.value) == "NaN or inf in the compared values"


# ---------------------------------------------------------------- single case, AUROC
def test_crawford_howell_closed_form():
    r = stats.compare_single_case(10.0, mean=5.0, sd=2.0, n=9)
    t = 5 / (2 * math.sqrt(10 / 9))
    assert r["statistic"] == pytest.approx(t, rel=1e-12)
    assert r["df"] == 8
    assert r["p"] == pytest.approx(2 * sps.t.sf(t, 8), rel=1e-12)
    assert r["estimate"] == 2.5 and r["effect_size"] == "z_cc"
    assert r["n_treatment"] == 1 and r["n_baseline"] == 9
    with pytest.raises(ValueError, match="sd > 0"):
        stats.compare_single_case(1.0, 0.0, 0.0, 5)


def test_compare_rank_is_scipy_mannwhitneyu_with_and_without_ties():
    rng = np.random.default_rng(1)
    x, y = np.round(rng.normal(0.7, 1, 15), 1), np.round(rng.normal(0, 1, 20), 1)  # ties
    r = stats.compare_rank(x, y)
    u = sps.mannwhitneyu(x, y, alternative="two-sided")  # method "auto"
    assert r["test"] == "mannwhitneyu_asymptotic" and r["statistic"] == u.statistic
    assert r["p"] == pytest.approx(u.pvalue, rel=1e-12)
    assert r["estimate"] == pytest.approx(u.statistic / 300) == r["auroc"]
    from sklearn.metrics import roc_auc_score

    assert r["estimate"] == pytest.approx(roc_auc_score(np.r_[[1] * 15, [0] * 20], np.r_[x, y]))
    small = stats.compare_rank([3.1, 2.5, 4.0, 3.3], [1.0, 2.0, 0.5, 1.6, 0.1])  # no ties, n <= 8
    exact = sps.mannwhitneyu([3.1, 2.5, 4.0, 3.3], [1.0, 2.0, 0.5, 1.6, 0.1], method="exact")
    assert small["test"] == "mannwhitneyu_exact" and small["p"] == pytest.approx(exact.pvalue)
    assert small["estimate"] == 1.0 and small["p"] == pytest.approx(2 / math.comb(9, 4))
    # Hanley & McNeil SE at A = 0.5, n = 15/20: sqrt((0.25 + 14(1/3 - 1/4) + 19(1/3 - 1/4)) / 300)
    se = math.sqrt((0.25 + 14 / 12 + 19 / 12) / 300)
    assert stats.hanley_mcneil_se(0.5, 15, 20) == pytest.approx(se)
    assert r["ci_high"] - r["estimate"] == pytest.approx(
        1.959964 * stats.hanley_mcneil_se(r["estimate"], 15, 20), rel=1e-5
    )
    with pytest.raises(ValueError, match="every value of both arms is the same"):
        stats.compare_rank([0.0, 0.0, 0.0], [0.0, 0.0])


# ---------------------------------------------------------------- multiple comparisons
def test_adjust_pvalues_within_families():
    p = np.array([0.001, 0.02, 0.03, 0.5, 0.04, 0.01, 0.2, 0.8, 0.004])
    family = ["A", "B", "A", "B", "A", "B", "A", "B", "A"]  # interleaved on purpose
    out = stats.adjust_pvalues(pd.DataFrame({"family": family, "p": p}))
    fam = np.array(family)
    for name in ("A", "B"):
        sel = fam == name
        np.testing.assert_allclose(
            out["p_bonferroni"].to_numpy()[sel], multipletests(p[sel], method="bonferroni")[1]
        )
        np.testing.assert_allclose(
            out["p_fdr_bh"].to_numpy()[sel], multipletests(p[sel], method="fdr_bh")[1]
        )
    assert out["p_bonferroni"].iloc[0] == pytest.approx(0.005)
    assert out["p_bonferroni"].iloc[5] == pytest.approx(0.04)
    assert out["p_bonferroni"].iloc[7] == 1.0  # capped
    assert list(out["n_family"]) == [5, 4, 5, 4, 5, 4, 5, 4, 5]
    assert list(out["p"]) == list(p)


def test_bh_fdr_fixed_vector_hand_values():
    # BH by hand: sorted p * m / rank, then cumulative minimum from the top
    p = np.array([0.01, 0.04, 0.03, 0.005])
    out = stats.adjust_pvalues(pd.DataFrame({"family": "F", "p": p}))
    np.testing.assert_allclose(out["p_fdr_bh"], [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(out["p_fdr_bh"], multipletests(p, method="fdr_bh")[1])


def test_declared_family_size_pads_with_ones():
    p = np.array([0.001, 0.004])
    out = stats.adjust_pvalues(pd.DataFrame({"family": "F", "p": p, "n_family": [10, 10]}))
    np.testing.assert_allclose(out["p_bonferroni"], [0.01, 0.04])
    padded = multipletests(np.r_[p, np.ones(8)], method="fdr_bh")[1][:2]
    np.testing.assert_allclose(out["p_fdr_bh"], padded)
    np.testing.assert_allclose(out["p_fdr_bh"], [0.01, 0.02])
    assert (out["n_family"] == 10).all()


def test_family_name():
    assert stats.family_name("vectors", "m", "proj", "emotion") == "vectors/emotion/m/proj"
    assert stats.family_name("vectors", "m", "proj") == "vectors/m/proj"
    name = stats.family_name("vectors", "m", "proj", "emotion", "vs_baseline")
    assert name == "vectors/emotion/m/proj/vs_baseline"


def _permutation_summary(comparison, n_ge, condition, **extra):
    """A permutation summary with p = (1 + n_ge) / 100."""
    return {"phase": "steering", "dataset": "e", "model": "m", "layer": 3, "site": "s",
            "position": "p", "condition": condition, "setting": "", "metric": "score",
            "comparison": comparison, "design": "permutation", "value": 1.0,
            "n_reference": 99, "n_reference_ge": n_ge, "reference_mean": 0.0,
            "reference_sd": 1.0, **extra}  # fmt: skip


def test_bh_family_splits_by_comparison():
    """Four trivial vs_random_control wins (p = 0.01) no longer loosen BH for vs_baseline."""
    rows = [_permutation_summary("vs_baseline", n, f"c{i}") for i, n in enumerate([0, 1, 2, 19])]
    rows += [_permutation_summary("vs_random_control", 0, f"c{i}") for i in range(4)]
    out, skipped = stats.summary_rows(stats.validate_summaries(pd.DataFrame(rows)))
    assert skipped == []
    table = stats.finalize(out)
    base = table[table.comparison == "vs_baseline"].sort_values("p")
    np.testing.assert_allclose(base["p"], [0.01, 0.02, 0.03, 0.2])
    # BH within the 4 vs_baseline rows: 0.01*4/1, 0.02*4/2, 0.03*4/3 -> 0.04; 0.2
    np.testing.assert_allclose(base["p_fdr_bh"], [0.04, 0.04, 0.04, 0.2])
    # pooled with the 4 control rows it was 0.01*8/5, 0.02*8/6, 0.03*8/7, 0.2
    pooled = multipletests([0.01, 0.02, 0.03, 0.2, 0.01, 0.01, 0.01, 0.01], method="fdr_bh")[1]
    np.testing.assert_allclose(pooled[:4], [0.016, 0.02 * 8 / 6, 0.03 * 8 / 7, 0.2])
    assert (table["n_family"] == 4).all()
    np.testing.assert_allclose(table[table.comparison == "vs_random_control"].p_fdr_bh, 0.01)
    assert set(table.family) == {
        "steering/e/m/score/vs_baseline",
        "steering/e/m/score/vs_random_control",
    }


# ---------------------------------------------------------------- power
def test_power_matches_cohen_1988_tables():
    # Cohen (1988), Table 2.4.1: d = 0.5, two-sided alpha .05, power .8 -> n = 64 per group
    assert math.ceil(stats.n_needed(0.5, "independent")) == 64
    assert stats.power_independent(0.5, 64, 64) == pytest.approx(0.80, abs=0.01)
    # d = 0.2 -> 393 per group in Cohen's table (statsmodels' exact noncentral t: 393.4)
    assert stats.n_needed(0.2, "independent") == pytest.approx(393.4, abs=0.5)
    # paired / one-sample d_z = 0.5 -> 34 pairs (G*Power: 34)
    assert math.ceil(stats.n_needed(0.5, "paired")) == 34
    assert stats.power_paired(0.5, 34) == pytest.approx(0.808, abs=0.005)
    # huge noncentrality: statsmodels' noncentral t gives NaN there; power is 1 to 1e-12
    assert stats.power_independent(2.37, 105, 105) == pytest.approx(1.0, abs=1e-12)
    assert stats.power_paired(40.0, 8) == pytest.approx(1.0, abs=1e-12)
    assert stats.power_independent(1.0, 105, 105) == pytest.approx(0.99999992, abs=1e-7)


def _effect_row(**override):
    row = {
        "phase": "steering",
        "dataset": "emotion",
        "model": "m",
        "layer": 1,
        "site": "hook_resid_pre",
        "position": "window+generated",
        "condition": "anger",
        "setting": "",
        "comparison": "vs_baseline",
        "metric": "vader_compound",
        "family": "steering/emotion/m/vader_compound",
        "design": "paired",
        "test": "paired_t",
        "n_treatment": 20,
        "n_baseline": 20,
        "mean_treatment": 1.0,
        "sd_treatment": 1.0,
        "mean_baseline": 0.0,
        "sd_baseline": 1.0,
        "effect_size": "cohens_dz",
        "estimate": 0.5,
        "ci_method": "bca_bootstrap",
        "statistic": 2.2,
        "p": 0.04,
    }
    row.update(override)
    return row


def test_power_table_per_family():
    rows = [
        _effect_row(layer=1, estimate=0.4, p=0.01),
        _effect_row(layer=2, estimate=-0.6, p=0.2),
        _effect_row(
            phase="vectors",
            family="vectors/emotion/m/proj",
            metric="proj",
            design="independent",
            test="welch_t",
            effect_size="hedges_g",
            n_treatment=30,
            n_baseline=60,
            estimate=0.8,
        ),
        _effect_row(
            phase="alignment",
            family="alignment/emotion/a__b/overlap_after",
            metric="overlap_after",
            design="single_case",
            estimate=9.0,
            n_treatment=1,
            n_baseline=50,
        ),
    ]
    table = stats.finalize(rows)
    power = stats.power_table(table).set_index("family")
    assert list(power.reset_index().columns[: len(stats.POWER_COLUMNS)]) == stats.POWER_COLUMNS
    s = power.loc["steering/emotion/m/vader_compound"]
    assert s["effect_observed"] == pytest.approx(0.5)  # median |d_z| of 0.4 and 0.6
    assert s["power_observed"] == pytest.approx(stats.power_paired(0.5, 20))
    assert s["power_observed_bonferroni"] == pytest.approx(stats.power_paired(0.5, 20, 0.025))
    assert s["n_for_d_0.5"] == 34 and s["n_tests"] == 2 and s["n_significant_fdr"] == 1
    v = power.loc["vectors/emotion/m/proj"]
    assert v["power_observed"] == pytest.approx(stats.power_independent(0.8, 30, 60))
    assert v["n_for_d_0.5"] == 64 and v["n_unit"] == "per group"
    a = power.loc["alignment/emotion/a__b/overlap_after"]
    assert np.isnan(a["power_observed"]) and "single observation" in a["note"]


def test_power_counts_untested_rows_and_converts_rank_aurocs():
    untested = _effect_row(layer=3, test="none", estimate=np.nan, statistic=np.nan, p=1.0,
                           note="2 units < min_n 3")  # fmt: skip
    rank = _effect_row(phase="sae", family="sae/e/m/f/vs_baseline", design="rank",
                       test="mannwhitneyu_asymptotic by sample", effect_size="auroc",
                       estimate=0.8, n_treatment=30, n_baseline=40)  # fmt: skip
    table = stats.finalize([_effect_row(layer=1, estimate=0.4), untested, rank])
    power = stats.power_table(table).set_index("family")
    s = power.loc["steering/emotion/m/vader_compound"]
    assert s["n_tests"] == 2 and s["effect_observed"] == pytest.approx(0.4)
    assert s["comparison"] == "vs_baseline"
    r = power.loc["sae/e/m/f/vs_baseline"]
    d = stats.auroc_to_d(0.8)
    assert r["effect_observed"] == pytest.approx(d) and r["n_unit"] == "per group"
    assert r["power_observed"] == pytest.approx(stats.power_independent(d, 30, 40))
    only = stats.power_table(stats.finalize([untested]))
    assert only["note"].iloc[0] == "no comparison of the family could be tested"


# ---------------------------------------------------------------- tidy table
def test_finalize_columns_order_and_correction():
    rows = [
        _effect_row(layer=2, p=0.04),
        _effect_row(layer=0, p=0.01),
        _effect_row(layer=1, p=0.5, model="z", family="other"),
    ]
    table = stats.finalize(rows)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    assert list(table["layer"]) == [0, 2, 1]  # sorted by model, then layer
    assert list(table["p_bonferroni"]) == pytest.approx([0.02, 0.08, 0.5])
    assert list(table["p_fdr_bh"]) == pytest.approx([0.02, 0.04, 0.5])
    assert table["auroc"].isna().all() and table["ci_low"].isna().all()  # optional, NaN
    stats.validate_effect_table(table)  # passes


def test_csv_round_trip_keeps_the_schema():
    rows = [_effect_row(layer=None, p=0.2), _effect_row(layer=3, p=0.01, setting="head=2")]
    table = stats.finalize(rows)
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.6g")
    back = pd.read_csv(io.StringIO(buf.getvalue()))
    back["setting"] = back["setting"].fillna("")
    stats.validate_effect_table(back)
    assert back["layer"].isna().sum() == 1  # optional: an all-layer effect
    assert back[stats.REQUIRED].notna().all().all()


def test_finalize_missing_required_value():
    with pytest.raises(ValueError) as err:
        stats.finalize([_effect_row(), _effect_row(layer=3, p=float("nan"))])
    assert str(err.value) == "effect table: column 'p' is empty in row 1"
    rows = [_effect_row(), _effect_row()]
    del rows[0]["model"]
    with pytest.raises(ValueError) as err:
        stats.finalize(rows)
    assert str(err.value) == "effect table: column 'model' is empty in row 0"
    with pytest.raises(ValueError, match="design 'odd' is not one of"):
        stats.finalize([_effect_row(design="odd")])


def test_validate_effect_table_wrong_columns():
    table = stats.finalize([_effect_row()])
    bad = table.drop(columns=["auroc"])
    with pytest.raises(ValueError) as err:
        stats.validate_effect_table(bad)
    assert str(err.value) == f"effect table columns {list(bad.columns)} != {stats.EFFECT_COLUMNS}"


def test_required_columns():
    assert set(stats.EFFECT_COLUMNS) - set(stats.REQUIRED) == {
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


# ---------------------------------------------------------------- adapters: vectors
def test_separation_measurements_through_the_engine():
    rng = np.random.default_rng(7)
    n = 50  # per label per split
    labels = np.repeat(["anger", "gratitude", "neutral"], 2 * n)
    split = np.tile(np.repeat(["train", "test"], n), 3)
    hooks = ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"]
    positions = ["last", "mean"]
    conditions = ["anger", "gratitude"]
    proj = rng.normal(size=(2, 2, 2, labels.size))
    proj[:, :, 0, labels == "anger"] += 3.0  # planted shift of 3 SD
    proj[..., split == "train"] = 1e3  # train values are junk: only held-out values count
    proj[0, 0] = 0.25  # nothing to compare: left out
    samples = np.array([f"s{i:03d}" for i in range(labels.size)])
    m = vectors.separation_measurements(
        proj, hooks, positions, conditions, samples, labels, split, baseline="neutral",
        dataset="emotion", model="m",
    )  # fmt: skip
    rows, skipped = stats.effect_rows(stats.validate_measurements(m), seed=0, n_resamples=300)
    assert len(rows) == 2 * 2 * 2 and len(skipped) == 2  # no variation: untested rows, p = 1
    by = {(r["layer"], r["position"], r["condition"]): r for r in rows}
    for condition in conditions:
        r = by[(0, "last", condition)]
        assert r["test"] == "none" and r["p"] == 1 and np.isnan(r["estimate"])
        assert "no variation" in r["note"]
    for key in [(0, "mean"), (3, "last"), (3, "mean")]:
        planted, null = by[(*key, "anger")], by[(*key, "gratitude")]
        assert planted["estimate"] > 2 and planted["p"] < 1e-6
        assert planted["ci_low"] > 2 and planted["auroc"] > 0.95
        assert abs(null["estimate"]) < 0.6 and null["p"] > 1e-3
    r = by[(3, "mean", "anger")]
    treat = proj[1, 1, 0][(split == "test") & (labels == "anger")]
    base = proj[1, 1, 0][(split == "test") & (labels == "neutral")]
    assert r["estimate"] == pytest.approx(stats.hedges_g(treat, base))
    assert r["comparison"] == "vs_baseline" and r["effect_size"] == "hedges_g"
    assert r["family"] == "vectors/emotion/m/projection_on_mean_diff/vs_baseline"
    table = stats.finalize(rows)  # the 2 untested rows count: 8 hypotheses
    np.testing.assert_allclose(table["p_bonferroni"], np.minimum(table["p"] * 8, 1.0))


# ---------------------------------------------------------------- adapters: patching
def _residual():
    rows = []
    rec = {"p1": 0.9, "p2": 0.7, "p3": 0.8, "p4": 0.1}
    for pair, value in rec.items():
        for direction in ("clean_to_corrupted", "corrupted_to_clean"):
            for position, vals in (("last", [value]), ("suffix_mid", [value - 0.1, value + 0.3])):
                for v in vals:
                    rows.append(
                        {
                            "dataset": "emotion", "model": "m", "frame_id": pair,
                            "condition": "anger", "clean_id": pair, "direction": direction,
                            "layer": 2, "hook": "blocks.2.hook_resid_pre", "position": position,
                            "recovery": v if direction == "clean_to_corrupted" else 1 - v / 2,
                            "small_denominator": pair == "p4",
                        }
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_patching_residual_adapter():
    m = stats.validate_measurements(patching.residual_measurements(_residual()))
    assert set(m["metric"]) == {"recovery_clean_to_corrupted", "recovery_corrupted_to_clean"}
    assert "p4" not in set(m["unit"])  # small denominator: left out
    base = m[m.arm == "baseline"]
    assert set(base[base.metric == "recovery_clean_to_corrupted"].value) == {0.0}
    assert set(base[base.metric == "recovery_corrupted_to_clean"].value) == {1.0}
    rows, skipped = stats.effect_rows(m, seed=0, n_resamples=200)
    assert skipped == []
    by = {(r["metric"], r["position"]): r for r in rows}
    r = by[("recovery_clean_to_corrupted", "suffix_mid")]
    # suffix_mid has two tokens per pair: averaged within the pair (value + 0.1)
    x = np.array([1.0, 0.8, 0.9])
    assert r["n_treatment"] == 3 and r["mean_treatment"] == pytest.approx(x.mean())
    assert r["p"] == pytest.approx(sps.ttest_1samp(x, 0.0).pvalue, rel=1e-10)
    assert r["estimate"] == pytest.approx(x.mean() / x.std(ddof=1))
    r = by[("recovery_corrupted_to_clean", "last")]
    y = 1 - np.array([0.9, 0.7, 0.8]) / 2
    assert r["p"] == pytest.approx(sps.ttest_1samp(y, 1.0).pvalue, rel=1e-10)
    assert r["estimate"] < 0 and r["site"] == "hook_resid_pre" and r["layer"] == 2
    assert r["family"] == "patching/emotion/m/recovery_corrupted_to_clean/vs_baseline"


def test_patching_head_adapter_pools_conditions():
    rows = []
    for i, (cond, rec, zero) in enumerate(
        [("anger", 0.5, 0.2), ("anger", 0.7, 0.4), ("anger", 0.3, 0.1),
         ("apology", 0.2, 0.3), ("apology", 0.4, 0.5), ("apology", 0.1, 0.2)]
    ):  # fmt: skip
        rows.append(
            {
                "dataset": "emotion", "model": "m", "condition": cond, "clean_id": f"s{i}",
                "frame_id": f"f{i}",
                "layer": 1, "head": 3, "hook": "blocks.1.attn.hook_z", "recovery": rec,
                "zero_effect": zero, "mean_effect": zero / 2, "small_denominator": False,
            }
        )  # fmt: skip
    m = stats.validate_measurements(patching.head_measurements(pd.DataFrame(rows)))
    out, _ = stats.effect_rows(m, seed=0, n_resamples=200)
    by = {(r["metric"], r["condition"]): r for r in out}
    assert set(by) == {
        (metric, c)
        for metric in (
            "head_patch_recovery",
            "head_zero_ablation_effect",
            "head_mean_ablation_effect",
        )
        for c in ("anger", "apology", "all")
    }
    pooled = by[("head_zero_ablation_effect", "all")]
    z = np.array([0.2, 0.4, 0.1, 0.3, 0.5, 0.2])
    assert pooled["n_treatment"] == 6
    assert pooled["p"] == pytest.approx(sps.ttest_1samp(z, 0.0).pvalue, rel=1e-10)
    assert pooled["setting"] == "head=3" and pooled["site"] == "attn.hook_z"
    assert (
        pooled["position"] == "all" and by[("head_patch_recovery", "all")]["position"] == "suffix"
    )


def test_directional_ablation_adapter_random_seeds_averaged():
    rows = []
    samples = [("a1", "anger"), ("a2", "anger"), ("a3", "anger"), ("n1", "neutral"),
               ("n2", "neutral"), ("n3", "neutral")]  # fmt: skip
    rng = np.random.default_rng(0)
    for sid, label in samples:
        is_c = label == "anger"
        base_p = 0.9 if is_c else 0.2
        for ablation, k, seed, p in (
            ("none", 0, -1, base_p),
            ("direction", 1, -1, 0.5 + rng.normal(0, 0.05)),
            ("matched_direction", 1, 0, base_p + rng.normal(0, 0.05)),
            ("matched_direction", 1, 1, base_p + rng.normal(0, 0.05)),
        ):
            rows.append(
                {
                    "dataset": "emotion", "model": "m", "sample_id": sid, "label": label,
                    "condition": "anger", "is_condition": is_c, "ablation": ablation, "k": k,
                    "seed": seed, "positions": "all" if ablation != "none" else "none",
                    "probe_p": p, "probe_p_base": base_p, "lean": p * 2,
                    "lean_base": base_p * 2,
                }
            )  # fmt: skip
    table = pd.DataFrame(rows)
    m = stats.validate_measurements(patching.directional_ablation_measurements(table))
    out, _ = stats.effect_rows(m, seed=0, n_resamples=200)
    by = {(r["metric"], r["comparison"]): r for r in out}
    assert set(by) == {
        (metric, c)
        for metric in ("ablation_probe_p_true", "ablation_lean")
        for c in ("vs_baseline", "vs_random_control")
    }
    r = by[("ablation_probe_p_true", "vs_random_control")]
    t = table.set_index(["sample_id", "ablation", "seed"])
    true_p = {sid: (lambda p, c=(label == "anger"): p if c else 1 - p) for sid, label in samples}
    treat = [true_p[s](t.loc[(s, "direction", -1), "probe_p"]) for s, _ in samples]
    ctrl = [
        np.mean([true_p[s](t.loc[(s, "matched_direction", seed), "probe_p"]) for seed in (0, 1)])
        for s, _ in samples
    ]
    assert r["n_treatment"] == 6 and r["design"] == "paired"
    assert r["p"] == pytest.approx(sps.ttest_rel(treat, ctrl).pvalue, rel=1e-10)
    assert r["estimate"] < 0  # ablating the emotion direction lowers the true-class probability
    assert r["layer"] is None or pd.isna(r["layer"])
    assert r["setting"] == "ablation=direction k=1" and r["position"] == "all"
    assert by[("ablation_lean", "vs_baseline")]["n_treatment"] == 3  # condition samples only


# ---------------------------------------------------------------- adapters: steering
def _steering_samples():
    rows = []
    for i in range(5):
        pid = f"p{i}"
        common = {"dataset": "emotion", "model": "m", "prompt_id": pid, "alpha_mode": "relative"}
        rows.append({**common, "direction": "none", "layer": np.nan, "alpha": 0.0,
                     "condition": np.nan, "control": False, "marker_gratitude": 0.0,
                     "vader_compound": 0.1 * i})  # fmt: skip
        rows.append({**common, "direction": "gratitude", "layer": 3, "alpha": 0.25,
                     "condition": "gratitude", "control": False, "marker_gratitude": 1.0 + i % 2,
                     "vader_compound": 0.1 * i + 0.5 + 0.05 * (i % 3)})  # fmt: skip
        for seed in (0, 1):
            rows.append({**common, "direction": f"random:{seed}", "layer": 3, "alpha": 0.25,
                         "condition": np.nan, "control": True, "marker_gratitude": float(seed),
                         "vader_compound": 0.1 * i + 0.02 * seed * i})  # fmt: skip
    return pd.DataFrame(rows)


def test_steering_adapter_paired_by_prompt():
    s = _steering_samples()
    m = stats.validate_measurements(
        steering.sample_measurements(s, ["marker_target", "vader_compound", "absent_metric"])
    )
    assert set(m["metric"]) == {"marker_target", "vader_compound"}
    out, _ = stats.effect_rows(m, seed=0, n_resamples=200)
    by = {(r["metric"], r["comparison"]): r for r in out}
    r = by[("vader_compound", "vs_baseline")]
    steered = np.array([0.1 * i + 0.5 + 0.05 * (i % 3) for i in range(5)])
    base = np.array([0.1 * i for i in range(5)])
    assert r["design"] == "paired" and r["n_treatment"] == 5
    assert r["estimate"] == pytest.approx(stats.cohens_dz(steered - base))
    assert r["p"] == pytest.approx(sps.ttest_rel(steered, base).pvalue, rel=1e-10)
    assert r["setting"] == "direction=gratitude alpha=0.25 mode=relative"
    assert r["layer"] == 3 and r["condition"] == "gratitude"
    ctrl = np.array([0.1 * i + 0.01 * i for i in range(5)])  # seeds 0 and 1 averaged
    rc = by[("vader_compound", "vs_random_control")]
    assert rc["mean_baseline"] == pytest.approx(ctrl.mean())
    assert rc["p"] == pytest.approx(sps.ttest_rel(steered, ctrl).pvalue, rel=1e-10)
    # marker_target is marker_gratitude for the gratitude direction
    mk = by[("marker_target", "vs_baseline")]
    assert mk["mean_treatment"] == pytest.approx(np.mean([1 + i % 2 for i in range(5)]))
    assert mk["mean_baseline"] == 0.0


def test_effect_rows_independent_when_units_differ_and_skips_small_groups():
    m = pd.DataFrame(
        {
            "phase": "vision", "dataset": "d", "model": "m", "layer": 1, "site": "s",
            "position": "cls", "condition": "composition", "metric": "score",
            "arm": ["treatment"] * 4 + ["baseline"] * 5 + ["control"] * 2,
            "unit": [f"t{i}" for i in range(4)] + [f"b{i}" for i in range(5)] + ["c0", "c1"],
            "value": [1.0, 2.0, 3.0, 2.5, 0.0, 0.5, 1.0, 0.2, 0.1, 5.0, 6.0],
        }
    )  # fmt: skip
    m = stats.validate_measurements(m)
    out, skipped = stats.effect_rows(m, seed=0, n_resamples=200, min_n=3)
    assert len(out) == 2 and out[0]["design"] == "independent"
    t, b = [1.0, 2.0, 3.0, 2.5], [0.0, 0.5, 1.0, 0.2, 0.1]
    assert out[0]["estimate"] == pytest.approx(stats.hedges_g(t, b))
    assert out[0]["p"] == pytest.approx(sps.ttest_ind(t, b, equal_var=False).pvalue)
    assert out[0]["test"] == "welch_t"
    assert out[0]["note"] == "4 units < headline_n 10: not a headline"
    big, _ = stats.effect_rows(m, seed=0, n_resamples=200, min_n=3, headline_n=4)
    assert big[0]["note"] == ""  # 4 units meet a headline_n of 4
    assert len(skipped) == 1 and "vs_random_control: 2 units < min_n 3" in skipped[0]
    small = out[1]
    assert small["comparison"] == "vs_random_control" and small["test"] == "none"
    assert small["p"] == 1.0 and small["note"] == "2 units < min_n 3"
    assert (small["n_treatment"], small["n_baseline"], small["mean_baseline"]) == (4, 2, 5.5)


def test_validate_measurements_errors_name_the_problem():
    good = {"phase": "p", "dataset": "d", "model": "m", "site": "", "position": "",
            "condition": "c", "metric": "x", "arm": "treatment", "unit": "u", "value": 1.0}  # fmt: skip
    with pytest.raises(stats.StatsError, match=r"^f.csv: arm 'treated' is not one of"):
        stats.validate_measurements(pd.DataFrame([{**good, "arm": "treated"}]), "f.csv")
    with pytest.raises(stats.StatsError, match=r"^f.csv: missing columns \['unit'\]"):
        stats.validate_measurements(pd.DataFrame([good]).drop(columns="unit"), "f.csv")
    with pytest.raises(stats.StatsError, match="'value' has empty"):
        stats.validate_measurements(pd.DataFrame([{**good, "value": np.nan}]), "f.csv")
    ok = stats.validate_measurements(pd.DataFrame([good]))
    assert list(ok.columns) == [*stats.MEASUREMENT_COLUMNS, *stats.MEASUREMENT_OPTIONAL]
    assert ok["setting"].iloc[0] == "" and ok["unit_kind"].iloc[0] == ""
    with pytest.raises(stats.StatsError) as err:
        stats.validate_measurements(pd.DataFrame([{**good, "unit_kind": "pixel"}]), "f.csv")
    assert str(err.value) == (
        "f.csv: unit_kind 'pixel' is not one of ['prompt', 'frame', 'photo', 'sample'] (or empty)"
    )
    two = pd.DataFrame(
        [{**good, "unit_kind": "frame"}, {**good, "unit": "v", "unit_kind": "prompt"}]
    )
    with pytest.raises(stats.StatsError) as err:
        stats.validate_measurements(two, "f.csv")
    assert str(err.value) == (
        "f.csv: column 'unit_kind' varies within the group p/d/m/c/x (frame, prompt); write "
        "one value per group, or tell the groups apart in 'setting'"
    )
    with pytest.raises(stats.StatsError, match="design 'ranks' is not one of"):
        stats.validate_measurements(pd.DataFrame([{**good, "design": "ranks"}]), "f.csv")


# ---------------------------------------------------------------- adapters: alignment, SAE
def test_alignment_summaries_through_the_engine():
    base = {"dataset": "emotion", "model_a": "a", "model_b": "b", "site": "hook_resid_post",
            "position": "mean", "condition": "anger", "measure": "subspace_overlap",
            "overlap_shuffled": 0.05, "overlap_shuffled_sd": 0.02, "n_shuffled": 199,
            "n_shuffled_ge": 3, "overlap_permuted": 0.2, "overlap_permuted_sd": 0.05,
            "n_permuted": 99, "n_permuted_ge": 9}  # fmt: skip
    table = pd.DataFrame(
        [
            {**base, "layer_a": 2, "layer_b": 1, "matched_depth": True, "method": "procrustes",
             "k": 1, "overlap_after": 0.6},
            {**base, "layer_a": 2, "layer_b": 1, "matched_depth": True, "method": "procrustes",
             "k": 2, "overlap_after": 0.5},
            {**base, "layer_a": 0, "layer_b": 1, "matched_depth": False, "method": "procrustes",
             "k": 1, "overlap_after": 0.6},
        ]
    )  # fmt: skip
    summaries = alignment.alignment_summaries(table, ks=[1])
    rows, skipped = stats.summary_rows(stats.validate_summaries(summaries))
    assert skipped == []
    by = {r["comparison"]: r for r in rows}
    assert set(by) == {"vs_shuffled_pairs", "vs_permuted_labels"}
    s, q = by["vs_shuffled_pairs"], by["vs_permuted_labels"]
    assert s["p"] == pytest.approx(4 / 200) and q["p"] == pytest.approx(10 / 100)
    assert q["estimate"] == pytest.approx((0.6 - 0.2) / 0.05) and q["design"] == "permutation"
    assert s["model"] == "a__b" and s["layer"] == 2 and s["setting"].startswith("method=")
    assert s["family"] == "alignment/emotion/a__b/overlap_after/vs_shuffled_pairs"
    assert q["family"] != s["family"]  # each null is its own family


def test_sae_features_chosen_on_train_and_tested_on_test_with_mannwhitneyu():
    """Feature 0 separates anger on train only, feature 1 on test only: the choice (top 1)
    takes feature 0, and its test on the test samples is scipy's Mann-Whitney U."""
    rng = np.random.default_rng(3)
    n = 12  # per label per split
    labels = ["anger"] * n + ["neutral"] * n
    train = np.zeros((2 * n, 4))
    train[:n, 0] = 2 + rng.random(n)  # anger fires high on train
    train[n:, 0] = rng.random(n)
    train[:, 1] = rng.random(2 * n)
    train[:, 2] = np.where(rng.random(2 * n) < 0.5, 0.0, 1.0)  # ties, no separation
    # feature 3: dead on train
    test = rng.random((2 * n, 4))
    test[:n, 1] += 5  # would win on test
    test[:, 0] = np.round(test[:, 0], 1)  # ties on the test values
    chosen, n_live = sae.select_features(train, labels, ["anger", "neutral"], "neutral", top_n=1)
    assert list(chosen.feature) == [0] and n_live == 3  # features 0, 1, 2 are live on train
    assert chosen.auroc_select.iloc[0] == 1.0
    metrics = {"dataset": "emotion", "model": "m", "hook": "blocks.4.hook_resid_post",
               "architecture": "topk"}  # fmt: skip
    ids = [f"t{i}" for i in range(2 * n)]
    m = sae.feature_measurements(chosen, test, ids, labels, "neutral", metrics, n_family_part=3)
    rows, skipped = stats.effect_rows(stats.validate_measurements(m), seed=0, n_resamples=100)
    assert skipped == [] and len(rows) == 1
    (r,) = rows
    u = sps.mannwhitneyu(test[:n, 0], test[n:, 0], alternative="two-sided")
    assert r["design"] == "rank" and r["test"] == "mannwhitneyu_asymptotic by sample"
    assert r["statistic"] == u.statistic and r["p"] == pytest.approx(u.pvalue, rel=1e-12)
    assert r["estimate"] == pytest.approx(u.statistic / n**2) and r["n_family"] == 3
    assert r["setting"] == "architecture=topk feature=0" and r["layer"] == 4
    assert r["site"] == "hook_resid_post" and r["metric"] == "feature_max_activation"
    table = stats.finalize(rows)
    assert table["p_bonferroni"].iloc[0] == pytest.approx(min(1.0, 3 * r["p"]))


def test_skipped_comparisons_stay_as_rows_with_p_one_and_count():
    def group(condition, treat, note=""):
        return [
            {"phase": "steering", "dataset": "d", "model": "m", "layer": 2, "site": "s",
             "position": "p", "condition": condition, "metric": "x", "arm": arm, "unit": f"u{i}",
             "value": v, "note": note}
            for arm, values in (("treatment", treat), ("baseline", [0.0] * len(treat)))
            for i, v in enumerate(values)
        ]  # fmt: skip

    m = pd.DataFrame(
        group("a", [1.0, 2.0, 4.0, 3.5])
        + group("b", [1.0] * 4, note="fluency outside band")  # every difference the same
        + group("c", [0.5, 1.5, 0.7, 0.2])
    )
    rows, skipped = stats.effect_rows(stats.validate_measurements(m), seed=0, n_resamples=200)
    assert len(rows) == 3 and len(skipped) == 1 and "every paired difference" in skipped[0]
    table = stats.finalize(rows).set_index("condition")
    b = table.loc["b"]
    assert b.test == "none" and np.isnan(b.estimate) and np.isnan(b.statistic)
    assert b.p == b.p_bonferroni == b.p_fdr_bh == 1.0
    assert b.note.startswith("every paired difference is the same")
    assert b.note.endswith("; fluency outside band") and b.n_treatment == 4
    assert (table.n_family == 3).all()  # the untested row counts
    p = [sps.ttest_rel([1.0, 2.0, 4.0, 3.5], [0] * 4).pvalue,
         sps.ttest_rel([0.5, 1.5, 0.7, 0.2], [0] * 4).pvalue]  # fmt: skip
    np.testing.assert_allclose(
        table.loc[["a", "c"], "p_bonferroni"], np.minimum(np.array(p) * 3, 1)
    )
    np.testing.assert_allclose(
        table.loc[["a", "c"], "p_fdr_bh"], multipletests([*p, 1.0], method="fdr_bh")[1][:2]
    )
    assert table.loc["a", "note"] == "4 units < headline_n 10: not a headline"
    assert table.loc["a", "test"] == "ttest_rel"
    # a summary whose test cannot run stays too, with what is known of its arms
    bad = _permutation_summary("vs_baseline", 0, "a", note="flagged")
    bad.update(design="single_case", reference_sd=0.0, n_reference=50)
    out, skipped = stats.summary_rows(stats.validate_summaries(pd.DataFrame([bad])))
    (r,) = out
    assert r["test"] == "none" and r["p"] == 1.0 and r["effect_size"] == "z_cc"
    assert r["note"].startswith("single-case test needs") and r["note"].endswith("; flagged")
    assert r["mean_treatment"] == 1.0 and r["n_baseline"] == 50 and len(skipped) == 1
    stats.finalize(out)  # valid


def test_unit_kind_is_named_in_test():
    def rows(arm, units, values, kind):
        return [{"phase": "vision", "dataset": "d", "model": "m", "site": "s", "position": "p",
                 "condition": "exposure", "setting": kind, "metric": "x", "arm": arm, "unit": u,
                 "value": v, "unit_kind": kind} for u, v in zip(units, values, strict=True)]  # fmt: skip

    m = pd.DataFrame(
        rows("treatment", ["f1", "f2", "f3"], [1.0, 2.0, 2.5], "frame")
        + rows("baseline", ["f1", "f2", "f3"], [0.1, 0.5, 1.5], "frame")
        + rows("treatment", ["a", "b", "c"], [1.0, 2.0, 2.5], "photo")
        + rows("baseline", ["d", "e", "f"], [0.1, 0.5, 1.5], "photo")
    )
    out, _ = stats.effect_rows(stats.validate_measurements(m), seed=0, n_resamples=100)
    assert {r["setting"]: r["test"] for r in out} == {
        "frame": "ttest_rel by frame",
        "photo": "welch_t by photo",
    }
    assert stats.finalize(out)["test"].str.contains(" by ").all()


# ---------------------------------------------------------------- k selection
_K_KEY = {"dataset": "e", "model_a": "a", "model_b": "b", "layer_a": 1, "layer_b": 2,
          "site": "hook_resid_post", "position": "mean", "condition": "anger",
          "method": "procrustes"}  # fmt: skip


def _k_inputs(overlap, rand, replicate_overlaps, permuted=None, layers=((1, 2),)):
    """Table and bootstrap rows; ``permuted`` maps k -> (null mean, null sd, n, n >= observed)
    for the k with a permuted-label null."""
    permuted = permuted or {}
    table = pd.DataFrame(
        [{**_K_KEY, "layer_a": la, "layer_b": lb, "matched_depth": True, "k": k,
          "overlap_after": overlap[k], "overlap_random_mean": rand[k],
          **dict(zip(["overlap_permuted", "overlap_permuted_sd", "n_permuted", "n_permuted_ge"],
                     permuted.get(k, (np.nan, np.nan, 0, 0)), strict=True))}
         for la, lb in layers for k in overlap]
    )  # fmt: skip
    boot = pd.DataFrame(
        [{**_K_KEY, "replicate": b, "k": k, "overlap_after": v}
         for b, values in enumerate(replicate_overlaps) for k, v in zip(overlap, values, strict=True)]
    )  # fmt: skip
    return table, boot


def test_k_is_chosen_among_the_k_with_a_permuted_null_and_tested_against_it():
    """Candidates are k = 1, 3 (a permuted-label null); k = 2 peaks but has none. Replicates
    0-4 choose k = 3; p = (1 + 4) / (1 + 200), Bonferroni over 2 k x 3 layer pairs (best)."""
    rand = {1: 0.01, 2: 0.02, 3: 0.03}
    overlap = {1: 0.2, 2: 0.9, 3: 0.6}
    reps = [[0.2, 0.9, 0.6 + 0.01 * b] for b in range(5)]
    reps += [[0.3, 0.9, 0.25] for _ in range(4)] + [[0.2, 0.9, 0.6]]  # held out: 1 of 5 at 3
    permuted = {1: (0.1, 0.05, 200, 120), 3: (0.2, 0.05, 200, 4)}
    table, boot = _k_inputs(overlap, rand, reps, permuted, layers=((1, 2), (3, 4), (5, 6)))
    sel_text = stats.LAYER_SELECTION["best"]
    out = stats.k_selection(table, boot, select_fraction=0.5, selection=sel_text, pair_chosen=True)
    assert list(out.columns) == stats.K_SELECTION_COLUMNS
    assert list(out.candidate) == [True, False, True]
    sel = out[out.selected].iloc[0]
    assert sel.k_selected == 3 and (sel.n_select, sel.n_test, sel.n_bootstrap) == (5, 5, 10)
    assert (sel.n_k, sel.n_pairs) == (2, 3)
    assert sel.p_permuted == pytest.approx(5 / 201)
    assert sel.p_vs_permuted == pytest.approx(6 * 5 / 201)
    assert sel.k_stability == pytest.approx(1 / 5)  # held-out replicates 5-8 peak at k = 1
    assert "replicates 0-4" in sel.test and "200 permutations" in sel.test
    assert "x 3 layer pairs" in sel.test and sel.selection == sel_text
    assert out[~out.selected].p_vs_permuted.isna().all()
    unchosen = stats.k_selection(table, boot, select_fraction=0.5, pair_chosen=False)
    assert unchosen[unchosen.selected].iloc[0].p_vs_permuted == pytest.approx(2 * 5 / 201)


def test_k_selection_without_a_null_is_not_tested():
    table, boot = _k_inputs({1: 0.5, 2: 0.6}, {1: 0.01, 2: 0.02}, [[0.5, 0.6]] * 4)
    out = stats.k_selection(table, boot, select_fraction=0.5)
    assert not out.selected.any() and out.p_fdr_bh.isna().all()
    assert out.test.str.startswith("not tested: no k with a permuted-label null").all()


def test_k_selection_bootstrap_ci():
    rand = {1: 0.01, 2: 0.02, 3: 0.03}
    overlap = {1: 0.30, 2: 0.55, 3: 0.50}
    peaks = [2, 2, 3, 2, 2, 2, 2, 3, 2, 1]  # replicate -> the k where it peaks
    reps = [[0.6 if k == peak else 0.2 for k in (1, 2, 3)] for peak in peaks]
    permuted = {k: (0.1, 0.05, 100, 0) for k in (1, 2, 3)}
    table, boot = _k_inputs(overlap, rand, reps, permuted)
    out = stats.k_selection(table, boot, select_fraction=0.4)
    sel = out[out.selected].iloc[0]
    assert list(out.selected) == [False, True, False] and sel.k_selected == 2
    assert (sel.n_select, sel.n_test) == (4, 6)
    assert sel.k_stability == pytest.approx(4 / 6)  # replicates 4-9 peak at 2, 2, 2, 3, 2, 1
    assert (sel.k_ci_low, sel.k_ci_high) == (1, 3)
    assert sel.p_vs_permuted == pytest.approx(3 / 101)
    k2 = [r[1] for r in reps]
    assert sel.overlap_boot_mean == pytest.approx(np.mean(k2)) and sel.overlap == 0.55
    assert sel.overlap_ci_low == pytest.approx(np.quantile(k2, 0.025))


def _null_k_tables(n, ks, reps, n_perm, rng, planted=0.0):
    """n alignments whose overlap at every k is exchangeable with its permuted-label draws
    (``planted`` added to the observed overlap at k = 1 shifts it above its null)."""
    tables, boots = [], []
    for i in range(n):
        key = {**_K_KEY, "condition": f"c{i:03d}"}
        full = {k: 0.01 * k + rng.normal(0, 0.01) + (planted if k == 1 else 0) for k in ks}
        for k in ks:
            null = 0.01 * k + rng.normal(0, 0.01, n_perm)
            tables.append({**key, "k": k, "overlap_after": full[k], "overlap_random_mean": 0.0,
                           "matched_depth": True, "overlap_permuted": null.mean(),
                           "overlap_permuted_sd": null.std(ddof=1), "n_permuted": n_perm,
                           "n_permuted_ge": int((null >= full[k]).sum())})  # fmt: skip
        boots += [{**key, "replicate": b, "k": k, "overlap_after": full[k] + rng.normal(0, 0.005)}
                  for b in range(reps) for k in ks]  # fmt: skip
    return pd.DataFrame(tables), pd.DataFrame(boots)


def test_k_selection_null_rejects_at_most_alpha_and_a_planted_k_is_found():
    """Null alignments: choosing the best of 4 k on replicates of the same samples inflates
    the unadjusted p; the Bonferroni bound over k keeps the rejections at or below alpha.
    A planted overlap at k = 1 is chosen and rejected."""
    rng = np.random.default_rng(0)
    n, ks = 300, (1, 2, 3, 4)
    table, boot = _null_k_tables(n, ks, 10, 199, rng)
    sel = stats.k_selection(table, boot, select_fraction=0.5).query("selected")
    assert len(sel) == n and (sel.n_k == 4).all()
    assert (sel.p_permuted < 0.05).mean() > 0.08  # the choice's bias
    assert (sel.p_vs_permuted < 0.05).mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / n)
    table, boot = _null_k_tables(20, ks, 10, 199, rng, planted=0.2)
    sel = stats.k_selection(table, boot, select_fraction=0.5).query("selected")
    assert (sel.k_selected == 1).all() and (sel.p_fdr_bh < 0.05).all()


def test_choose_k_ties_and_split():
    excess = pd.DataFrame([[0.25, 0.5], [0.75, 0.5], [0.25, 0.25]], columns=[1, 2])
    k, best = stats.choose_k(excess)  # argmax per replicate (a tie -> the first k)
    assert list(best) == [2, 1, 1] and k == 1
    k, _ = stats.choose_k(excess.iloc[:2])  # one win each, mean excess 0.5 each -> smaller k
    assert k == 1
    k, _ = stats.choose_k(pd.DataFrame([[0.1, 0.5], [0.6, 0.55]], columns=[1, 2]))
    assert k == 2  # one win each; k = 2 has the larger mean excess
    a, b = stats.split_replicates([3, 1, 2, 0], 0.5)
    assert list(a) == [0, 1] and list(b) == [2, 3]
    a, b = stats.split_replicates([0, 1, 2], 0.01)
    assert list(a) == [0] and list(b) == [1, 2]  # each part keeps one
    with pytest.raises(ValueError, match=r"^stats.k_select_fraction: 1.0 must lie"):
        stats.split_replicates([0, 1], 1.0)
    assert set(stats.LAYER_SELECTION) == set(alignment.BOOTSTRAP_PAIRS)


# ---------------------------------------------------------------- permutation design
def test_permutation_summary_gives_the_empirical_p():
    row = {"phase": "alignment", "dataset": "e", "model": "a__b", "layer": 3,
           "site": "hook_resid_post", "position": "mean", "condition": "anger",
           "setting": "method=ridge k=3", "metric": "overlap_after",
           "comparison": "vs_permuted_labels", "design": "permutation", "value": 0.4,
           "n_reference": 199, "n_reference_ge": 9, "reference_mean": 0.2,
           "reference_sd": 0.05}  # fmt: skip
    rows, skipped = stats.summary_rows(stats.validate_summaries(pd.DataFrame([row])))
    assert skipped == []
    (r,) = rows
    assert r["p"] == pytest.approx(10 / 200) and r["estimate"] == pytest.approx(4.0)
    assert r["design"] == "permutation" and r["test"] == "permutation_empirical_p"
    with pytest.raises(ValueError, match="n_null_ge <= n_null"):
        stats.compare_permutation(0.4, 10, 11, 0.2, 0.05)


def test_permutation_p_of_a_null_statistic_is_uniform():
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(400):
        null = rng.standard_normal(199)
        value = rng.standard_normal()
        ps.append(stats.compare_permutation(value, 199, int((null >= value).sum()), 0, 1)["p"])
    assert sps.kstest(ps, "uniform").pvalue > 0.01
    assert np.mean(np.array(ps) < 0.05) <= 0.08
