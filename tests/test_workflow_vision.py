"""The vision track through the same rules: a tiny random open_clip ViT and a tiny random LLaVA
(local folders built in-process) on a few builtin photographs, build_images -> prepare_model ->
extract_activations -> directions / probes -> patch_vision / steer_vision -> effect_sizes."""

import pandas as pd
import pytest
from test_workflow import snakemake
from tiny_models import build_clip_folder, build_llava_folder

from circuitflow import stats, store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
CLIP_HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]
LLAVA_HOOKS = [
    "vision.blocks.0.hook_resid_post",
    "vision.blocks.1.hook_resid_post",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_post",
]


def _config(clip, llava) -> dict:
    return {
        "seed": 0,
        "datasets": {
            "tinyimg": {
                "kind": "images",
                "images": {
                    "sources": ["builtin:astronaut", "builtin:coffee", "builtin:chelsea"],
                    "size": 32,
                    "work_size": 64,
                    "jitter_copies": 2,
                    "levels": {"exposure": [-2.0, 2.0], "contrast": [0.5, 2.0]},
                },
                "labels": [
                    "original",
                    "exposure_low",
                    "exposure_high",
                    "contrast_low",
                    "contrast_high",
                ],
                "baseline": "original",
                "test_fraction": 0.3,
            }
        },
        "models": {
            "tiny-clip": {"source": str(clip), "family": "vision-encoder", "backend": "open_clip"},
            "tiny-llava": {"source": str(llava), "family": "vlm", "backend": "hf"},
        },
        "extract": {"batch_size": 8},
        "vision": {
            "attributes": ["exposure", "contrast"],
            # the tiny CLIP's 64-token text tower cannot embed real prompts; the CLIP prompt
            # readout is tested in test_vision_patching.py with a full-vocabulary tiny CLIP
            "readouts": ["probe"],
            "readout": 1.0,
            "split": "all",
            "patching": {"layers": "all", "modes": ["direction", "full"], "min_gap": 0.0},
            "steering": {
                "layers": [0.0, 1.0],
                "alphas_relative": [0.5],
                "random_seeds": [0],
                "describe_tokens": 4,
            },
        },
        "stats": {"bootstrap_resamples": 200},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-vision")
    config = _config(build_clip_folder(root / "clip-src"), build_llava_folder(root / "llava-src"))
    work = root / "work"
    snakemake(work, config, TARGET)
    return work


def test_hooks_and_shapes_of_each_model(run):
    clip = store.open_dataset(run / "results/activations/tinyimg/tiny-clip.zarr")
    assert store.activation_hooks(run / "results/activations/tinyimg/tiny-clip.zarr") == CLIP_HOOKS
    n = len(store.read_samples(run / "results/datasets/tinyimg"))
    assert n == 3 * (2 + 4)  # photos x (originals + variants)
    assert clip["blocks.2.hook_resid_post"].shape == (n, 3, 32)
    llava = run / "results/activations/tinyimg/tiny-llava.zarr"
    assert set(LLAVA_HOOKS) <= set(store.activation_hooks(llava))
    ds = store.open_dataset(llava)
    assert ds["vision.blocks.1.hook_resid_post"].shape[-1] == 32
    assert ds["blocks.1.hook_resid_post"].shape[-1] == 48


@pytest.mark.parametrize(
    ("model", "hooks"), [("tiny-clip", CLIP_HOOKS), ("tiny-llava", LLAVA_HOOKS)]
)
def test_patching_rows_per_hook_with_full_patch_recovery_one(run, model, hooks):
    t = pd.read_csv(run / f"results/patching/tinyimg/{model}/recovery.csv")
    assert list(dict.fromkeys(t["hook"])) == hooks  # forward order, up to the readout
    assert set(t["readout"]) == {hooks[-1]}
    assert set(t["attribute"]) == {"exposure", "contrast"}
    full = t[(t["mode"] == "full") & (t["arm"] == "treatment")]
    assert len(full) == len(hooks) * 3 * 4  # hooks x photos x (2 attributes x 2 levels)
    assert (full["recovery"] - 1).abs().max() < 1e-3
    assert {"treatment", "control"} == set(t[t["mode"] == "direction"]["arm"])
    assert store.verify(run / f"results/patching/tinyimg/{model}") == []


@pytest.mark.parametrize("model", ["tiny-clip", "tiny-llava"])
def test_steering_rows_per_hook_alpha_and_direction(run, model):
    t = pd.read_csv(run / f"results/steering/tinyimg/{model}/samples.csv")
    assert len(set(t["hook"])) == 2
    assert set(t["direction"]) == {"attribute", "random:0"}
    assert len(t) == 2 * 2 * 12  # hooks x directions x pairs
    assert t["readout_shift"].notna().all()
    assert store.verify(run / f"results/steering/tinyimg/{model}") == []
    described = run / f"results/steering/tinyimg/{model}/descriptions.csv"
    assert described.exists() == (model == "tiny-llava")  # VLMs only
    if described.exists():
        d = pd.read_csv(described)
        assert set(d["hook"]) == {"vision.blocks.0.hook_resid_post"}  # the tower's steered hook
        assert len(d) == 2 * 12 and d["description_changed"].between(0, 1).all()
        assert d["tokens_unsteered"].str.split().str.len().eq(4).all()


def test_effect_sizes_have_vision_patching_and_steering_rows_for_each_model(run):
    table = pd.read_csv(run / TARGET)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    for phase in ("probes", "patching", "steering"):
        part = table[table.phase == phase]
        assert set(part.model) == {"tiny-clip", "tiny-llava"}, phase
    patching = table[table.phase == "patching"]
    assert set(patching.metric) == {"recovery"}
    assert {"vs_baseline", "vs_random_control"} <= set(patching.comparison)
    steering = table[table.phase == "steering"]
    assert set(steering.condition) == {"exposure", "contrast"}
    metrics = steering.groupby("model").metric.unique().map(set).to_dict()
    assert metrics == {
        "tiny-clip": {"readout_shift"},
        "tiny-llava": {"readout_shift", "description_changed"},
    }
