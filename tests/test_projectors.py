"""Assembled VLMs (frozen encoder -> projector -> frozen LM) from tiny random parts built
in-process: projector shapes, training, save/load, the registered backend's hooks, caption
likelihoods, retrieval and descriptions."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from tiny_models import build_clip_folder, build_llava_folder, build_model_folder

from circuitflow import extract, models, store
from circuitflow.core.errors import ConfigError
from circuitflow.models.assembled_vlm import AssembledVLM, AssembledVLMError, choose_image_token
from circuitflow.models.projectors import (
    build_projector,
    n_parameters,
    output_tokens,
    projector_names,
)
from circuitflow.projectors import (
    ProjectorTrainConfig,
    attribute_word_accuracy,
    caption_nll,
    greedy_descriptions,
    rank_truth,
    retrieval,
    score_captions,
    siglip_score,
    train_projector,
)
from circuitflow.workflow import schema_defaults

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIDES = ("left", "right")
PARAMS = {"n_out": 4, "hidden": 32, "depth": 1}
FAST = {"steps": 30, "batch_size": 6, "lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.0}


def _stimuli(size=32):
    """uint8 images of a colored square on the left or right, and their captions."""
    ims, caps, levels = [], [], []
    for color, rgb in COLORS.items():
        for side in SIDES:
            im = np.full((size, size, 3), 128, dtype=np.uint8)
            x0 = 2 if side == "left" else size // 2 + 2
            im[8:24, x0 : x0 + 12] = rgb
            ims.append(im)
            caps.append(f"a {color} square on the {side}")
            levels.append(color)
    return np.stack(ims), caps, levels


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(tiny open_clip encoder folder, tiny Llama folder, a placeholder id no caption uses)."""
    src = build_clip_folder(tmp_path_factory.mktemp("clip-src"))
    enc = tmp_path_factory.mktemp("clip")
    spec = models.ModelSpec("tiny-clip", str(src), family="vision-encoder", backend="open_clip")
    models.prepare_model(spec, enc)
    lm = build_model_folder("llama", tmp_path_factory.mktemp("llama"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # lm_head x8: peaked predictions like a trained LM's (a random tiny LM is near uniform,
    # so what comes before a token barely changes its likelihood)
    model = AutoModelForCausalLM.from_pretrained(str(lm))
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(lm)
    tok = AutoTokenizer.from_pretrained(str(lm))
    _, caps, _ = _stimuli()
    used = {i for c in caps + ["a photo of"] for i in tok.encode(c, add_special_tokens=False)}
    free = min(set(range(3, len(tok))) - used)
    return enc, lm, free


def _vlm(parts, name="mlp2l", seed=0, **params):
    enc, lm, free = parts
    return AssembledVLM.from_parts(
        enc,
        lm,
        projector=name,
        encoder_hook="blocks.2.hook_resid_post",
        image_size=32,
        projector_params={**PARAMS, **params},
        image_token_id=free,
        seed=seed,
    )


# ---------------------------------------------------------------- projectors
@pytest.mark.parametrize("name", ["linear", "mlp2l", "c_abstractor", "perceiver"])
def test_each_projector_maps_tokens_to_the_configured_shape(name):
    torch.manual_seed(0)
    proj = build_projector(name, d_vision=24, d_lm=40, n_in=16, **PARAMS)
    out = proj(torch.randn(3, 16, 24))
    n_out = 16 if name in ("linear", "mlp2l") else 4
    assert out.shape == (3, n_out, 40) == (3, proj.n_out, 40)
    assert output_tokens(name, 16, **PARAMS) == n_out
    assert n_parameters(proj) == sum(p.numel() for p in proj.parameters()) > 0


def test_projector_registry_grid_and_errors():
    assert projector_names() == ("linear", "mlp2l", "c_abstractor", "perceiver")
    wide = build_projector("c_abstractor", 8, 12, n_in=16, grid=(2, 8), **PARAMS)
    assert wide(torch.randn(1, 16, 8)).shape == (1, 4, 12)
    assert build_projector("linear", 8, 12, n_in=6).grid == (1, 6)
    with pytest.raises(ConfigError, match="not one of"):
        build_projector("qformer", 8, 12, 16)
    with pytest.raises(ConfigError, match="unknown parameter 'width'"):
        build_projector("mlp2l", 8, 12, 16, width=3)
    with pytest.raises(ConfigError, match="square"):
        build_projector("c_abstractor", 8, 12, 16, n_out=5)
    with pytest.raises(ConfigError, match="square"):
        build_projector("c_abstractor", 8, 12, 6)
    with pytest.raises(ConfigError, match="divisible"):
        build_projector("perceiver", 8, 12, 16, hidden=30)


def test_train_config_defaults_are_the_schema_defaults():
    defaults = schema_defaults("projectors")
    for f in dataclasses.fields(ProjectorTrainConfig):
        if f.name in defaults:
            assert f.default == defaults[f.name], f.name
    cfg = ProjectorTrainConfig.from_config(defaults, seed=3)
    assert cfg.seed == 3 and cfg.steps == defaults["steps"]
    with pytest.raises(ConfigError, match="projectors.steps"):
        ProjectorTrainConfig(steps=0)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["linear", "mlp2l", "c_abstractor", "perceiver"])
def test_each_projector_trains_the_caption_loss_down(parts, name):
    ims, caps, _ = _stimuli()
    vlm = _vlm(parts, name)
    before = caption_nll(vlm, ims, caps).mean()
    lm_before = {k: v.clone() for k, v in vlm.lm.state_dict().items()}
    vlm, curve = train_projector(vlm, ims, caps, ProjectorTrainConfig(**FAST))
    after = caption_nll(vlm, ims, caps).mean()
    assert after < before - 0.8, (before, after)  # measured: drops of 1.3-1.6 nats
    assert [r["step"] for r in curve] == list(range(1, 31))
    assert curve[-1]["tokens"] > curve[0]["tokens"] > 0 and curve[-1]["seconds"] > 0
    assert all(torch.equal(v, lm_before[k]) for k, v in vlm.lm.state_dict().items())
    assert not any(p.requires_grad for p in vlm.vision.parameters())


def test_training_is_seeded_and_reproducible(parts):
    ims, caps, _ = _stimuli()
    cfg = ProjectorTrainConfig(**{**FAST, "steps": 5})
    a, curve_a = train_projector(_vlm(parts, "perceiver"), ims, caps, cfg)
    b, curve_b = train_projector(_vlm(parts, "perceiver"), ims, caps, cfg)
    c, curve_c = train_projector(_vlm(parts, "perceiver", seed=1), ims, caps, cfg)
    sa, sb, sc = (m.projector.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in curve_a] == [r["loss"] for r in curve_b]
    assert not torch.equal(sa["latents"], sc["latents"])


def test_lora_trains_only_the_adapter_and_reloads(parts, tmp_path):
    pytest.importorskip("peft")
    ims, caps, _ = _stimuli()
    vlm = _vlm(parts, "linear")
    base = {k: v.clone() for k, v in vlm.lm.state_dict().items()}
    cfg = ProjectorTrainConfig(**{**FAST, "steps": 4, "lora": True, "lora_rank": 2})
    vlm, _ = train_projector(vlm, ims, caps, cfg)
    state = vlm.lm.get_base_model().state_dict()
    lora = [k for k in state if "lora_B" in k]
    assert lora and any(state[k].abs().sum() > 0 for k in lora)  # lora_B starts at 0
    frozen = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    vlm.save(tmp_path / "vlm")
    assert (tmp_path / "vlm" / "lora" / "adapter_config.json").exists()
    again = AssembledVLM.load(tmp_path / "vlm")
    batch = vlm.lm_inputs(2)
    pixels = vlm.preprocess(ims[:2])
    with torch.no_grad():
        assert torch.allclose(vlm(pixels, **batch), again(pixels, **batch), atol=1e-6)


# ---------------------------------------------------------------- save, load, backend
def test_saved_vlm_reloads_with_identical_logits(parts, tmp_path):
    ims, caps, _ = _stimuli()
    vlm, _ = train_projector(
        _vlm(parts, "c_abstractor"), ims, caps, ProjectorTrainConfig(**{**FAST, "steps": 3})
    )
    out = vlm.save(tmp_path / "vlm")
    names = {p.name for p in out.iterdir()}
    assert {"vlm_config.json", "projector.safetensors", models.FACTS_FILE} <= names
    assert "tokenizer_config.json" in names
    again = AssembledVLM.load(out)
    batch = vlm.caption_batch(caps[:3])
    pixels = vlm.preprocess(ims[:3])
    with torch.no_grad():
        a = vlm(pixels, batch["input_ids"], batch["attention_mask"])
        b = again(pixels, batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a, b)
    facts = models.model_facts(out)
    assert (facts["backend"], facts["family"], facts["n_image_tokens"]) == ("assembled", "vlm", 4)


def test_registered_backend_hooks_capture_vision_projector_and_lm(parts, tmp_path):
    ims, _, _ = _stimuli()
    saved = _vlm(parts, "perceiver").save(tmp_path / "saved")
    spec = models.ModelSpec("tiny-vlm", str(saved), family="vlm")
    assert models.resolve_backend(spec).name == "assembled"
    prepared = tmp_path / "prepared"
    models.prepare_model(spec, prepared)
    vm = models.load_vision_model(prepared, "tiny-vlm")
    assert vm.backend == "assembled" and vm.image_token_id == parts[2]
    table = {r["hook"]: r for r in models.describe(vm)}
    assert list(table) == [
        "vision.blocks.0.hook_resid_post",
        "vision.blocks.1.hook_resid_post",
        "vision.blocks.2.hook_resid_post",
        "projector.hook_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    shape = {k: (r["kind"], r["n_tokens"], r["d_model"]) for k, r in table.items()}
    assert shape["vision.blocks.2.hook_resid_post"] == ("vit", 16, 32)
    assert shape["projector.hook_out"] == ("projector", 4, 64)
    assert shape["blocks.2.hook_resid_post"] == ("lm", 4, 64)
    assert table["vision.blocks.1.hook_resid_post"]["site"] == "vision.hook_resid_post"
    # an edit of the projector's tokens reaches the LM's image positions
    pixels = vm.preprocess(ims[:2])
    cap = models.Capture(vm, ["blocks.0.hook_resid_post"])
    plain = cap.run(pixels)[0]["blocks.0.hook_resid_post"]
    edit = {
        "projector.hook_out": lambda out: models.edit_tokens("projector", out, torch.zeros_like)
    }
    zeroed = cap.run(pixels, edit)[0]["blocks.0.hook_resid_post"]
    assert not np.allclose(plain, zeroed)
    # the shared image extraction runs on it unchanged
    rows = [
        {"sample_id": f"s{i}", "label": "original", "frame_id": f"f{i}", "split": "train",
         "attribute": "original", "level": 0.0, "image_index": i}
        for i in range(4)
    ]  # fmt: skip
    out = tmp_path / "acts.zarr"
    info = extract.extract_images_to_zarr(vm, rows, ims[:4], out, progress=False)
    assert info["shapes"]["projector.hook_out"] == [4, 3, 64]
    assert "blocks.2.hook_resid_post" in store.activation_hooks(out)


def test_backend_claims_only_assembled_folders(parts, tmp_path):
    enc, lm, _ = parts
    llava = build_llava_folder(tmp_path / "llava")
    assert models.resolve_backend(models.ModelSpec("l", str(llava), family="vlm")).name == "hf"
    spec = models.ModelSpec("c", str(enc), "vision-encoder")
    assert models.resolve_backend(spec).name == "open_clip"
    with pytest.raises(models.ModelSourceError, match="vlm_config.json"):
        models.prepare_model(
            models.ModelSpec("x", str(lm), family="vlm", backend="assembled"), tmp_path / "x"
        )


def test_a_missing_encoder_hook_or_placeholder_is_named(parts):
    with pytest.raises(AssembledVLMError, match="encoder_hook: 'blocks.9.hook_out'"):
        AssembledVLM.from_parts(
            parts[0], parts[1], "linear", "blocks.9.hook_out", 32, image_token_id=parts[2]
        )
    with pytest.raises(AssembledVLMError, match="no unused special token"):
        AssembledVLM.from_parts(parts[0], parts[1], "linear", "blocks.2.hook_resid_post", 32)


def test_the_placeholder_is_an_unused_special_token(parts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(parts[1]))
    rows = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<unused0>", "<image>", "<unused1>"]})
    assert choose_image_token(tok, len(tok)) == tok.convert_tokens_to_ids("<image>")
    tok2 = AutoTokenizer.from_pretrained(str(parts[1]))
    tok2.add_special_tokens({"additional_special_tokens": ["<unused0>", "<unused1>"]})
    assert choose_image_token(tok2, len(tok2)) == tok2.convert_tokens_to_ids("<unused1>")
    with pytest.raises(AssembledVLMError, match="no unused special token"):
        choose_image_token(tok2, rows)  # the added tokens have no embedding rows


def test_cnn_encoder_tokens_are_the_feature_grid(parts, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    import json

    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    enc = tmp_path / "effnet"
    enc.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, enc / "model.safetensors")
    facts = {"backend": "torch", "family": "vision-encoder", "image_size": 64, "n_blocks": 17,
             "mean": [0.5] * 3, "std": [0.5] * 3, "architecture": "random efficientnet-lite0"}  # fmt: skip
    (enc / models.FACTS_FILE).write_text(json.dumps(facts))
    vlm = AssembledVLM.from_parts(
        enc, parts[1], "linear", "blocks.10.hook_out", 64, image_token_id=parts[2]
    )
    ims, _, _ = _stimuli(64)
    tokens = vlm.encode_images(ims[:2])
    assert tokens.shape == (2, 16, 112)  # 64 px / stride 16 = 4 x 4 grid, 112 channels
    hooks = vlm.hook_points()
    assert [h.name for h in hooks][:2] == ["vision.blocks.0.hook_out", "vision.blocks.1.hook_out"]
    assert hooks[10].name == "vision.blocks.10.hook_out" and hooks[11].name == "projector.hook_out"
    with torch.no_grad():
        x = vlm.preprocess(ims[:2])
        feats = {}
        h = vlm.vision._blocks[10].register_forward_hook(lambda m, a, o: feats.setdefault("o", o))
        vlm.vision.extract_features(x)
        h.remove()
    assert torch.equal(tokens, feats["o"].flatten(2).transpose(1, 2))


# ---------------------------------------------------------------- evaluation
def test_uniform_lm_gives_the_known_caption_nll(parts):
    ims, caps, _ = _stimuli()
    vlm = _vlm(parts, "linear")
    with torch.no_grad():
        vlm.lm.lm_head.weight.zero_()  # logits 0: every token has probability 1 / vocab
    vocab = vlm.lm.config.vocab_size
    nll = caption_nll(vlm, ims, caps)
    np.testing.assert_allclose(nll, math.log(vocab), rtol=1e-6)
    tokens = vlm.encode_images(ims)
    total, count = score_captions(vlm, tokens, caps)
    n_words = [len(vlm.tokenizer.encode(c, add_special_tokens=False)) + 1 for c in caps]
    assert count.tolist() == n_words  # caption tokens + EOS, no padding
    np.testing.assert_allclose(total, -np.array(n_words) * math.log(vocab), rtol=1e-6)


def test_caption_scores_do_not_depend_on_the_batch_padding(parts):
    ims, caps, _ = _stimuli()
    vlm = _vlm(parts, "mlp2l")
    tokens = vlm.encode_images(ims)
    texts = [caps[0], caps[1] + " and a much longer tail of extra words here"]
    alone, _ = score_captions(vlm, tokens[:1], texts[:1], batch_size=1)
    padded, _ = score_captions(vlm, tokens[:2], texts, batch_size=2)
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-5)


def test_rank_truth_oracle_and_ties():
    true = np.array([5.0, 1.0, 2.0])
    distract = np.array([[1.0, 2.0], [0.0, -1.0], [2.0, 0.0]])
    correct, rank = rank_truth(true, distract)
    assert correct.tolist() == [1, 1, 0] and rank.tolist() == [1, 1, 2]  # a tie is wrong
    oracle, _ = rank_truth(np.zeros(6), -np.ones((6, 2)))
    assert oracle.mean() == 1.0


def test_retrieval_with_an_image_blind_projector_is_exactly_at_chance(parts):
    """Zero projector weights: every image gives the same tokens, so each caption's likelihood
    is the same for all images; with one image per color and the other colors as distractors,
    the most likely caption is the truth of exactly one image in three."""
    ims, caps, levels = _stimuli()
    keep = [i for i in range(len(caps)) if caps[i].endswith("left")]
    vlm = _vlm(parts, "linear")
    with torch.no_grad():
        for p in vlm.projector.parameters():
            p.zero_()
    distract = [[caps[i].replace(levels[i], c) for c in COLORS if c != levels[i]] for i in keep]
    res = retrieval(vlm, ims[keep], [caps[i] for i in keep], distract)
    assert res.chance == pytest.approx(1 / 3)
    assert res.accuracy == pytest.approx(1 / 3)
    by_caption = {}
    for i, t in enumerate([caps[i] for i in keep]):
        by_caption.setdefault(t, []).append(res.logprob_true[i])
    for i, row in enumerate(distract):
        for j, t in enumerate(row):
            by_caption.setdefault(t, []).append(res.logprob_distractors[i, j])
    assert all(np.ptp(v) < 1e-4 for v in by_caption.values())
    with pytest.raises(ConfigError, match="same number"):
        retrieval(vlm, ims[:2], caps[:2], [["x"], ["y", "z"]])


def test_greedy_generation_matches_the_full_forward(parts):
    ims, _, _ = _stimuli()
    vlm = _vlm(parts, "mlp2l")
    pixels = vlm.preprocess(ims[:2])
    prompt = torch.tensor(vlm.tokenizer.encode("a photo of", add_special_tokens=False))
    ids = torch.cat([vlm.lm_inputs(2)["input_ids"], prompt.expand(2, -1)], 1)
    seq = vlm.generate(ids, pixel_values=pixels, max_new_tokens=5, eos_token_id=[])
    assert seq.shape == (2, ids.shape[1] + 5) and torch.equal(seq[:, : ids.shape[1]], ids)
    with torch.no_grad():
        for t in range(ids.shape[1], seq.shape[1]):
            logits = vlm(pixels, seq[:, :t], torch.ones_like(seq[:, :t]))
            assert torch.equal(logits[:, -1].argmax(-1), seq[:, t])
    texts = greedy_descriptions(vlm, ims[:2], prompt="a photo of", max_new_tokens=5)
    new = vlm.tokenizer.batch_decode(seq[:, ids.shape[1] :], skip_special_tokens=True)
    assert texts == [t.strip() for t in new]
    with pytest.raises(AssembledVLMError, match="image placeholders"):
        vlm(pixels, ids[:, 2:], torch.ones_like(ids[:, 2:]))


def test_attribute_word_accuracy_counts_only_the_true_word():
    descr = ["A Red square.", "a blue and red thing", "greenish blob", "the green one", ""]
    acc = attribute_word_accuracy(descr, ["red", "blue", "green", "green", "red"], list(COLORS))
    assert acc.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="vocabulary"):
        attribute_word_accuracy(["x"], ["purple"], list(COLORS))


def test_siglip_score_of_an_open_clip_model(tmp_path):
    import open_clip

    assert siglip_score(None, None, torch.zeros(1, 3, 32, 32), ["x"]) is None
    folder = build_clip_folder(tmp_path / "clip")
    model = open_clip.create_model("local-dir:" + str(folder)).eval()

    def tokenizer(texts):
        return torch.tensor([[(ord(c) % 60) + 1 for c in t[:8].ljust(8)] for t in texts])

    pixels = torch.randn(3, 3, 32, 32)
    texts = ["a red square", "a blue square", "a red square"]
    score = siglip_score(model, tokenizer, pixels[[0, 0, 0]], texts, batch_size=2)
    assert score.shape == (3,) and ((score > 0) & (score < 1)).all()
    assert score[0] == pytest.approx(score[2], abs=1e-6) and score[0] != score[1]
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(pixels[:1]), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts[:1])), dim=-1)
        want = torch.sigmoid(model.logit_scale.exp() * (img * txt).sum())
    assert score[0] == pytest.approx(float(want), rel=1e-5)
