"""circuitflow.stats: effect sizes, Welch tests, bootstrap CIs, corrections, the tidy table."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from circuitflow import stats


# ---------------------------------------------------------------- Cohen's d
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


# ---------------------------------------------------------------- compare_independent
def test_compare_independent_matches_scipy_and_hand_values():
    t = [1.0, 2.0, 3.0, 3.0]
    b = [0.0, 2.0, 3.0]
    r = stats.compare_independent(t, b, seed=0, n_resamples=200)
    welch = sps.ttest_ind(t, b, equal_var=False)
    assert r["statistic"] == pytest.approx(welch.statistic, rel=1e-12)
    assert r["p"] == pytest.approx(welch.pvalue, rel=1e-12)
    assert r["df"] == pytest.approx(welch.df, rel=1e-12)
    # AUROC with ties: P(t > b) + 0.5 P(t = b) over the 12 pairs:
    # t=1: beats 0 -> 1; t=2: beats 0, ties 2 -> 1.5; t=3 (x2): beats 0, 2, ties 3 -> 2.5 each
    assert r["auroc"] == pytest.approx((1 + 1.5 + 2.5 + 2.5) / 12)
    assert r["auroc"] == pytest.approx(0.625)
    assert r["n_treatment"] == 4 and r["n_baseline"] == 3
    assert r["mean_treatment"] == pytest.approx(2.25)
    assert r["mean_baseline"] == pytest.approx(5 / 3)
    assert r["sd_treatment"] == pytest.approx(math.sqrt(0.9166666666666666))
    assert r["sd_baseline"] == pytest.approx(math.sqrt(7 / 3))
    assert r["estimate"] == pytest.approx(stats.cohens_d(t, b))
    assert r["test"] == "welch_t" and r["effect_size"] == "cohens_d"


def test_compare_independent_welch_df_is_not_pooled():
    rng = np.random.default_rng(3)
    t = rng.normal(1, 3, 12)
    b = rng.normal(0, 1, 40)
    r = stats.compare_independent(t, b, seed=0, n_resamples=200)
    assert r["df"] == pytest.approx(sps.ttest_ind(t, b, equal_var=False).df)
    assert r["df"] < 12 + 40 - 2 - 20  # Welch-Satterthwaite, far below the pooled 50
    assert r["p"] == pytest.approx(sps.ttest_ind(t, b, equal_var=False).pvalue)


def test_bootstrap_ci_deterministic_per_seed():
    rng = np.random.default_rng(0)
    t, b = rng.normal(0.8, 1, 25), rng.normal(0, 1, 25)
    a1 = stats.compare_independent(t, b, seed=11, n_resamples=300)
    a2 = stats.compare_independent(t, b, seed=11, n_resamples=300)
    other = stats.compare_independent(t, b, seed=12, n_resamples=300)
    assert (a1["ci_low"], a1["ci_high"]) == (a2["ci_low"], a2["ci_high"])
    assert (a1["ci_low"], a1["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert a1["ci_low"] < a1["estimate"] < a1["ci_high"]


def test_bootstrap_ci_coverage():
    """The 95% BCa interval for d covers the true d at close to the nominal rate."""
    rng = np.random.default_rng(2024)
    true_d, reps, covered = 0.5, 200, 0
    widths = []
    for i in range(reps):
        t = rng.normal(true_d, 1.0, 30)
        b = rng.normal(0.0, 1.0, 30)
        r = stats.compare_independent(t, b, seed=i, n_resamples=500)
        covered += r["ci_low"] <= true_d <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert 0.88 <= covered / reps <= 0.99, covered / reps
    # width of a 95% CI on d with n=30 per arm is about 2 * 1.96 * sqrt(2/30 + d^2/120)
    assert np.median(widths) == pytest.approx(2 * 1.96 * math.sqrt(2 / 30 + 0.25 / 120), rel=0.15)


def test_compare_independent_rejects_bad_input():
    with pytest.raises(ValueError) as err:
        stats.compare_independent([1.0], [1.0, 2.0, 3.0], seed=0)
    assert str(err.value) == "need at least 2 samples per arm, got 1 and 3"
    with pytest.raises(ValueError) as err:
        stats.compare_independent([1.0, np.nan], [1.0, 2.0], seed=0)
    assert str(err.value) == "NaN or inf in the compared values"


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
    # family A has 5 tests: 0.001 * 5; family B has 4: 0.01 * 4
    assert out["p_bonferroni"].iloc[0] == pytest.approx(0.005)
    assert out["p_bonferroni"].iloc[5] == pytest.approx(0.04)
    assert out["p_bonferroni"].iloc[7] == 1.0  # capped
    # pooling the families would give a different (larger) correction
    assert out["p_bonferroni"].iloc[0] != pytest.approx(0.001 * 9)
    assert list(out["p"]) == list(p)


def test_family_name():
    assert stats.family_name("vectors", "m", "proj", "emotion") == "vectors/emotion/m/proj"
    assert stats.family_name("vectors", "m", "proj") == "vectors/m/proj"


# ---------------------------------------------------------------- tidy table
def _row(**override):
    row = {
        "phase": "vectors",
        "dataset": "emotion",
        "model": "m",
        "layer": 1,
        "site": "hook_resid_pre",
        "position": "last",
        "condition": "anger",
        "comparison": "vs_neutral",
        "metric": "proj",
        "family": "vectors/emotion/m/proj",
        "test": "welch_t",
        "n_treatment": 10,
        "n_baseline": 10,
        "mean_treatment": 1.0,
        "sd_treatment": 1.0,
        "mean_baseline": 0.0,
        "sd_baseline": 1.0,
        "effect_size": "cohens_d",
        "estimate": 1.0,
        "statistic": 2.2,
        "p": 0.04,
    }
    row.update(override)
    return row


def test_finalize_columns_order_and_correction():
    rows = [
        _row(layer=2, p=0.04),
        _row(layer=0, p=0.01),
        _row(layer=1, p=0.5, model="z", family="other"),
    ]
    table = stats.finalize(rows)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    assert list(table["layer"]) == [0, 2, 1]  # sorted by model, then layer
    assert list(table["p_bonferroni"]) == pytest.approx([0.02, 0.08, 0.5])
    assert list(table["p_fdr_bh"]) == pytest.approx([0.02, 0.04, 0.5])
    assert table["auroc"].isna().all() and table["ci_low"].isna().all()  # optional, NaN
    stats.validate_effect_table(table)  # passes


def test_finalize_missing_required_value():
    with pytest.raises(ValueError) as err:
        stats.finalize([_row(), _row(layer=3, p=float("nan"))])
    assert str(err.value) == "effect table: column 'p' is empty in row 1"
    rows = [_row(), _row()]
    del rows[0]["model"]
    with pytest.raises(ValueError) as err:
        stats.finalize(rows)
    assert str(err.value) == "effect table: column 'model' is empty in row 0"


def test_validate_effect_table_wrong_columns():
    table = stats.finalize([_row()])
    bad = table.drop(columns=["auroc"])
    with pytest.raises(ValueError) as err:
        stats.validate_effect_table(bad)
    assert str(err.value) == f"effect table columns {list(bad.columns)} != {stats.EFFECT_COLUMNS}"
    swapped = table[["dataset", "phase", *stats.EFFECT_COLUMNS[2:]]]
    with pytest.raises(ValueError, match=r"^effect table columns \['dataset', 'phase'"):
        stats.validate_effect_table(swapped)


def test_required_columns():
    assert set(stats.EFFECT_COLUMNS) - set(stats.REQUIRED) == {"ci_low", "ci_high", "auroc", "df"}


# ---------------------------------------------------------------- separation_rows
def test_separation_rows():
    rng = np.random.default_rng(7)
    n = 50  # per label per split
    labels = np.repeat(["anger", "gratitude", "neutral"], 2 * n)
    split = np.tile(np.repeat(["train", "test"], n), 3)
    hooks = ["blocks.0.hook_resid_pre", "blocks.3.hook_resid_post"]
    positions = ["last", "mean"]
    conditions = ["anger", "gratitude"]
    proj = rng.normal(size=(2, 2, 2, labels.size))
    # condition "anger": planted shift of 3 SD on its own direction
    proj[:, :, 0, labels == "anger"] += 3.0
    # train values are junk: only the held-out split may be used
    proj[..., split == "train"] = 1e3
    # hook 0, position "last": every held-out value identical (nothing to compare)
    proj[0, 0] = 0.25
    rows = stats.separation_rows(
        proj,
        hooks,
        positions,
        conditions,
        labels,
        split,
        baseline="neutral",
        dataset="emotion",
        model="m",
        seed=0,
        n_resamples=300,
    )
    assert len(rows) == 2 * 2 * 2 - 2
    assert not any(r["layer"] == 0 and r["position"] == "last" for r in rows)
    by = {(r["layer"], r["position"], r["condition"]): r for r in rows}
    for key in [(0, "mean"), (3, "last"), (3, "mean")]:
        planted, null = by[(*key, "anger")], by[(*key, "gratitude")]
        assert planted["estimate"] > 2 and planted["p"] < 1e-6
        assert planted["ci_low"] > 2 and planted["auroc"] > 0.95
        assert abs(null["estimate"]) < 0.6 and null["p"] > 1e-3
        assert planted["n_treatment"] == n and planted["n_baseline"] == n
        assert planted["mean_baseline"] < 1  # computed on held-out values only
    r = by[(3, "mean", "anger")]
    h, p, c = 1, 1, 0
    treat = proj[h, p, c][(split == "test") & (labels == "anger")]
    base = proj[h, p, c][(split == "test") & (labels == "neutral")]
    assert r["estimate"] == pytest.approx(stats.cohens_d(treat, base))
    assert r["site"] == "hook_resid_post"
    assert r["comparison"] == "vs_neutral"
    assert r["metric"] == "projection_on_mean_diff"
    assert r["family"] == "vectors/emotion/m/projection_on_mean_diff"
    table = stats.finalize(rows)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    assert len(table) == 6
    np.testing.assert_allclose(table["p_bonferroni"], np.minimum(table["p"] * 6, 1.0))
