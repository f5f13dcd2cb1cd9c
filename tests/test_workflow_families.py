"""Every model family group through the same rules, on tiny random configs built here.

One image run: an HF CLIP vision encoder and the BLIP-2 (Q-Former), Qwen2-VL (packed patches,
M-RoPE), LLaVA-NeXT and LLaVA-OneVision (anyres tiles) and Idefics (perceiver resampler, gated
cross-attention) VLMs on a few builtin photographs, build_images -> prepare_model ->
extract_activations -> directions / probes -> patch_vision / steer_vision -> effect_sizes;
describe_model lists the VLMs' hooks. One text run: Qwen3 on the tests/data prompts and frames
through extraction, vectors, attribution and exact patching, steering and the statistics."""

import pandas as pd
import pytest
import torch
from test_workflow import _config as text_config
from test_workflow import snakemake
from tiny_models import (
    build_blip2_folder,
    build_hf_clip_folder,
    build_idefics_folder,
    build_llava_next_folder,
    build_model_folder,
    build_qwen2vl_folder,
)

from circuitflow import models, store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
ENCODERS = ["tiny-hf-clip"]
VLMS = ["tiny-blip2", "tiny-qwen2vl", "tiny-llava-next", "tiny-llava-onevision", "tiny-idefics"]
VISION = ["vision.blocks.0.hook_resid_post", "vision.blocks.1.hook_resid_post"]
LM = ["projector.hook_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
# the Q-Former's query tokens reach the phases as a tower of their own (store.TOWERS)
QFORMER = [f"qformer.blocks.{i}.hook_resid_post" for i in range(2) if "qformer" in store.TOWERS]
CROSSED = {"tiny-blip2": QFORMER[:-1], "tiny-idefics": LM[1:-1]}
HOOKS = {  # the residual hooks the phases after extraction use, in forward order
    "tiny-hf-clip": [f"blocks.{i}.hook_resid_post" for i in range(2)],
    "tiny-blip2": [*VISION, *QFORMER, *LM],
    "tiny-qwen2vl": [*VISION, *LM],
    "tiny-llava-next": [*VISION, *LM],
    "tiny-llava-onevision": [*VISION, *LM],
    "tiny-idefics": [*VISION, *LM],
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
        "tiny-llava-next": (build_llava_next_folder(root / "llava-next"), "vlm"),
        "tiny-llava-onevision": (
            build_llava_next_folder(root / "llava-onevision", onevision=True),
            "vlm",
        ),
        "tiny-idefics": (build_idefics_folder(root / "idefics"), "vlm"),
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
    # a whole site patched gives the good image's readout, except where later layers still
    # cross-attend to the poor image: a Q-Former block before the last, and Idefics' LM layers
    # before the last (each has a gated cross-attention to the image features before it)
    crossed = error.index.isin(CROSSED.get(model, []))
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
    nxt = pd.read_csv(run / "resources/models/tiny-llava-next.hooks.csv").set_index("hook")
    assert nxt.loc["vision.blocks.0.hook_resid_post", "n_tokens"] == 5 * (16 + 1)  # CLS + tiles
    assert nxt.loc["blocks.0.hook_resid_post", "n_tokens"] == 16 + 8 * (8 + 1)  # + row newlines
    one = pd.read_csv(run / "resources/models/tiny-llava-onevision.hooks.csv").set_index("hook")
    assert one.loc["vision.blocks.0.hook_resid_post", "n_tokens"] == 5 * 16  # SigLIP: no CLS
    idefics = pd.read_csv(run / "resources/models/tiny-idefics.hooks.csv").set_index("hook")
    assert idefics.loc["perceiver.blocks.1.hook_attn_out", "n_tokens"] == 4  # the latents
    assert idefics.loc["blocks.1.hook_gated_xattn_out", "d_model"] == 48


# ---------------------------------------------------------------- Qwen3 through the text rules
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-qwen3")
    src = build_model_folder("qwen3", root / "qwen3")
    work = root / "work"
    config = text_config({"tiny-qwen3": {"source": str(src), "per_token_layers": [1]}})
    snakemake(work, config, TARGET, "resources/models/tiny-qwen3.hooks.csv")
    return work


def test_qwen3_reaches_effect_sizes_through_the_text_rules(text_run):
    table = pd.read_csv(text_run / TARGET)
    assert set(table.model) == {"tiny-qwen3"}
    assert {"vectors", "patching", "steering"} <= set(table.phase)
    acts = text_run / "results/activations/tiny/tiny-qwen3.zarr"
    sites = ("hook_resid_pre", "hook_resid_post")
    assert store.activation_hooks(acts) == [f"blocks.{i}.{s}" for i in range(3) for s in sites]
    described = pd.read_csv(text_run / "resources/models/tiny-qwen3.hooks.csv").set_index("hook")
    assert described.loc["blocks.2.hook_resid_post", ["shape", "d_model"]].tolist() == [
        "pos x 64",
        64,
    ]
    assert described.loc["blocks.2.attn.hook_z", "shape"] == "pos x 4 x 16"  # [pos, head, d_head]
    assert described.loc["blocks.2.attn.hook_k", "shape"] == "pos x 2 x 16"  # per KV head (GQA)
    assert described.loc["blocks.2.attn.q_norm.hook_scale", "shape"] == "4 x pos x 1"


def test_qwen3_patching_the_whole_difference_is_exact(text_run):
    """The phrase block (all the tokens that differ) patched at layer 0 gives the other
    prompt's metric, both ways."""
    grid = pd.read_csv(text_run / "results/patching/tiny/tiny-qwen3/validation_residual.csv")
    whole = grid[(grid.layer == 0) & grid.phrase_equal & (grid.position == "phrase_block")]
    assert len(whole) > 0
    denoised = whole[whole.direction == "clean_to_corrupted"]
    noised = whole[whole.direction == "corrupted_to_clean"]
    assert (denoised.lean_patched - denoised.lean_clean).abs().max() < 1e-4
    assert (noised.lean_patched - noised.lean_corrupted).abs().max() < 1e-4
    heads = pd.read_csv(text_run / "results/patching/tiny/tiny-qwen3/validation_heads.csv")
    per_site = heads.groupby(["layer", "head"]).size()  # every head of every layer, exactly
    assert per_site.index.tolist() == [(layer, h) for layer in range(3) for h in range(4)]


def test_qwen3_prepared_heads_sum_to_the_attention_output(text_run):
    bridge = models.load_bridge(text_run / "resources/models/tiny-qwen3")
    seen = {}
    keep = [(h, lambda x, hook, h=h: seen.__setitem__(h, x.detach()))
            for h in ("blocks.1.attn.hook_z", "blocks.1.attn.hook_out")]  # fmt: skip
    ids = torch.tensor([[bridge.tokenizer.bos_token_id, 5, 17, 40, 99, 7]])
    with torch.no_grad(), bridge.hooks(fwd_hooks=keep):
        bridge(ids)
    per_head = torch.einsum("thd,hdm->thm", seen["blocks.1.attn.hook_z"][0], bridge.W_O[1])
    assert per_head.shape == (6, 4, 64)
    torch.testing.assert_close(per_head.sum(1), seen["blocks.1.attn.hook_out"][0], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
