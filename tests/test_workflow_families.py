"""The new vision families through the same rules, one snakemake run on tiny random configs:
an HF CLIP vision encoder and the BLIP-2 (Q-Former) and Qwen2-VL (packed patches, M-RoPE)
VLMs on a few builtin photographs, build_images -> prepare_model -> extract_activations ->
directions / probes -> patch_vision / steer_vision -> effect_sizes; describe_model lists the
VLMs' hooks. Causal LMs of every architecture (Qwen3 too) share one backend, which
test_workflow.py runs through the text rules."""

import pandas as pd
import pytest
from test_workflow import snakemake
from tiny_models import build_blip2_folder, build_hf_clip_folder, build_qwen2vl_folder

from circuitflow import store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
ENCODERS, VLMS = ["tiny-hf-clip"], ["tiny-blip2", "tiny-qwen2vl"]
VISION = ["vision.blocks.0.hook_resid_post", "vision.blocks.1.hook_resid_post"]
LM = ["projector.hook_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
# the Q-Former's query tokens reach the phases as a tower of their own (store.TOWERS)
QFORMER = [f"qformer.blocks.{i}.hook_resid_post" for i in range(2) if "qformer" in store.TOWERS]
HOOKS = {  # the residual hooks the phases after extraction use, in forward order
    "tiny-hf-clip": [f"blocks.{i}.hook_resid_post" for i in range(2)],
    "tiny-blip2": [*VISION, *QFORMER, *LM],
    "tiny-qwen2vl": [*VISION, *LM],
}


def _config(root) -> dict:
    images = {
        "sources": ["builtin:astronaut", "builtin:coffee", "builtin:chelsea"],
        "size": 32,
        "work_size": 64,
        "jitter_copies": 2,
        "levels": {"exposure": [-2.0, 2.0], "contrast": [0.5, 2.0]},
    }
    vision_models = {
        "tiny-hf-clip": (build_hf_clip_folder(root / "clip"), "vision-encoder"),
        "tiny-blip2": (build_blip2_folder(root / "blip2"), "vlm"),
        "tiny-qwen2vl": (build_qwen2vl_folder(root / "qwen2vl"), "vlm"),
    }
    return {
        "seed": 0,
        "datasets": {
            "tinyimg": {
                "kind": "images",
                "images": images,
                "labels": [
                    "original",
                    "exposure_low",
                    "exposure_high",
                    "contrast_low",
                    "contrast_high",
                ],
                "baseline": "original",
                "test_fraction": 0.3,
            },
        },  # fmt: skip
        "models": {m: {"source": str(src), "family": f} for m, (src, f) in vision_models.items()},
        "sae": {"images": {"hooks": {m: [] for m in vision_models}}},
        "extract": {"batch_size": 8},
        "vision": {
            "attributes": ["exposure", "contrast"],
            "readouts": ["probe"],
            "readout": 1.0,
            "split": "all",
            "patching": {"layers": "all", "modes": ["direction", "full"], "min_gap": 0.0},
            "steering": {
                "layers": [0.0, 1.0],
                "alphas_relative": [0.5],
                "random_seeds": [0],
                "describe_tokens": 3,
            },
        },  # fmt: skip
        "stats": {"bootstrap_resamples": 200},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-families")
    work = root / "work"
    describe = [f"resources/models/{m}.hooks.csv" for m in VLMS]
    snakemake(work, _config(root), TARGET, *describe)
    return work


@pytest.mark.parametrize("model", ENCODERS + VLMS)
def test_vision_families_reach_effect_sizes(run, model):
    table = pd.read_csv(run / TARGET)
    rows = table[table.model == model]
    assert {"vectors", "patching", "steering"} <= set(rows.phase), model
    acts = run / f"results/activations/tinyimg/{model}.zarr"
    assert store.activation_hooks(acts) == HOOKS[model]
    patch = pd.read_csv(run / f"results/patching/tinyimg/{model}/recovery.csv")
    assert list(dict.fromkeys(patch["hook"])) == HOOKS[model]
    full = patch[(patch["mode"] == "full") & (patch["arm"] == "treatment")]
    error = (full["recovery"] - 1).abs().groupby(full["hook"]).max()
    # a whole site patched gives the good image's readout, except a Q-Former block before the
    # last: the blocks after it still cross-attend to the poor image's features
    crossed = error.index.isin(QFORMER[:-1])
    assert (error[~crossed] < 1e-3).all() and (error[crossed] > 1e-3).all(), error
    steer = pd.read_csv(run / f"results/steering/tinyimg/{model}/samples.csv")
    assert set(steer["hook"]) <= set(HOOKS[model]) and set(steer["readout"]) == {HOOKS[model][-1]}
    if model in VLMS:  # greedy descriptions generated with the image inputs the family needs
        described = pd.read_csv(run / f"results/steering/tinyimg/{model}/descriptions.csv")
        assert described["tokens_unsteered"].str.split().str.len().eq(3).all()


def test_describe_model_lists_the_qformer_and_the_packed_tower(run):
    blip = pd.read_csv(run / "resources/models/tiny-blip2.hooks.csv").set_index("hook")
    assert blip.loc["qformer.blocks.1.hook_resid_post", "n_tokens"] == 4
    assert blip.loc["qformer.blocks.0.hook_cross_attn_out", "d_model"] == 32
    assert blip.loc["blocks.0.hook_resid_post", "n_tokens"] == 4  # the query tokens in the LM
    qwen = pd.read_csv(run / "resources/models/tiny-qwen2vl.hooks.csv").set_index("hook")
    assert qwen.loc["vision.blocks.1.hook_resid_post", ["grid_h", "grid_w"]].tolist() == [32, 32]
    assert qwen.loc["blocks.1.hook_resid_post", "n_tokens"] == 256
