"""The projector study through the rules on tiny parts built in-process: a tiny random
open_clip ViT encoder and a tiny random Llama, a caption dataset of builtin photos ->
train_projector (every architecture) -> evaluate_projector -> compare_projectors ->
select_projector -> the image phases inside the selected VLM -> effect_sizes."""

import json

import pandas as pd
import pytest
from test_workflow import snakemake
from tiny_models import build_clip_folder, build_model_folder

from circuitflow import models, projectors, store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
PHOTOS = [
    "builtin:astronaut",
    "builtin:coffee",
    "builtin:chelsea",
    "builtin:rocket",
    "builtin:flower",
    "builtin:china",
]


def _config(clip, lm) -> dict:
    return {
        "seed": 0,
        "datasets": {
            "tinyimg": {
                "kind": "images",
                "images": {
                    "sources": PHOTOS[:3],
                    "size": 32,
                    "work_size": 64,
                    "jitter_copies": 2,
                    "levels": {"exposure": [-2.0, 2.0]},
                },
                "labels": ["original", "exposure_low", "exposure_high"],
                "baseline": "original",
                "test_fraction": 0.3,
            },
            "tinycap": {
                "kind": "captions",
                "images": {"sources": PHOTOS, "size": 32, "work_size": 64},
                "captions": {"views": 2, "attributes": ["exposure", "color_cast"]},
                "labels": ["low", "mid", "high"],
                "baseline": "mid",
                "test_fraction": 0.5,
            },
        },
        "models": {
            "tiny-clip": {"source": str(clip), "family": "vision-encoder", "backend": "open_clip"},
            "tiny-lm": {"source": str(lm), "family": "causal-lm"},
        },
        "projectors": {
            "dataset": "tinycap",
            "encoder": "tiny-clip",
            "lm": "tiny-lm",
            "encoder_hook": "blocks.1.hook_resid_post",
            "image_size": 32,
            "n_out": 4,
            "hidden": 16,
            "depth": 1,
            "steps": 3,
            "batch_size": 4,
            "describe_tokens": 3,
            "score_model": "tiny-clip",  # its text tower has open_clip's full BPE vocabulary
        },
        "extract": {"batch_size": 8},
        "vision": {
            "attributes": ["exposure"],
            "readouts": ["probe"],
            "readout": 1.0,
            "split": "all",
            "patching": {"layers": "all", "modes": ["direction"], "min_gap": 0.0},
            "steering": {"layers": [0.0, 1.0], "alphas_relative": [0.5], "random_seeds": [0]},
        },
        "stats": {"bootstrap_resamples": 200},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-projectors")
    lm = build_model_folder("llama", root / "lm-src", extra_special=("<image>",))
    config = _config(build_clip_folder(root / "clip-src", vocab_size=49408), lm)
    work = root / "work"
    snakemake(work, config, TARGET)
    return work


def test_every_architecture_trains_to_a_loadable_vlm(run):
    for arch in projectors.ARCHITECTURES:
        folder = run / store.MODEL_DIR.format(model=f"vlm-{arch}-s0")
        curve = pd.read_csv(folder / store.TRAINING_CURVE)
        assert list(curve.step) == [1, 2, 3]
        assert not store.verify(folder)
        vlm = models.load_model(folder, f"vlm-{arch}-s0")
        names = vlm.hook_names()
        assert "projector.hook_out" in names
        assert any(n.startswith("vision.blocks.") for n in names)
        assert any(n.startswith("blocks.") and n.endswith("hook_resid_post") for n in names)


def test_evaluation_rows_per_test_image_with_mismatched_null(run):
    rows = store.read_samples(run / store.DATASET_DIR.format(dataset="tinycap"))
    n_test = sum(r["split"] == "test" for r in rows)
    for arch in projectors.ARCHITECTURES:
        out = run / store.PROJECTOR_DIR.format(dataset="tinycap", model=f"vlm-{arch}-s0")
        table = pd.read_csv(out / "evaluation.csv")
        assert len(table) == n_test
        assert (table.source != table.mismatched_sample_id.str.split(".").str[0]).all()
        for attribute in ("exposure", "color_cast"):
            assert set(table[f"retrieval_{attribute}"]) <= {0, 1}
            assert table[f"chance_{attribute}"].to_numpy() == pytest.approx(1 / 3, abs=1e-6)
        m = pd.read_csv(out / store.MEASUREMENTS_FILE)
        metrics = {"caption_nll", "retrieval_accuracy", "attribute_word_accuracy", "siglip_score"}
        assert set(m.metric) == metrics
        assert set(m.arm) == {"treatment", "baseline"} and set(m.unit_kind) == {"photo"}
        for arm in ("", "mismatched_"):
            assert table[f"{arm}siglip_score"].between(0, 1, inclusive="neither").all()
        score = json.loads((out / "metrics.json").read_text())["siglip_score"]
        assert score["own"] == pytest.approx(table.groupby("source").siglip_score.mean().mean())


def test_comparison_ranks_all_architectures_and_selects_the_largest_image_gain(run):
    out = run / store.PROJECTOR_COMPARISON.format(dataset="tinycap")
    ranking = pd.read_csv(out / "ranking.csv")
    assert set(ranking.architecture) == set(projectors.ARCHITECTURES)
    assert ranking.caption_nll_image_gain.is_monotonic_decreasing
    assert list(ranking["rank"]) == [1, 2, 3, 4]
    n_pairs = len(projectors.ARCHITECTURES) * (len(projectors.ARCHITECTURES) - 1) // 2
    m = pd.read_csv(out / store.MEASUREMENTS_FILE)
    assert m.groupby("metric").setting.nunique().eq(n_pairs).all()
    # only what the image adds is compared: raw NLL or word differences are also text priors
    gains = {"caption_nll_image_gain", "retrieval_image_gain", "attribute_word_image_gain"}
    assert set(m.metric) == gains | {"siglip_image_gain"}
    for row in ranking.itertuples():  # one seed: the evaluation's per-photo means, unchanged
        evaluated = run / store.PROJECTOR_DIR.format(
            dataset="tinycap", model=f"vlm-{row.architecture}-s0"
        )
        retrieval = json.loads((evaluated / "metrics.json").read_text())["retrieval"]
        mean = sum(v["accuracy"] for v in retrieval.values()) / len(retrieval)
        assert row.retrieval_accuracy == pytest.approx(mean, abs=1e-5)
    best = (out / "best.txt").read_text().strip()
    assert best == pd.read_csv(out / "models.csv").iloc[0].model
    chosen = run / store.MODEL_DIR.format(model="vlm-best")
    assert json.loads((chosen / "selection.json").read_text())["selected"] == best


def test_effect_sizes_have_projector_rows_and_image_phases_inside_the_vlm(run):
    table = pd.read_csv(run / TARGET)
    proj = table[table.phase == "projectors"]
    assert set(proj.model) == {
        *(f"vlm-{a}-s0" for a in projectors.ARCHITECTURES),
        "projector_study",
    }
    tested = proj[proj.test != "none"]
    assert len(tested) and tested.test.str.endswith("by photo").all()
    assert (tested.n_treatment == 3).all()  # the 3 test photos are the units
    inside = table[(table.model == "vlm-best") & (table.dataset == "tinyimg")]
    assert {"vectors", "patching", "steering"} <= set(inside.phase)
