"""Every model family the study names, on tiny random configs built here: Qwen3 through the
TransformerLens bridge; HF CLIP, LLaVA-NeXT / OneVision, BLIP-2 / InstructBLIP (and the
MiniGPT-4 shape: a BLIP-2 folder with a Llama), Qwen2-VL / Qwen2.5-VL and Idefics through the
``hf`` backend. Hook names and shapes, hooks that carry the model's own activations, and
patches that reach the output."""

import numpy as np
import pytest
import torch
from tiny_models import (
    IMAGE_TOKEN_ID,
    build_blip2_folder,
    build_gemma3_multimodal_folder,
    build_hf_clip_folder,
    build_idefics_folder,
    build_llava_folder,
    build_llava_next_folder,
    build_model_folder,
    build_qwen2vl_folder,
)

from circuitflow import models
from circuitflow.core.hooks import attach_modules, main_output, replace_main
from circuitflow.models import hf_families, hf_qwen2vl


# ---------------------------------------------------------------- Qwen3 (text)
@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return build_model_folder("qwen3", tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return models.load_bridge(qwen3_dir)


def _ids(bridge, seed=0, n=10):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.r_[bridge.tokenizer.bos_token_id, rng.integers(3, 300, n)])[None]


def _run(bridge, ids, hooks=()):
    seen = {}

    def keep(name):
        return lambda x, hook: seen.__setitem__(name, x.detach().clone())

    wanted = [(name, keep(name)) for name in ("blocks.1.attn.hook_z", "blocks.1.attn.hook_out",
              "blocks.1.attn.hook_k", "blocks.1.attn.q_norm.hook_out", "blocks.2.hook_resid_post")]  # fmt: skip
    with torch.no_grad(), bridge.hooks(fwd_hooks=[*wanted, *hooks]):
        logits = bridge(ids)
    return logits, seen


def test_qwen3_hook_names_and_shapes(qwen3, qwen3_dir, tmp_path):
    facts = models.prepare_model(models.ModelSpec("tiny-qwen3", str(qwen3_dir)), tmp_path / "m")
    assert (facts["architecture"], facts["backend"]) == ("Qwen3ForCausalLM", "transformer_lens")
    assert (facts["n_layers"], facts["n_heads"], facts["n_key_value_heads"]) == (3, 4, 2)
    listed = {r["hook"] for r in models.describe_model(tmp_path / "m", qwen3, "tiny-qwen3")}
    for i in range(3):
        for site in ("hook_resid_pre", "hook_resid_post", "attn.hook_z", "attn.hook_result",
                     "attn.hook_out", "attn.q_norm.hook_out", "attn.k_norm.hook_out"):  # fmt: skip
            assert f"blocks.{i}.{site}" in listed
    ids = _ids(qwen3)
    logits, seen = _run(qwen3, ids)
    T = ids.shape[1]
    assert logits.shape == (1, T, 400)
    assert seen["blocks.1.attn.hook_z"].shape == (1, T, 4, 16)
    assert seen["blocks.1.attn.hook_k"].shape == (1, T, 2, 16)  # per KV head (GQA)
    assert seen["blocks.1.attn.q_norm.hook_out"].shape[-1] == 16  # RMSNorm per head
    assert seen["blocks.2.hook_resid_post"].shape == (1, T, 64)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(logits, hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_qwen3_heads_sum_to_attention_output(qwen3):
    _, seen = _run(qwen3, _ids(qwen3))
    z = seen["blocks.1.attn.hook_z"][0]  # [T, head, d_head]
    per_head = torch.einsum("thd,hdm->thm", z, qwen3.W_O[1].detach())
    assert per_head.shape == (z.shape[0], 4, 64)
    torch.testing.assert_close(per_head.sum(1), seen["blocks.1.attn.hook_out"][0], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert per_head.abs().amax(dim=(0, 2)).min() > 0  # every head contributes


def test_qwen3_patching_a_whole_site_reproduces_clean_logits(qwen3):
    clean, corrupted = _ids(qwen3, 0), _ids(qwen3, 1)
    clean_logits, clean_seen = _run(qwen3, clean)
    corrupted_logits, _ = _run(qwen3, corrupted)
    assert (clean_logits - corrupted_logits).abs().max() > 1e-2
    good = clean_seen["blocks.2.hook_resid_post"]
    patched, _ = _run(qwen3, corrupted, [("blocks.2.hook_resid_post", lambda x, hook: good)])
    torch.testing.assert_close(patched, clean_logits, rtol=1e-5, atol=1e-5)


def test_a_multimodal_gemma3_checkpoint_as_causal_lm_is_its_language_model(tmp_path):
    """gemma-3-12b-it's layout (Gemma3ForConditionalGeneration) asked for as a causal LM: the
    prepared folder is its text LM, and the bridge gives the checkpoint's own text logits."""
    from transformers import Gemma3ForConditionalGeneration

    src = build_gemma3_multimodal_folder(tmp_path / "src")
    spec = models.ModelSpec("tiny-gemma3-mm", str(src), family="causal-lm")
    facts = models.prepare_model(spec, tmp_path / "m")
    assert (facts["architecture"], facts["n_layers"], facts["d_model"]) == (
        "Gemma3ForCausalLM",
        3,
        64,
    )
    bridge = models.load_bridge(tmp_path / "m")
    full = Gemma3ForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16)
    full = full.float().eval()  # the prepared folder's bf16 weights, run in float32
    ids = _ids(bridge)
    with torch.no_grad():
        torch.testing.assert_close(bridge(ids), full(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_unsupported_causal_lm_architecture_is_one_line():
    hf_families.check_causal_lm("m", "Qwen3ForCausalLM")  # served: no error
    with pytest.raises(models.ModelSourceError) as err:
        hf_families.check_causal_lm("m", "FancyNewForCausalLM")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "model 'm': config.json architectures entry 'FancyNewForCausalLM' is not a supported "
        "family; supported: the TransformerLens bridge's"
    )
    assert "Qwen3ForCausalLM" in message and "BLIP-2 (Blip2ForConditionalGeneration)" in message


# ---------------------------------------------------------------- vision families
BUILDERS = {
    "hf-clip": (build_hf_clip_folder, {}, "vision-encoder"),
    "llava-next": (build_llava_next_folder, {}, "vlm"),
    "llava-onevision": (build_llava_next_folder, {"onevision": True}, "vlm"),
    "blip2": (build_blip2_folder, {}, "vlm"),
    "minigpt4-shape": (build_blip2_folder, {"lm": "llama"}, "vlm"),
    "instructblip": (build_blip2_folder, {"instruct": True}, "vlm"),
    "qwen2-vl": (build_qwen2vl_folder, {}, "vlm"),
    "qwen2.5-vl": (build_qwen2vl_folder, {"v25": True}, "vlm"),
    "idefics": (build_idefics_folder, {}, "vlm"),
}
V = [f"vision.blocks.{i}.hook_resid_post" for i in range(2)]
LM = [f"blocks.{i}.hook_resid_post" for i in range(2)]
QF = ["qformer.blocks.0.hook_cross_attn_out", "qformer.blocks.0.hook_resid_post",
      "qformer.blocks.1.hook_cross_attn_out", "qformer.blocks.1.hook_resid_post"]  # fmt: skip
# (hook, kind, n_tokens, d_model) in forward order
TILES = [
    *[(h, "projector", 5 * (16 + 1), 32) for h in V],  # CLS + patches of every tile
    ("projector.hook_out", "projector", 80, 48),
    *[(h, "lm", 16 + 8 * (8 + 1), 48) for h in LM],
]  # base tile + 8 rows of 8 + newline
QFORMER = [
    *[(h, "vit", 16, 32) for h in V],
    *[(h, "projector", 4, 32) for h in QF],
    ("projector.hook_out", "projector", 4, 48),
    *[(h, "lm", 4, 48) for h in LM],
]
QWEN = [
    *[(h, "projector", 32 * 32, 32) for h in V],
    ("projector.hook_out", "projector", 256, 48),
    *[(h, "lm", 256, 48) for h in LM],
]  # 64 px / 2 px patches; 16 x 16 merged tokens
EXPECTED = {
    "hf-clip": [(f"blocks.{i}.hook_resid_post", "vit", 16, 32) for i in range(2)],
    "llava-next": TILES,
    "llava-onevision": [(h, k, 5 * 16 if h in V else n, d) for h, k, n, d in TILES],  # SigLIP
    "blip2": QFORMER,
    "minigpt4-shape": QFORMER,
    "instructblip": [r for r in QFORMER if r[0] != "qformer.blocks.1.hook_cross_attn_out"],
    "qwen2-vl": QWEN,
    "qwen2.5-vl": QWEN,
    "idefics": [
        *[(h, "vit", 16, 32) for h in V],
        *[
            (f"perceiver.blocks.{i}.{s}", "projector", 4, 32)
            for i in range(2)
            for s in ("hook_attn_out", "hook_mlp_out")
        ],
        ("projector.hook_out", "projector", 4, 32),
        *[
            (f"blocks.{i}.{s}", "lm", 1, 48)
            for i in range(2)
            for s in ("hook_cross_attn_out", "hook_gated_xattn_out", "hook_resid_post")
        ],
    ],  # fmt: skip
}
IMAGE_SIZE = {"llava-next": 64, "llava-onevision": 64, "qwen2-vl": 64, "qwen2.5-vl": 64}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """{family: (prepared folder, facts, VisionModel)} for every tiny vision family."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, (build, kwargs, family) in BUILDERS.items():
        src = build(root / f"{name}-src", **kwargs)
        facts = models.prepare_model(models.ModelSpec(name, str(src), family=family), root / name)
        out[name] = (root / name, facts, models.load_vision_model(root / name, name))
    return out


def _images(n=2, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _logits(vm, pixels, edits=()):
    with torch.no_grad(), attach_modules(vm.points(), list(edits), prepend=True):
        out = vm.forward(pixels)
    return out.logits if hasattr(out, "logits") else main_output(out.last_hidden_state)


def _capture(vm, pixels, hooks):
    seen = {}
    grab = [(h, lambda out, h=h: seen.__setitem__(h, main_output(out).detach().clone()))
            for h in hooks]  # fmt: skip
    _logits(vm, pixels, grab)
    return seen


@pytest.mark.parametrize("family", list(BUILDERS))
def test_describe_lists_each_familys_hooks_and_shapes(prepared, family):
    folder, facts, vm = prepared[family]
    assert facts["backend"] == "hf"
    assert facts["image_size"] == IMAGE_SIZE.get(family, 32)
    assert (facts["mean"], facts["std"]) == ([0.5] * 3, [0.25] * 3)  # preprocessor_config.json
    rows = models.describe_model(folder, vm, family)
    got = [(r["hook"], r["kind"], r["n_tokens"], r["d_model"]) for r in rows]
    assert got == EXPECTED[family]
    assert vm.hook_names() == [r[0] for r in EXPECTED[family]]


CUTS = {  # hooks every path from the image to the output goes through
    "llava-next": ["vision.blocks.1.hook_resid_post", "projector.hook_out", "blocks.1.hook_resid_post"],
    "blip2": ["vision.blocks.1.hook_resid_post", "qformer.blocks.1.hook_resid_post",
              "projector.hook_out", "blocks.1.hook_resid_post"],
    "idefics": ["vision.blocks.1.hook_resid_post", "projector.hook_out", "blocks.1.hook_resid_post"],
}  # fmt: skip
CUTS["llava-onevision"] = CUTS["qwen2-vl"] = CUTS["qwen2.5-vl"] = CUTS["llava-next"]
CUTS["minigpt4-shape"] = CUTS["instructblip"] = CUTS["blip2"]


@pytest.mark.parametrize("family", [f for f in BUILDERS if f != "hf-clip"])
def test_patching_a_cut_with_other_images_gives_their_logits(prepared, family):
    """Whole-site patches: image A's pass with a hook's output taken from image B's pass gives
    B's logits (views write back exactly what they hand out; edits reach the LM), and
    patching A's own activations back in changes nothing."""
    _, _, vm = prepared[family]
    size = vm.image_size
    a, b = vm.preprocess(_images(2, 0, size)), vm.preprocess(_images(2, 1, size))
    la, lb = _logits(vm, a), _logits(vm, b)
    assert (la - lb).abs().max() > 1e-4  # the image reaches the output
    good = _capture(vm, b, CUTS[family])
    own = _capture(vm, a, CUTS[family])
    for hook in CUTS[family]:
        patched = _logits(vm, a, [(hook, lambda out, g=good[hook]: replace_main(out, g))])
        torch.testing.assert_close(patched, lb, rtol=1e-4, atol=1e-5, msg=hook)
        same = _logits(vm, a, [(hook, lambda out, g=own[hook]: replace_main(out, g))])
        torch.testing.assert_close(same, la, rtol=1e-5, atol=1e-6, msg=hook)


def test_hf_clip_hooks_are_the_encoder_layers(prepared, tmp_path):
    from transformers import CLIPModel, CLIPVisionModel

    folder, facts, vm = prepared["hf-clip"]
    assert facts["architecture"] == "CLIPVisionModel" and facts["n_blocks"] == 2
    pixels = vm.preprocess(_images())
    seen = _capture(vm, pixels, vm.hook_names())
    with torch.no_grad():
        hidden = CLIPVisionModel.from_pretrained(folder)(pixels, output_hidden_states=True)
    for i in range(2):
        assert seen[f"blocks.{i}.hook_resid_post"].shape == (2, 17, 32)  # CLS + 4 x 4 patches
        torch.testing.assert_close(seen[f"blocks.{i}.hook_resid_post"], hidden.hidden_states[i + 1])
    # a full CLIPModel folder (hub CLIP ViT-L/14's layout) is prepared as its image tower
    src = build_hf_clip_folder(tmp_path / "full-src", full=True)
    spec = models.ModelSpec("clip-full", str(src), family="vision-encoder")
    assert models.prepare_model(spec, tmp_path / "full")["architecture"] == "CLIPVisionModel"
    full = models.load_vision_model(tmp_path / "full", "clip-full")
    got = _capture(full, pixels, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    with torch.no_grad():
        tower = CLIPModel.from_pretrained(src).vision_model
        torch.testing.assert_close(got, tower(pixels, output_hidden_states=True).hidden_states[2])


def test_llava_next_tiles_are_the_base_image_and_its_crops(prepared):
    _, facts, vm = prepared["llava-next"]
    assert (facts["tile_size"], facts["n_tiles"]) == (32, 5)
    pixels = vm.preprocess(_images(1, size=64))
    tiles = vm.module.inputs(pixels)["pixel_values"]
    assert tiles.shape == (1, 5, 3, 32, 32)
    torch.testing.assert_close(tiles[0, 2], pixels[0, :, :32, 32:])  # row 0, column 1
    torch.testing.assert_close(tiles[0, 3], pixels[0, :, 32:, :32])


def test_qformer_query_tokens_come_before_the_text(prepared):
    _, facts, vm = prepared["blip2"]
    assert facts["num_query_tokens"] == 4
    ids = vm.lm_inputs(2)["input_ids"]
    assert ids.tolist() == [[IMAGE_TOKEN_ID] * 4 + [1]] * 2  # queries, then BOS
    pixels = vm.preprocess(_images())
    with torch.no_grad():  # BLIP-2's own prompt-free generate builds the same layout
        own = vm.module.generate(pixel_values=pixels, max_new_tokens=3, do_sample=False)
        ours = vm.module.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=3,
                                  do_sample=False)  # fmt: skip
    assert torch.equal(own, ours)
    # InstructBLIP's Q-Former also holds the instruction; its hooks keep only the queries
    _, facts, ivm = prepared["instructblip"]
    n_text = len(facts["qformer_input_ids"])
    layer = ivm.module.model.qformer.encoder.layer[1]
    seen = {}
    handle = layer.register_forward_hook(lambda m, a, out: seen.setdefault("x", main_output(out)))
    try:
        got = _capture(ivm, ivm.preprocess(_images()), ["qformer.blocks.1.hook_resid_post"])
    finally:
        handle.remove()
    assert seen["x"].shape == (2, 4 + n_text, 32)
    torch.testing.assert_close(got["qformer.blocks.1.hook_resid_post"], seen["x"][:, :4])


def test_qwen2vl_packing_matches_the_image_processor():
    from transformers import Qwen2VLImageProcessor

    pixels = torch.rand(1, 3, 64, 64)
    proc = Qwen2VLImageProcessor(patch_size=2, merge_size=2, temporal_patch_size=2,
                                 do_resize=False, do_rescale=False, do_normalize=False)  # fmt: skip
    expected = proc(images=[pixels[0]], return_tensors="pt")
    assert expected["image_grid_thw"].tolist() == [[1, 32, 32]]
    torch.testing.assert_close(hf_qwen2vl.patchify(pixels, 2, 2, 2), expected["pixel_values"])
    # raster_order undoes the packing: patch (r, c) of a grid holding r * g + c everywhere
    g = 32
    index = torch.arange(g * g, dtype=torch.float32).view(1, 1, g, g)
    image = index.repeat_interleave(2, 2).repeat_interleave(2, 3).expand(1, 3, -1, -1)
    packed = hf_qwen2vl.patchify(image, 2, 2, 2)[:, 0]
    assert torch.equal(packed[hf_qwen2vl.raster_order(g, 2)], torch.arange(g * g).float())


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_vision_tokens_are_in_raster_order(prepared, family):
    """The merger applied by hand to each 2 x 2 block of the raster-ordered last-block tokens
    gives the projector hook's tokens, and those are transformers' own image features."""
    _, _, vm = prepared[family]
    pixels = vm.preprocess(_images(size=64))
    seen = _capture(vm, pixels, ["vision.blocks.1.hook_resid_post", "projector.hook_out"])
    x = seen["vision.blocks.1.hook_resid_post"].view(2, 16, 2, 16, 2, 32)  # [B, R, mh, C, mw, d]
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(2, 256, 4, 32)
    merger = vm.module.model.model.visual.merger
    with torch.no_grad():
        by_hand = merger.mlp(merger.ln_q(windows).reshape(2, 256, 128))
        inputs = vm.module.image_inputs(pixels, vm.lm_inputs(2)["input_ids"])
        own = vm.module.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output
    torch.testing.assert_close(by_hand, seen["projector.hook_out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(list(own)).view(2, 256, 48), seen["projector.hook_out"])


def test_qwen2vl_passes_get_mrope_positions(prepared):
    _, _, vm = prepared["qwen2-vl"]
    pixels = vm.preprocess(_images(size=64))
    ids = vm.lm_inputs(2)["input_ids"]
    assert ids.shape == (2, 258) and (ids == vm.image_token_id).sum(1).tolist() == [256, 256]
    extra = vm.module.image_inputs(pixels, ids)
    pos = vm.module.position_ids(ids, extra)  # [3 (t, h, w), B, seq]
    assert pos.shape == (3, 2, 258)
    r, c = np.divmod(np.arange(256), 16)
    np.testing.assert_array_equal(pos[:, 0, 1:257].numpy(), np.stack([np.ones(256), 1 + r, 1 + c]))
    assert pos[:, 0, 257].tolist() == [17, 17, 17]  # the text after the image: max + 1
    with torch.no_grad():
        ours = vm.module(pixels, input_ids=ids).logits
        own = vm.module.model(input_ids=ids, **extra).logits  # transformers computes them
        flat = vm.module.model(input_ids=ids, position_ids=torch.arange(258)[None].expand(2, -1),
                               **extra).logits  # fmt: skip
    torch.testing.assert_close(ours, own)
    assert (ours - flat).abs().max() > 1e-4  # 1-D positions would be a different model


def test_unsupported_architecture_names_it_and_the_families(tiny_model_dirs, tmp_path):
    spec = models.ModelSpec("m", str(tiny_model_dirs["gpt2"]), family="vlm")
    with pytest.raises(models.ModelSourceError) as err:
        models.prepare_model(spec, tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "model 'm': config.json architectures entry 'GPT2LMHeadModel' is not a supported "
        "family; supported: CLIP vision (CLIPVisionModel | CLIPVisionModelWithProjection | "
        "CLIPModel), "
    )
    for name in ("LLaVA-NeXT", "BLIP-2", "InstructBLIP", "Qwen2-VL", "Idefics"):
        assert name in message
    assert not (tmp_path / "out").exists()
    llava = build_llava_folder(tmp_path / "llava")
    with pytest.raises(models.ModelSourceError) as err:
        models.prepare_model(models.ModelSpec("v", str(llava), family="vision-encoder"),
                             tmp_path / "out2")  # fmt: skip
    assert str(err.value) == (
        "model 'v': LlavaForConditionalGeneration is a vlm (LLaVA-1.5), not a vision-encoder; "
        "set models.v.family: vlm"
    )


@pytest.mark.parametrize("family", ["qwen2-vl", "idefics", "llava-next", "instructblip"])
def test_greedy_generation_continues_the_full_forward_pass(prepared, family):
    """``generate`` on stimulus pixels (what steer_vision's descriptions call) picks, at each
    step, the argmax of a full forward pass over the image inputs and the tokens so far (M-RoPE
    text positions after the image, Idefics' image mask over the new tokens)."""
    from circuitflow.steering.vision import generate_description

    _, _, vm = prepared[family]
    pixels = vm.preprocess(_images(2, 0, vm.image_size))
    new = torch.as_tensor(generate_description(vm, pixels, max_new_tokens=3))
    ids = vm.lm_inputs(2)["input_ids"]
    for step in range(3):
        with torch.no_grad():
            logits = vm.module(pixel_values=pixels, input_ids=ids).logits[:, -1]
        assert torch.equal(logits.argmax(-1), new[:, step]), step
        ids = torch.cat([ids, new[:, step : step + 1]], dim=1)


def test_image_statistics_come_from_either_processor_file(tmp_path):
    import json

    fam = hf_families.registered_families()["LlavaForConditionalGeneration"]
    clip = {"mean": list(hf_families.OPENAI_CLIP_MEAN), "std": list(hf_families.OPENAI_CLIP_STD)}
    assert hf_families.image_stats(tmp_path, fam) == clip
    nested = {"image_processor": {"image_mean": [0.1] * 3, "image_std": [0.2] * 3}}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))  # transformers 5
    assert hf_families.image_stats(tmp_path, fam) == {"mean": [0.1] * 3, "std": [0.2] * 3}


def test_blip2_with_an_encoder_decoder_lm_is_refused_in_one_line(tmp_path):
    from tiny_models import TINY_VISION
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    t5 = T5Config(d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2, vocab_size=128)
    qformer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2, "encoder_hidden_size": 32}  # fmt: skip
    cfg = Blip2Config(vision_config=TINY_VISION, qformer_config=qformer,
                      text_config=t5.to_dict(), num_query_tokens=2, image_token_id=100)  # fmt: skip
    Blip2ForConditionalGeneration(cfg).save_pretrained(tmp_path / "src")
    spec = models.ModelSpec("flan", str(tmp_path / "src"), family="vlm")
    with pytest.raises(models.ModelSourceError) as err:
        models.prepare_model(spec, tmp_path / "out")
    assert str(err.value) == (
        "model 'flan': Blip2ForConditionalGeneration: an encoder-decoder language model (t5) is "
        "not supported; use a decoder-only variant (OPT, Llama/Vicuna)"
    )


@pytest.mark.parametrize("family", [f for f in BUILDERS if f != "hf-clip"])
def test_vlm_lm_heads_sum_to_the_attention_output(prepared, family):
    """The per-head split that VLM head patching uses (``hook_z`` = the output projection's
    input as heads x d_head): per-head outputs through W_O sum to the attention output."""
    from circuitflow.patching.vision_heads import head_sites

    _, _, vm = prepared[family]
    sites = head_sites(vm, "blocks.1.hook_resid_post")
    assert [(s.layer, s.n_heads, s.d_head) for s in sites] == [(0, 4, 12), (1, 4, 12)]
    seen = {}
    handles = [
        h
        for s in sites
        for h in (
            s.out_proj.register_forward_pre_hook(
                lambda m, a, k=s.layer: seen.__setitem__(("z", k), a[0].detach())
            ),
            s.out_proj.register_forward_hook(
                lambda m, a, out, k=s.layer: seen.__setitem__(("out", k), out.detach())
            ),
        )
    ]
    try:
        _logits(vm, vm.preprocess(_images(2, 0, vm.image_size)))
    finally:
        for h in handles:
            h.remove()
    for s in sites:
        z = seen["z", s.layer].view(*seen["z", s.layer].shape[:2], s.n_heads, s.d_head)
        w = s.out_proj.weight.detach().view(-1, s.n_heads, s.d_head)  # [d_model, head, d_head]
        per_head = torch.einsum("bthd,mhd->bthm", z, w)
        bias = 0.0 if s.out_proj.bias is None else s.out_proj.bias.detach()
        torch.testing.assert_close(per_head.sum(2) + bias, seen["out", s.layer], rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
        assert per_head.abs().amax(dim=(0, 1, 3)).min() > 0  # every head contributes
