"""Calibration: permuted-label copies of the prompt datasets, the relabelled activation store,
the false-positive table (rates with Clopper-Pearson CIs), the summary's failing phases, and
the calibration run of the workflow on tiny models."""

import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import REPO, TESTS
from scipy.stats import beta

from circuitflow import report, stats, store
from circuitflow.datasets import build_prompt_dataset
from circuitflow.datasets.prompts import permute_labels

LABELS = ["gratitude", "anger", "apology", "neutral"]


# ---------------------------------------------------------------- permuted labels
@pytest.fixture(scope="module")
def shipped_rows():
    data = REPO / "data" / "emotion"
    return build_prompt_dataset(
        data / "prompts.jsonl", data / "frames.jsonl", LABELS, test_fraction=0.3, seed=0
    )


def _counts(rows, free: bool):
    return Counter((r["split"], r["label"]) for r in rows if bool(r["frame_id"]) != free)


def test_permutation_keeps_ids_texts_splits_frames_and_label_counts(shipped_rows):
    permuted = permute_labels(shipped_rows, seed=1)
    keep = ("sample_id", "text", "span", "split", "frame_id", "genre", "source")
    for real, perm in zip(shipped_rows, permuted, strict=True):
        assert {k: real[k] for k in keep} == {k: perm[k] for k in keep}
    # frame structure: each frame still has one variant per label
    frames = {}
    for r in permuted:
        if r["frame_id"]:
            frames.setdefault(r["frame_id"], []).append(r["label"])
    assert len(frames) == 120
    assert all(sorted(labels) == sorted(LABELS) for labels in frames.values())
    # free prompts: the label counts of each split are the real ones
    assert _counts(permuted, free=True) == _counts(shipped_rows, free=True)
    # and labels did move, within frames and among free prompts
    moved = [
        (r["frame_id"] != "", r["label"] != p["label"])
        for r, p in zip(shipped_rows, permuted, strict=True)
    ]
    assert 0.5 < np.mean([m for f, m in moved if f]) < 0.95
    assert 0.5 < np.mean([m for f, m in moved if not f]) < 0.95
    # a free prompt keeps its split: it takes labels of its own split only
    for split in ("train", "test"):
        real = Counter(
            r["label"] for r in shipped_rows if not r["frame_id"] and r["split"] == split
        )
        perm = Counter(r["label"] for r in permuted if not r["frame_id"] and r["split"] == split)
        assert real == perm


def test_permutation_is_seeded(shipped_rows):
    labels = lambda rows: [r["label"] for r in rows]  # noqa: E731
    assert labels(permute_labels(shipped_rows, 1)) == labels(permute_labels(shipped_rows, 1))
    assert labels(permute_labels(shipped_rows, 1)) != labels(permute_labels(shipped_rows, 2))
    assert labels(shipped_rows) != labels(permute_labels(shipped_rows, 1))


def test_build_prompt_dataset_permutes_after_the_real_split(tiny_rows):
    permuted = build_prompt_dataset(
        TESTS / "data" / "prompts.jsonl",
        TESTS / "data" / "frames.jsonl",
        LABELS,
        test_fraction=0.5,
        seed=0,
        permute_seed=3,
    )
    assert [r["sample_id"] for r in permuted] == [r["sample_id"] for r in tiny_rows]
    assert [r["split"] for r in permuted] == [r["split"] for r in tiny_rows]
    assert [r["label"] for r in permuted] == [r["label"] for r in permute_labels(tiny_rows, 3)]


# ---------------------------------------------------------------- relabelled store
def _store(path, rows, d=8):
    store.ignore_unstable_dtype_warning()
    root = zarr.open_group(path, mode="w", zarr_format=3)
    for key, column in (
        ("sample", "sample_id"),
        ("label", "label"),
        ("split", "split"),
        ("frame_id", "frame_id"),
    ):
        root.create_array(
            key, data=np.array([str(r[column]) for r in rows]), dimension_names=["sample"]
        )
    x = np.random.default_rng(0).normal(size=(len(rows), 3, d)).astype(np.float16)
    arr = root.create_array(
        "blocks.0.hook_resid_post",
        shape=x.shape,
        chunks=(16, 3, d),
        dtype="float16",
        dimension_names=["sample", "position", "d_model"],
    )
    arr[...] = x
    store.write_manifest(path, kind="activations", params={"model": "m"})
    return x


def test_relabel_store_links_arrays_and_rewrites_only_the_copy(tmp_path, tiny_rows):
    src, dst = tmp_path / "real.zarr", tmp_path / "perm.zarr"
    x = _store(src, tiny_rows)
    permuted = permute_labels(tiny_rows, 5)
    counts = stats.relabel_store(src, dst, permuted)
    files = [p.relative_to(src) for p in src.rglob("*") if p.is_file()]
    chunks = [p for p in files if p.name != "zarr.json" and p.parts[0] != "label"]
    assert counts["linked"] == len(chunks)  # every chunk file (the manifest is in zarr.json)
    assert counts["copied"] == len(files) - counts["linked"]
    assert list(store.read_array(dst, "label")) == [r["label"] for r in permuted]
    assert list(store.read_array(src, "label")) == [r["label"] for r in tiny_rows]
    np.testing.assert_array_equal(store.read_array(dst, "blocks.0.hook_resid_post"), x)
    chunk = next(
        p
        for p in (src / "blocks.0.hook_resid_post").rglob("*")
        if p.name != "zarr.json" and p.is_file()
    )
    twin = dst / chunk.relative_to(src)
    assert os.stat(chunk).st_ino == os.stat(twin).st_ino  # hard link, no copy
    meta = src / "blocks.0.hook_resid_post" / "zarr.json"
    assert os.stat(meta).st_ino != os.stat(dst / meta.relative_to(src)).st_ino
    assert not store.has_manifest(dst)  # the rule writes its own
    ds = store.open_dataset(dst)
    assert list(ds["label"].values) == [r["label"] for r in permuted]


def test_relabel_store_refuses_another_dataset(tmp_path, tiny_rows):
    src = tmp_path / "real.zarr"
    _store(src, tiny_rows)
    other = [dict(r) for r in permute_labels(tiny_rows, 5)]
    other[0]["split"] = "test" if other[0]["split"] == "train" else "train"
    with pytest.raises(stats.CalibrationError, match="split coordinate differs"):
        stats.relabel_store(src, tmp_path / "perm.zarr", other)


# ---------------------------------------------------------------- calibration table
def _effects(phase, metric, comparison, design, ps, fdr=None, dataset="d.permuted1", test="t"):
    ps = np.asarray(ps, dtype=float)
    return pd.DataFrame(
        {
            "phase": phase,
            "dataset": dataset,
            "metric": metric,
            "comparison": comparison,
            "design": design,
            "test": test,
            "p": ps,
            "p_fdr_bh": ps if fdr is None else np.asarray(fdr, dtype=float),
        }
    )


def _cp(k, n, level=0.95):
    """Clopper-Pearson from the beta quantiles (independent of binomtest)."""
    a = 1 - level
    low = 0.0 if k == 0 else beta.ppf(a / 2, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(1 - a / 2, k + 1, n - k)
    return low, high


def test_calibration_table_rates_and_clopper_pearson_intervals():
    rng = np.random.default_rng(0)
    labels_ok = np.r_[np.full(3, 0.01), rng.uniform(0.06, 1, 97)]  # 3 of 100 below .05
    effects = pd.concat(
        [
            _effects(
                "vectors",
                "proj",
                "vs_baseline",
                "independent",
                labels_ok,
                fdr=np.r_[0.04, np.ones(99)],
            ),
            _effects(
                "vectors", "proj", "vs_baseline", "independent", [0.5, 0.5], dataset="d.permuted2"
            ),
            _effects(
                "patching",
                "recovery",
                "vs_baseline",
                "paired",
                np.r_[np.full(30, 1e-4), np.full(10, 0.5)],
            ),
            _effects("patching", "recovery", "vs_random_control", "paired", np.full(10, 0.3)),
            _effects(
                "patching", "recovery", "vs_random_control", "paired", [1.0, 1.0], test="none"
            ),
            _effects("sae", "auroc", "vs_baseline", "rank", [np.nan, 0.2]),
        ],
        ignore_index=True,
    )
    table = stats.calibration_table(effects, alpha=0.05, max_rate=0.08)
    assert list(table.columns) == stats.CALIBRATION_COLUMNS
    t = table.set_index(["phase", "comparison"])

    vec = t.loc[("vectors", "vs_baseline")]
    assert (vec.null, vec.n, vec.n_p, vec.n_fdr, vec.n_datasets) == ("labels", 102, 3, 1, 2)
    assert vec.rate_p == pytest.approx(3 / 102) and vec.rate_fdr == pytest.approx(1 / 102)
    assert (vec.rate_p_ci_low, vec.rate_p_ci_high) == pytest.approx(_cp(3, 102))
    assert (vec.rate_fdr_ci_low, vec.rate_fdr_ci_high) == pytest.approx(_cp(1, 102))
    assert vec.rate_p_ci_high == pytest.approx(0.0836, abs=5e-4)  # 3/102: not shown <= 8%
    assert not vec["pass"] and vec.verdict == "inconclusive"

    patch = t.loc[("patching", "vs_baseline")]
    assert (patch.null, patch.n, patch.n_p) == ("intervention", 40, 30)
    assert (patch.rate_p_ci_low, patch.rate_p_ci_high) == pytest.approx(_cp(30, 40))
    assert patch["pass"] is None and patch.verdict == "rejections_expected"  # not a test

    control = t.loc[("patching", "vs_random_control")]
    assert (control.null, control.n, control.n_p, control.n_untested) == ("labels", 10, 0, 2)
    # 0 of 10: the upper bound is 1 - 0.025 ** (1 / 10) = 0.308
    assert control.rate_p_ci_high == pytest.approx(1 - 0.025 ** (1 / 10))
    assert control.verdict == "inconclusive"

    sae = t.loc[("sae", "vs_baseline")]
    assert (sae.null, sae.n, sae.n_p) == ("labels", 1, 0)  # the NaN p is no test
    assert stats.failing_phases(table) == ["patching", "sae", "vectors"]


def test_zero_of_enough_tests_passes():
    # 0 of 45: the exact upper bound 1 - 0.025 ** (1 / 45) = 0.0787 <= 0.08
    table = stats.calibration_table(
        _effects("alignment", "overlap", "vs_shuffled", "permutation", np.full(45, 0.4))
    )
    assert table["pass"].item() and table.verdict.item() == "calibrated"
    assert table.rate_p_ci_high.item() == pytest.approx(1 - 0.025 ** (1 / 45))
    fewer = stats.calibration_table(
        _effects("alignment", "overlap", "vs_shuffled", "permutation", np.full(44, 0.4))
    )
    assert not fewer["pass"].item()
    assert stats.failing_phases(table) == []


def test_calibration_table_names_a_missing_column():
    with pytest.raises(stats.CalibrationError, match=r"lacks columns \['test'\]"):
        stats.calibration_table(
            _effects("a", "m", "vs_baseline", "paired", [0.1]).drop(columns="test")
        )


def test_null_kind():
    assert stats.null_kind("paired", "vs_baseline") == "intervention"
    assert stats.null_kind("paired", "vs_random_control") == "labels"
    assert stats.null_kind("independent", "vs_baseline") == "labels"
    assert stats.null_kind("permutation", "vs_shuffled_pairs") == "pairing"
    assert stats.null_kind("permutation", "vs_permuted_labels") == "labels"
    assert set(stats.NULLS) == {"labels", "intervention", "pairing"}


def test_summary_names_the_phases_failing_calibration(tmp_path):
    effects = pd.concat(
        [
            _effects(
                "patching",
                "recovery",
                "vs_baseline",
                "paired",
                np.r_[np.full(30, 1e-4), np.full(10, 0.5)],
            ),
            _effects("alignment", "overlap", "vs_shuffled", "permutation", np.full(60, 0.4)),
            _effects("steering", "vader", "vs_random_control", "paired", np.full(40, 1e-3)),
            _effects("alignment", "cka", "vs_shuffled_pairs", "permutation", np.full(20, 1e-3)),
        ],
        ignore_index=True,
    )
    path = tmp_path / "calibration.csv"
    stats.calibration_table(effects).to_csv(path, index=False)  # as the summary rule reads it
    table = pd.DataFrame(
        {
            "model": ["m"],
            "phase": ["vectors"],
            "metric": ["proj"],
            "comparison": ["vs_baseline"],
            "p": [0.5],
            "p_fdr_bh": [0.5],
            "estimate": [0.1],
            "condition": ["anger"],
            "layer": [1],
            "site": ["hook_resid_post"],
            "position": ["last"],
            "setting": [""],
            "effect_size": ["hedges_g"],
            "ci_low": [0.0],
            "ci_high": [0.2],
            "n_treatment": [8],
            "n_baseline": [8],
        }
    )
    text = report.summary_markdown(table, calibration=pd.read_csv(path))
    assert "## Calibration (permuted labels)" in text
    assert "Phases failing calibration: steering (a rate shown above 0.05: steering;" in text
    assert "- steering vader, vs random control (labels): 40/40 p < 0.05 = 100% [" in text
    assert "patching recovery" not in text and "alignment cka" not in text  # not tests
    assert "1 of 2 label-null metric x comparisons pass; 2 have an intervention" in text
    assert text.index("## Calibration") < text.index("## m")
    empty = report.summary_markdown(
        table, calibration=pd.DataFrame(columns=stats.CALIBRATION_COLUMNS)
    )
    assert "No calibration copies were run" in empty


# ---------------------------------------------------------------- the calibration run
@pytest.mark.slow
def test_permuted_label_run_on_tiny_models_keeps_fdr_survivors_at_the_nominal_rate(
    tmp_path, tiny_model_dirs
):
    """The calibration target on the tiny test config (~3-5 min on 2 busy cores): every text
    phase runs on the permuted copy, and its tests with a label null keep BH-FDR survivors
    at or below alpha (intervention nulls are expected to reject, see stats.calibration)."""
    from test_workflow import _config, snakemake

    models = {
        "tiny-llama": {"source": str(tiny_model_dirs["llama"]), "per_token_layers": [1]},
        "tiny-gemma3": {"source": str(tiny_model_dirs["gemma3"])},
    }
    config = _config(models, calibration={"seeds": [1]}, sae={"architectures": ["topk"]})
    work = tmp_path / "w"
    snakemake(work, config, "results/stats/calibration.csv")
    # the copy reused the real activations (hard links), with its own labels
    real = work / "results/activations/tiny/tiny-llama.zarr"
    copy = work / "results/activations/tiny.permuted1/tiny-llama.zarr"
    hook = next(
        p
        for p in (real / "blocks.1.hook_resid_post").rglob("*")
        if p.name != "zarr.json" and p.is_file()
    )
    assert os.stat(hook).st_ino == os.stat(copy / hook.relative_to(real)).st_ino
    permuted = store.read_samples(work / "results/datasets/tiny.permuted1")
    assert list(store.read_array(copy, "label")) == [r["label"] for r in permuted]
    assert list(store.read_array(real, "label")) != [r["label"] for r in permuted]

    effects = pd.read_csv(work / "results/stats/calibration/effect_sizes.csv")
    assert set(effects.dataset) == {"tiny.permuted1"}
    assert {"vectors", "patching", "steering", "alignment", "sae"} <= set(effects.phase)
    table = pd.read_csv(work / "results/stats/calibration.csv")
    assert list(table.columns) == stats.CALIBRATION_COLUMNS
    assert set(table.phase) == set(effects.phase)
    labels = table[table.null == "labels"]
    assert labels.n.sum() >= 100
    assert labels.n_fdr.sum() <= 0.05 * labels.n.sum(), labels.to_string()
