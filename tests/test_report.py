"""circuitflow.report: figures (content of the panels, significance marks, determinism) and the
plain-words summary, on constructed effect tables and artifacts."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from circuitflow import report, stats


def _row(**kw):
    row = {
        "phase": "steering",
        "dataset": "emotion",
        "model": "m",
        "layer": 3,
        "site": "hook_resid_pre",
        "position": "window+generated",
        "condition": "anger",
        "setting": "direction=anger alpha=0.25 mode=relative",
        "comparison": "vs_baseline",
        "metric": "vader_compound",
        "family": "steering/emotion/m/vader_compound",
        "design": "paired",
        "test": "paired_t",
        "n_treatment": 12,
        "n_baseline": 12,
        "mean_treatment": 0.0,
        "sd_treatment": 1.0,
        "mean_baseline": 0.0,
        "sd_baseline": 1.0,
        "effect_size": "cohens_dz",
        "estimate": 1.0,
        "ci_low": 0.5,
        "ci_high": 1.5,
        "ci_method": "bca_bootstrap",
        "statistic": 3.0,
        "df": 11.0,
        "p": 0.001,
    }
    row.update(kw)
    return row


@pytest.fixture
def steering_table():
    rows = []
    for layer in (3, 5):
        for alpha in (0.1, 0.25):
            setting = f"direction=anger alpha={alpha:g} mode=relative"
            big = layer == 5 and alpha == 0.25
            rows.append(
                _row(layer=layer, setting=setting, estimate=2.0 if big else 0.1,
                     p=1e-6 if big else 0.6)
            )  # fmt: skip
            rows.append(
                _row(layer=layer, setting=setting, comparison="vs_random_control",
                     estimate=1.5 if big else 0.0, p=1e-5 if big else 0.9)
            )  # fmt: skip
    # a PCA-component direction is not drawn in the emotion-direction heatmap
    rows.append(_row(setting="direction=pc1:anger alpha=0.1 mode=relative", estimate=-9.0))
    return stats.finalize(rows)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_parse_setting_and_marks():
    assert report.parse_setting("direction=pc0:anger alpha=0.25 mode=raw") == {
        "direction": "pc0:anger",
        "alpha": "0.25",
        "mode": "raw",
    }
    assert report.parse_setting(np.nan) == {}
    assert report.significance_mark(0.01, 0.01) == "*†"
    assert report.significance_mark(0.01, 0.2) == "*"
    assert report.significance_mark(0.2, 0.01) == ""


def test_steering_effects_pivot(steering_table):
    eff = report.steering_effects(steering_table, "vader_compound")
    cell = eff[(eff.layer == 5) & (eff.alpha == 0.25) & (eff.direction == "anger")].iloc[0]
    assert cell.estimate_vs_baseline == 2.0 and cell.estimate_vs_random_control == 1.5
    assert cell.p_fdr_bh_vs_baseline < 0.05 and cell.alpha_label == "0.25 relative"
    assert len(eff) == 5  # 4 emotion-direction cells + 1 PCA component


def test_steering_heatmap_marks_only_surviving_cells(steering_table):
    fig = report.steering_heatmap(steering_table, "vader_compound")
    texts = _texts(fig)
    assert "2.00*†" in texts  # survives vs unsteered and vs random
    assert sum(t.endswith("*†") or t.endswith("*") for t in texts) == 1
    assert not any(t.startswith("-9.00") for t in texts)  # the PCA direction is not drawn
    assert len([t for t in texts if t]) == 4  # layers 3, 5 x alphas 0.1, 0.25
    empty = report.steering_heatmap(steering_table, "no_such_metric")
    assert "no steering rows for no_such_metric" in _texts(empty)


def test_patching_position_heatmap_means_and_marks():
    residual = pd.DataFrame(
        {
            "condition": "anger",
            "direction": "clean_to_corrupted",
            "layer": [0, 0, 1, 1],
            "position": ["last", "last", "last", "post_phrase"],
            "recovery": [0.2, 0.4, 0.9, 0.5],
            "small_denominator": [False, False, False, True],
        }
    )
    table = stats.finalize(
        [
            _row(phase="patching", metric="recovery_clean_to_corrupted", layer=1,
                 position="last", setting="", family="f", p=1e-4),
            _row(phase="patching", metric="recovery_clean_to_corrupted", layer=0,
                 position="last", setting="", family="f", p=0.5),
        ]
    )  # fmt: skip
    fig = report.patching_position_heatmap(residual, table, "m")
    texts = _texts(fig)
    assert "0.30" in texts  # layer 0: mean of 0.2 and 0.4, not significant
    assert "0.90*" in texts  # layer 1 survives
    assert not any(t.startswith("0.50") for t in texts)  # small denominator left out


def test_head_heatmap_values_and_marks():
    ranking = pd.DataFrame(
        {
            "condition": "all",
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "mean_recovery": [0.1, 0.6, 0.0, -0.2],
            "mean_zero_effect": [0.05, 0.7, 0.0, 0.1],
            "mean_mean_effect": [0.0, 0.3, 0.0, 0.0],
        }
    )
    table = stats.finalize(
        [
            _row(phase="patching", metric="head_zero_ablation_effect", layer=0, condition="all",
                 setting="head=1", family="f", p=1e-5),
            _row(phase="patching", metric="head_patch_recovery", layer=0, condition="all",
                 setting="head=1", family="g", p=0.3),
        ]
    )  # fmt: skip
    fig = report.head_heatmap(ranking, table, "m")
    recovery, zero, _ = (sorted(t.get_text() for t in ax.texts) for ax in fig.axes[:3])
    assert recovery == ["-0.20", "0.00", "0.10", "0.60"]  # no mark: p_fdr_bh = 0.3
    assert "0.70*" in zero and "0.05" in zero
    empty = report.head_heatmap(ranking.iloc[:0], table, "m")
    assert any("no pair with a large enough" in t for t in _texts(empty))


def test_overlap_vs_k_draws_every_method_and_the_random_band():
    rows = []
    for method in ("none", "procrustes"):
        for k in (1, 2, 3):
            rows.append(
                {"dataset": "e", "model_a": "a", "model_b": "b", "layer_a": 1, "layer_b": 2,
                 "matched_depth": True, "site": "hook_resid_post", "position": "mean",
                 "condition": "anger", "method": method, "k": k,
                 "overlap_before": 0.2, "overlap_after": 0.2 if method == "none" else 0.8,
                 "overlap_random_mean": 0.01 * k, "overlap_random_sd": 0.005,
                 "overlap_shuffled": np.nan if method == "none" else 0.1}
            )  # fmt: skip
    fig = report.overlap_vs_k(pd.DataFrame(rows))
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["before (no map)", "after: procrustes", "shuffled: procrustes"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.8, 0.8, 0.8])
    assert len(ax.collections) == 1  # the random band


def test_sae_metric_bars_frame():
    metrics = [
        {"model": "m", "hook": "blocks.4.hook_resid_post", "architecture": arch,
         "held_out": {"explained_variance": ev, "l0": l0, "dead_fraction": 0.1},
         "ce_loss": {"ce_loss_recovered": 0.9}}
        for arch, ev, l0 in (("standard", 0.7, 40.0), ("topk", 0.8, 32.0))
    ]  # fmt: skip
    frame = report.sae_metric_frame(metrics)
    assert list(frame.architecture) == ["standard", "topk"]
    assert list(frame.l0) == [40.0, 32.0] and frame.sae.iloc[0] == "m\nL4 resid_post"
    fig = report.sae_metric_bars(metrics)
    heights = sorted(round(p.get_height(), 3) for p in fig.axes[1].patches if p.get_height())
    assert heights == [32.0, 40.0]


def test_png_bytes_are_deterministic(tmp_path, steering_table):
    digests = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        report.save(report.steering_heatmap(steering_table, "vader_compound"), path)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_summary_names_surviving_effects(steering_table):
    text = report.summary_markdown(steering_table)
    assert "## m" in text and "### steering" in text
    assert "3 of 9 comparisons survive BH-FDR." in text
    # the PCA-component row (d_z = -9) survives too, and is listed first (largest |d_z|)
    assert "- vader_compound, vs baseline: 2/5 survive (1 positive, 1 negative)" in text
    assert "anger at layer 5 hook_resid_pre window+generated direction=anger alpha=0.25" in text
    assert "cohens_dz = 2.00 [0.50, 1.50]" in text
    assert "- vader_compound, vs random control: 1/4 survive" in text
