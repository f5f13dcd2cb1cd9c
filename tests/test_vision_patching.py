"""Vision patching and steering on constructed inputs: a tiny CNN built in-process with known
weights, readouts and directions (no weights from disk)."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import build_clip_folder

from circuitflow import models, store
from circuitflow import steering as sv
from circuitflow.core import ridge
from circuitflow.models import readout as ro
from circuitflow.patching import vision as pv
from circuitflow.patching import vision_heads as vh
from circuitflow.workflow import schema_defaults

D, SIZE = 6, 8


class TinyCNN(torch.nn.Module):
    """Three 1x1-conv blocks (channels D) after a fixed 3 -> D stem; ``linear`` = identity
    blocks (no nonlinearity), else random convs with tanh."""

    def __init__(self, linear: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, D, 1, bias=False)
        self.stem.weight.data = torch.randn(D, 3, 1, 1, generator=g)
        self.blocks = torch.nn.ModuleList()
        for _ in range(3):
            conv = torch.nn.Conv2d(D, D, 1)
            if linear:
                conv.weight.data = torch.eye(D).view(D, D, 1, 1)
                conv.bias.data.zero_()
            else:
                conv.weight.data = torch.randn(D, D, 1, 1, generator=g) / D**0.5
                conv.bias.data = torch.randn(D, generator=g) * 0.1
            self.blocks.append(torch.nn.Sequential(conv) if linear else _Tanh(conv))

    def extract_features(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class _Tanh(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.tanh(self.conv(x))


def _vm(linear=False) -> models.VisionModel:
    net = TinyCNN(linear).eval()
    hooks = [
        models.HookPoint(store.hook_name(i, "hook_out"), b, "cnn", f"block {i}")
        for i, b in enumerate(net.blocks)
    ]
    return models.VisionModel(
        "tiny-cnn", "torch", net, SIZE, (0.5,) * 3, (0.25,) * 3, hooks, _features
    )


def _features(net, pixels):
    return net.extract_features(pixels)


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _pairs(n_pairs=2, attribute="exposure"):
    # image 2k is the poor variant of photo k, image 2k + 1 its original
    return [
        ro.ImagePair(
            f"p{k}.poor", f"p{k}", attribute, -1.0 if k % 2 == 0 else 1.0, 2 * k, 2 * k + 1
        )
        for k in range(n_pairs)
    ]


def _readout(hook="blocks.2.hook_out", w=None, attribute="exposure"):
    w = np.random.default_rng(1).standard_normal(D) if w is None else np.asarray(w, float)
    return {attribute: ro.Readout(attribute, hook, "mean", w, 0.3, 1.0, 0.9)}


def test_full_patch_reproduces_the_good_readout_at_every_hook():
    vm = _vm(linear=False)
    hooks = vm.hook_names()
    cfg = pv.VisionPatchConfig(attributes=("exposure",), modes=("full",), random_seeds=1)
    rows = pv.run_image_patching(vm, _images(), _pairs(), _readout(), {}, hooks, cfg)
    treated = [r for r in rows if r["arm"] == "treatment"]
    assert len(treated) == len(hooks) * 2
    for r in treated:
        assert r["r_good"] != pytest.approx(r["r_poor"])
        assert r["r_patched"] == pytest.approx(r["r_good"], abs=1e-9, rel=1e-6)
        assert r["recovery"] == pytest.approx(1.0, abs=1e-5)
    control = [r for r in rows if r["arm"] == "control"]
    assert len(control) == len(treated)
    assert all(abs(r["recovery"] - 1.0) > 1e-3 for r in control)


def test_direction_patch_recovers_exactly_what_lies_along_the_direction():
    vm = _vm(linear=True)  # readout = mean-pooled activation . w, blocks are identities
    images = _images()
    runner = models.Runner(vm, "blocks.2.hook_out")
    x = runner.read(runner.pixels(images)).astype(np.float64)
    u = (x[1] - x[0]) / np.linalg.norm(x[1] - x[0])  # pooled difference of pair 0
    w = u  # the readout reads along u only
    cfg = pv.VisionPatchConfig(attributes=("exposure",), modes=("direction",), random_seeds=1)
    args = (vm, images, _pairs(1), _readout(w=w), {("blocks.0.hook_out", "exposure"): u})
    with pytest.raises(pv.VisionPatchingError, match="random_seeds.*control_x"):
        pv.run_image_patching(*args, ["blocks.0.hook_out"], cfg)
    control_x = _control_x(["blocks.0.hook_out"])
    rows = pv.run_image_patching(*args, ["blocks.0.hook_out"], cfg, control_x=control_x)
    (treated,) = [r for r in rows if r["arm"] == "treatment"]
    assert treated["recovery"] == pytest.approx(1.0, abs=1e-4)
    (control,) = [r for r in rows if r["arm"] == "control"]
    assert abs(control["recovery"]) < 1.0


def _control_x(hooks, d=D, n=40, seed=3):
    """Train-split pooled activations per hook for the matched controls: anisotropic."""
    g = np.random.default_rng(seed)
    return {h: g.standard_normal((n, d)) * np.geomspace(4.0, 0.2, d) for h in hooks}


def test_zero_alpha_steering_reproduces_the_unsteered_readout():
    vm = _vm(linear=False)
    cfg = sv.VisionSteerConfig(layers=(0,), alphas_relative=(0.0,), random_seeds=(0,))
    u = np.ones(D) / D**0.5
    rows = sv.run_steering(
        vm,
        _images(),
        _pairs(),
        _readout(),
        {("blocks.0.hook_out", "exposure"): u},
        ["blocks.0.hook_out"],
        {"blocks.0.hook_out": 5.0},
        cfg,
        control_x=_control_x(["blocks.0.hook_out"]),
    )
    assert len(rows) == 2 * 2  # pairs x (attribute + one random direction)
    for r in rows:
        assert r["r_steered"] == pytest.approx(r["r_poor"], abs=1e-12)
        assert r["readout_shift"] == 0.0


def test_planted_direction_steers_the_readout_in_the_planted_sign():
    vm = _vm(linear=True)
    planted = np.zeros(D)
    planted[2] = 1.0
    readout = _readout(w=planted)  # the readout's level is the planted coordinate
    cfg = sv.VisionSteerConfig(layers=(0,), alphas_relative=(0.5,), random_seeds=(0, 1))
    norm = 4.0
    rows = sv.run_steering(
        vm,
        _images(),
        _pairs(2),
        readout,
        {("blocks.0.hook_out", "exposure"): planted},
        ["blocks.0.hook_out"],
        {"blocks.0.hook_out": norm},
        cfg,
        control_x=_control_x(["blocks.0.hook_out"]),
    )
    treated = [r for r in rows if r["arm"] == "treatment"]
    for r in treated:
        # towards the original: level -1 is pushed up the planted axis, level +1 down
        assert np.sign(r["r_steered"] - r["r_poor"]) == -np.sign(r["level"])
        assert r["readout_shift"] == pytest.approx(0.5 * norm, rel=1e-5)
    control = [r for r in rows if r["arm"] == "control"]
    assert all(abs(r["readout_shift"]) < 0.5 * norm for r in control)
    m = sv.image_measurement_rows(rows, "d", "tiny-cnn", "mean")
    assert {r["arm"] for r in m} == {"treatment", "control", "baseline"}
    assert all(r["metric"] == "readout_shift" and r["phase"] == "steering" for r in m)
    assert {r["unit"] for r in m} == {"p0", "p1"} and {r["unit_kind"] for r in m} == {"photo"}
    with pytest.raises(sv.VisionSteeringError, match="random_seeds.*control_x"):
        sv.run_steering(vm, _images(), _pairs(2), readout, {("blocks.0.hook_out", "exposure"):
                        planted}, ["blocks.0.hook_out"], {"blocks.0.hook_out": norm}, cfg)  # fmt: skip


def test_vision_controls_match_the_attribute_directions_variance_and_photos_are_units():
    hooks = ["blocks.0.hook_out", "blocks.1.hook_out"]
    x = _control_x(hooks)
    dirs = {(h, a): np.eye(D)[i] for h in hooks for i, a in enumerate(["exposure", "tone"])}
    controls = ro.matched_controls(x, dirs, (0, 1), hooks)
    assert len(controls) == 2 * 2 * 2
    for (hook, attribute, _seed), u in controls.items():
        want = sv.projected_variance(x[hook], dirs[hook, attribute])
        assert sv.projected_variance(x[hook], u) == pytest.approx(want, rel=0.05)
        assert np.linalg.norm(u) == pytest.approx(1.0)
    assert not np.allclose(controls[hooks[0], "exposure", 0], controls[hooks[0], "exposure", 1])
    # two variants (low, high) of one photo are one unit
    rows = [
        {"layer": 0, "site": "hook_out", "attribute": "exposure", "alpha": 0.5, "readout": "r",
         "arm": arm, "unit": f"p0.{lvl}", "source": "p0", "readout_shift": 1.0}
        for arm in ("treatment", "control") for lvl in ("low", "high")
    ]  # fmt: skip
    m = sv.image_measurement_rows(rows, "d", "tiny-cnn", "mean")
    assert {r["unit"] for r in m} == {"p0"} and len(m) == 6


def test_readout_weights_reproduce_the_probe_on_raw_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)) * [1, 2, 3, 4, 5] + 7
    y = x @ [0.5, -1, 0, 0.2, 0] + rng.standard_normal(40) * 0.1
    w, b = ridge.readout_weights(x, y, alpha=1.0)
    xs, _, _ = ridge.standardize(x, x[:1])
    ws, bs = ridge.ridge_fit(xs, y[:, None], 1.0)
    np.testing.assert_allclose(x @ w + b, (xs @ ws + bs)[:, 0], rtol=1e-10, atol=1e-10)


def test_select_pairs_extreme_levels_of_the_split_against_the_unjittered_original():
    rows = []
    for s, split in (("a", "test"), ("b", "train")):
        for k, (label, attr, level) in enumerate(
            [
                ("original", "original", 0.0),
                ("original", "original", 0.0),
                ("exposure_low", "exposure", -2.0),
                ("exposure_low", "exposure", -1.0),
                ("exposure_high", "exposure", 1.0),
                ("exposure_high", "exposure", 2.0),
            ]
        ):
            rows.append(
                {
                    "sample_id": f"{s}.{k}",
                    "label": label,
                    "frame_id": s,
                    "split": split,
                    "attribute": attr,
                    "level": level,
                    "image_index": len(rows),
                }
            )
    pairs = ro.select_pairs(rows, ["exposure"], split="test", levels="extreme")
    assert [(p.unit, p.level, p.good) for p in pairs] == [("a.2", -2.0, 0), ("a.5", 2.0, 0)]
    assert len(ro.select_pairs(rows, ["exposure"], split="all", levels="all")) == 8
    with pytest.raises(ro.ReadoutError, match="vision.split"):
        ro.select_pairs(rows, ["exposure"], split="val")


def test_attribute_direction_points_from_low_to_high():
    unit = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]])
    norm = np.array([2.0, 1.0, 5.0])
    u = ro.attribute_direction(unit, norm, ["exposure_high", "exposure_low", "tilt"], "exposure")
    np.testing.assert_allclose(u, [1, 0, 0])
    np.testing.assert_allclose(
        ro.attribute_direction(unit, norm, ["a", "b", "tilt"], "tilt"), [0, 1, 0]
    )
    with pytest.raises(ro.ReadoutError, match="contrast"):
        ro.attribute_direction(unit, norm, ["exposure_high", "exposure_low", "tilt"], "contrast")


def test_hook_selection_and_recovery_helpers():
    hooks = [f"blocks.{i}.hook_out" for i in range(17)]
    assert ro.readout_hook(hooks, 0.8) == "blocks.13.hook_out"
    assert ro.readout_hook(hooks, "blocks.4.hook_out") == "blocks.4.hook_out"
    with pytest.raises(ro.ReadoutError, match="vision.readout"):
        ro.readout_hook(hooks, "blocks.40.hook_out")
    assert pv.select_hooks(hooks[:5], "all") == hooks[:5]
    assert pv.select_hooks(hooks[:14], 3) == [hooks[0], hooks[7], hooks[13]]  # 6.5 rounds up
    assert sv.steer_hooks(hooks, hooks[13], [0.0, 0.5, 1.0]) == [hooks[0], hooks[6], hooks[12]]
    with pytest.raises(sv.VisionSteeringError, match="vision.steering.layers"):
        sv.steer_hooks(hooks, hooks[13], [13])
    np.testing.assert_allclose(
        pv.image_recovery([1.0, 0.5, 2.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]), [1, 0.5, np.nan]
    )


def test_edit_tokens_leaves_the_vit_cls_token_alone():
    out = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    new = models.edit_tokens("vit", (out, None), lambda t: t * 0)
    assert isinstance(new, tuple) and new[1] is None
    torch.testing.assert_close(new[0][:, 0], out[:, 0])
    assert new[0][:, 1:].abs().sum() == 0


def test_description_hooks_stay_in_the_vision_tower():
    hooks = ["vision.blocks.0.hook_resid_post", "vision.blocks.1.hook_resid_post"] + [
        f"blocks.{i}.hook_resid_post" for i in range(3)
    ]
    readout = hooks[-1]
    assert sv.description_hooks(hooks, [hooks[0], hooks[3]], readout) == [hooks[0]]
    assert sv.description_hooks(hooks, [hooks[2], hooks[3]], readout) == [hooks[1]]
    assert sv.description_hooks(hooks[2:], hooks[2:4], readout) == []


# ---------------------------------------------------------------- CLIP prompt readout
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """The tiny random open_clip ViT of test_vision.py, with the text vocabulary of open_clip's
    BPE tokenizer (so prompts tokenize into its range); prepared and loaded."""
    src = build_clip_folder(tmp_path_factory.mktemp("tiny-clip-text-src"), vocab_size=49408)
    out = tmp_path_factory.mktemp("tiny-clip-text")
    spec = models.ModelSpec("tiny-clip", str(src), family="vision-encoder", backend="open_clip")
    models.prepare_model(spec, out)
    return out, models.load_vision_model(out, "tiny-clip")


def _clip_images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_clip_prompt_readout_equals_open_clip_by_hand(tiny_clip):
    import open_clip

    model_dir, vm = tiny_clip
    clip = ro.load_clip_readout(
        vm, model_dir, schema_defaults("vision")["clip_prompts"], ["exposure"]
    )
    image = _clip_images(1)
    runner = models.Runner(vm, vm.hooks[-1].name)
    got = clip(runner.embed(runner.pixels(image)), ["exposure"])
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    low, high = schema_defaults("vision")["clip_prompts"]["exposure"]
    with torch.no_grad():
        text = vm.module.encode_text(tokenizer([low, high]), normalize=True)
        img = vm.module.encode_image(vm.preprocess(image), normalize=True)
    want = (img @ text[1] - img @ text[0]).numpy()
    assert got.shape == (1,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_full_patch_of_the_final_hook_recovers_the_clip_readout_exactly(tiny_clip):
    model_dir, vm = tiny_clip
    final = vm.hooks[-1].name
    clip = ro.load_clip_readout(
        vm, model_dir, schema_defaults("vision")["clip_prompts"], ["exposure"]
    )
    w = np.random.default_rng(1).standard_normal(32)
    probe = {"exposure": ro.Readout("exposure", final, "mean", w, 0.3, 1.0, 0.9)}
    cfg = pv.VisionPatchConfig(
        attributes=("exposure",), modes=("full",), random_seeds=1, min_gap=0, clip_min_gap=0
    )
    rows = pv.run_image_patching(vm, _clip_images(), _pairs(), probe, {}, [final], cfg, clip=clip)
    treated = [r for r in rows if r["arm"] == "treatment"]
    assert sorted(r["readout_kind"] for r in treated) == ["clip_prompts"] * 2 + ["probe"] * 2
    for r in treated:
        assert r["r_good"] != pytest.approx(r["r_poor"])
        assert r["recovery"] == pytest.approx(1.0, abs=1e-5)
    m = pv.image_measurement_rows(rows, "d", "tiny-clip", "mean", final)
    assert {r["metric"] for r in m} == {"recovery", "recovery_clip_prompts"}
    assert {r["setting"] for r in m if r["metric"] == "recovery_clip_prompts"} == {
        "mode=full readout=clip_prompts"
    }
    # CLIP readout alone: the runner reads at the last hook, zero steering shifts nothing
    scfg = sv.VisionSteerConfig(layers=(0,), alphas_relative=(0.0,), random_seeds=(0,))
    first = vm.hooks[0].name
    u = np.ones(32) / 32**0.5
    srows = sv.run_steering(
        vm,
        _clip_images(),
        _pairs(),
        {},
        {(first, "exposure"): u},
        [first],
        {first: 1.0},
        scfg,
        clip=clip,
        control_x=_control_x([first], d=32),
    )
    assert {r["readout_kind"] for r in srows} == {"clip_prompts"}
    assert all(r["readout_shift"] == pytest.approx(0.0, abs=1e-12) for r in srows)
    sm = sv.image_measurement_rows(srows, "d", "tiny-clip", "mean")
    assert {r["metric"] for r in sm} == {"readout_shift_clip_prompts"}


def test_clip_readout_config_errors_are_one_line_naming_the_key():
    cfg = pv.VisionPatchConfig.from_config({})
    assert cfg.readout_kinds("torch") == ("probe",)
    assert cfg.readout_kinds("open_clip") == ("probe", "clip_prompts")
    assert cfg.clip_prompts["saturation"] == [
        "a dull, desaturated photo",
        "a vivid, colorful photo",
    ]
    custom = pv.VisionPatchConfig.from_config({"clip_prompts": {"exposure": ["dim", "lit"]}})
    assert custom.clip_prompts["exposure"] == ["dim", "lit"]
    assert custom.clip_prompts["contrast"] == schema_defaults("vision")["clip_prompts"]["contrast"]
    cases = [
        (lambda: pv.VisionPatchConfig.from_config({"readouts": ["clip"]}), "vision.readouts"),
        (
            lambda: pv.VisionPatchConfig.from_config({"clip_prompts": {"exposure": ["a", "a"]}}),
            "vision.clip_prompts.exposure",
        ),
        (
            lambda: pv.VisionPatchConfig.from_config({"clip_prompts": {"exposure": "dark"}}),
            "vision.clip_prompts.exposure",
        ),
        (
            lambda: pv.VisionPatchConfig.from_config({"clip_prompts": {"framing": ["a", "b"]}}),
            "vision.clip_prompts",
        ),
        (
            lambda: pv.VisionPatchConfig(readouts=("clip_prompts",)).readout_kinds("torch"),
            "vision.readouts",
        ),
        (
            lambda: pv.VisionPatchConfig(attributes=("tilt",)).readout_kinds("open_clip"),
            "vision.clip_prompts",
        ),
    ]
    for make, key in cases:
        with pytest.raises(ro.ReadoutError) as err:
            make()
        message = str(err.value)
        assert message.startswith(key) and "\n" not in message, message


def test_patching_measurements_are_per_source_photo():
    """Both poor variants of a photo (the dataset's frame_id) are one unit: unit = the
    source photo, unit_kind photo."""
    vm = _vm(linear=False)
    # photo p0: variants at -1 and +1 (images 0, 1), original image 2; photo p1: 3, 4 -> 5
    pairs = [
        ro.ImagePair(f"p{k}.{s}", f"p{k}", "exposure", float(lv), 3 * k + s, 3 * k + 2)
        for k in range(2)
        for s, lv in ((0, -1.0), (1, 1.0))
    ]
    cfg = pv.VisionPatchConfig(
        attributes=("exposure",), modes=("full",), random_seeds=2, min_gap=0.0
    )
    hooks = vm.hook_names()[:2]
    rows = pv.run_image_patching(vm, _images(6), pairs, _readout(), {}, hooks, cfg)
    m = pv.image_measurement_rows(rows, "d", "tiny-cnn", "mean", "blocks.2.hook_out")
    assert {r["unit"] for r in m} == {"p0", "p1"}
    assert {r["unit_kind"] for r in m} == {"photo"}
    treated = [r for r in m if r["arm"] == "treatment" and r["layer"] == 0]
    assert sorted(r["unit"] for r in treated) == ["p0", "p0", "p1", "p1"]
    assert len([r for r in m if r["arm"] == "control" and r["layer"] == 0]) == 2 * 4


# ---------------------------------------------------------------- LM heads of a VLM
READ = "blocks.2.hook_resid_post"  # the tiny assembled VLM's last LM layer (3 layers, 4 heads)


def _tiny_vlm(root, name="tiny-vlm"):
    from test_workflow_vision import _assembled_vlm

    spec = models.ModelSpec(name, _assembled_vlm(root), family="vlm", backend="assembled")
    models.prepare_model(spec, root / "vlm")
    return models.load_vision_model(root / "vlm", name)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return _tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


def _vlm_readout(vm, attribute="exposure", seed=0):
    d = vm.module.lm.config.hidden_size
    w = np.random.default_rng(seed).standard_normal(d)
    return {attribute: ro.Readout(attribute, READ, "mean", w, 0.0, 1.0, 1.0)}


def _vlm_pairs(n=3, attribute="exposure"):
    """Photo k: poor image 2k, original 2k + 1."""
    return [ro.ImagePair(f"p{k}.poor", f"p{k}", attribute, 1.0, 2 * k, 2 * k + 1) for k in range(n)]


def _attn_out(vm, layer, fns, px):
    """The attention output [B, T, d] of ``layer`` in a pass with z edits ``fns``."""
    runner = ro.runner_for(vm, _vlm_readout(vm), None, "mean")
    sites = vh.head_sites(vm, READ)
    got = {}
    handle = sites[layer].attn.register_forward_hook(
        lambda m, a, out: got.__setitem__("x", out[0].detach().clone())
    )
    try:
        with vh.z_hooks(sites, fns):
            runner.read(px)
    finally:
        handle.remove()
    return got["x"], runner, sites


def test_head_sites_and_hook_z_shapes(tiny_vlm):
    vm = tiny_vlm
    sites = vh.head_sites(vm, READ)
    assert [(s.layer, s.n_heads, s.d_head) for s in sites] == [(0, 4, 16), (1, 4, 16), (2, 4, 16)]
    assert vh.head_sites(vm, "blocks.0.hook_resid_post")[0].layer == 0
    assert vh.head_sites(vm, "projector.hook_out") == []  # no LM head before the readout
    runner = ro.runner_for(vm, _vlm_readout(vm), None, "mean")
    px = runner.pixels(_images(2))
    zs, pooled = vh.capture_z(runner, sites, px)
    n_img = vm.module.n_image_tokens
    assert {k: tuple(z.shape) for k, z in zs.items()} == {
        i: (2, 1 + n_img, 4, 16) for i in range(3)
    }
    assert pooled.shape == (2, 64)


def test_patching_every_head_of_a_layer_gives_the_good_attention_output(tiny_vlm):
    """All heads of layer 1 from the good run: that layer's attention output is the good
    run's at every position; one head: the output moves by exactly (z_good - z_poor)_h W_O[h]."""
    vm = tiny_vlm
    images = _images(4, seed=5)
    runner = ro.runner_for(vm, _vlm_readout(vm), None, "mean")
    poor, good = runner.pixels(images[:2]), runner.pixels(images[2:])
    sites = vh.head_sites(vm, READ)
    zg, _ = vh.capture_z(runner, sites, good)
    zp, _ = vh.capture_z(runner, sites, poor)
    mask = runner.image_mask(2)
    a_good, _, _ = _attn_out(vm, 1, {}, good)
    a_poor, _, _ = _attn_out(vm, 1, {}, poor)
    assert (a_good - a_poor).abs().max() > 1e-3

    def all_heads(z):
        for h in range(4):
            z = vh.head_patch(zg[1], h, mask)(z)
        return z

    a_all, _, _ = _attn_out(vm, 1, {1: all_heads}, poor)
    torch.testing.assert_close(a_all, a_good, atol=1e-5, rtol=1e-5)
    a_one, _, _ = _attn_out(vm, 1, {1: vh.head_patch(zg[1], 2, mask)}, poor)
    W = sites[1].out_proj.weight[:, 32:48]  # [d, d_head] of head 2
    expected = a_poor + (zg[1][:, :, 2] - zp[1][:, :, 2]) @ W.T
    torch.testing.assert_close(a_one, expected, atol=1e-5, rtol=1e-5)


def test_random_head_difference_has_the_norm_of_the_patch_in_that_head_only(tiny_vlm):
    vm = tiny_vlm
    runner = ro.runner_for(vm, _vlm_readout(vm), None, "mean")
    sites = vh.head_sites(vm, READ)
    images = _images(4, seed=1)
    zg, _ = vh.capture_z(runner, sites, runner.pixels(images[2:]))
    zp, _ = vh.capture_z(runner, sites, runner.pixels(images[:2]))
    mask = runner.image_mask(2)
    flat = zp[0].flatten(2)
    moved = vh.random_head_difference(zg[0], 1, mask, seed=7)(flat).view_as(zp[0])
    again = vh.random_head_difference(zg[0], 1, mask, seed=7)(flat).view_as(zp[0])
    torch.testing.assert_close(moved, again)
    others = [0, 2, 3]
    torch.testing.assert_close(moved[:, :, others], zp[0][:, :, others])
    torch.testing.assert_close(moved[:, 0], zp[0][:, 0])  # BOS is not an image token
    step = (moved - zp[0])[:, :, 1].flatten(1).norm(dim=1)
    want = (zg[0] - zp[0])[:, :, 1].flatten(1).norm(dim=1)
    torch.testing.assert_close(step, want, rtol=1e-4, atol=1e-6)


def test_planted_head_is_the_top_of_the_screen_and_the_only_exact_recovery(tmp_path):
    """Every head's W_O zeroed but layer 1 head 2's: the screen ranks (1, 2) first, exact
    patching of any other head recovers exactly 0, the planted one does not."""
    vm = _tiny_vlm(tmp_path, "planted")
    with torch.no_grad():
        for s in vh.head_sites(vm, READ):
            for h in range(s.n_heads):
                if (s.layer, h) != (1, 2):
                    s.out_proj.weight[:, h * 16 : (h + 1) * 16] = 0.0
    images, pairs, readouts = _images(6, seed=2), _vlm_pairs(3), _vlm_readout(vm, seed=4)
    screen = vh.screen_heads(vm, images, pairs, readouts, "mean", 0.0)
    assert len(screen) == 3 * 12 and screen["valid"].all()
    planted = (screen.layer == 1) & (screen["head"] == 2)
    assert (screen.loc[~planted, "atp"] == 0).all() and (screen.loc[planted, "atp"] != 0).all()
    ranked = vh.rank_heads(screen, top_k=1)
    top = ranked[ranked.selected]
    assert list(zip(top.layer, top["head"], strict=True)) == [(1, 2)]
    every = {"exposure": [(s, h) for s in range(3) for h in range(4)]}
    rows = vh.run_head_patching(vm, images, pairs, readouts, every, "mean", 0.0, 1)
    t = pd.DataFrame(rows)
    assert len(t) == 3 * 12 * 2 and t["valid"].all() and list(t.columns) == vh.PAIR_COLUMNS
    treated = t[t.arm == "treatment"]
    hit = (treated.layer == 1) & (treated["head"] == 2)
    np.testing.assert_allclose(treated.loc[~hit, "recovery"], 0.0, atol=1e-5)
    assert (treated.loc[hit, "recovery"].abs() > 1e-3).all()
    # the patch of the planted head agrees in sign with its first-order estimate
    est = screen[planted].set_index("unit")["atp_recovery"]
    got = treated[hit].set_index("unit")["recovery"]
    assert (np.sign(est) == np.sign(got[est.index])).all()
    mass = vh.attention_mass(ro.runner_for(vm, readouts, None, "mean"), vh.head_sites(vm, READ),
                             ro.runner_for(vm, readouts, None, "mean").pixels(images[1::2]))  # fmt: skip
    table = vh.heads_table(ranked, rows, mass.mean(0), 0.5)
    assert list(table.columns) == vh.HEAD_COLUMNS and len(table) == 12
    row = table[(table.layer == 1) & (table["head"] == 2)].iloc[0]
    assert row["rank"] == 1 and row["n_test_pairs"] == 3
    np.testing.assert_allclose(row["recovery"], got.mean())
    m = vh.head_measurement_rows(rows, "d", "planted", "mean", READ)
    assert {r["unit"] for r in m} == {"p0", "p1", "p2"} and {r["unit_kind"] for r in m} == {"photo"}
    assert {r["site"] for r in m} == {"attn.hook_z"} and {r["metric"] for r in m} == {vh.METRIC}
    assert all(f"control={vh.CONTROL}" in r["setting"] for r in m)
    assert sum(r["arm"] == "baseline" and r["value"] == 0.0 for r in m) == 3 * 12


def test_attention_mass_on_image_tokens_is_one_minus_the_mass_on_bos(tiny_vlm):
    vm = tiny_vlm
    runner = ro.runner_for(vm, _vlm_readout(vm), None, "mean")
    px = runner.pixels(_images(2, seed=3))
    mass = vh.attention_mass(runner, vh.head_sites(vm, READ), px)
    assert mass.shape == (2, 3, 4)
    vlm = vm.module
    ids = vlm.lm_inputs(2)["input_ids"]
    embeds = vlm.embed(ids, vlm.projector(vlm.encode(px)))
    vlm.lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = vlm.lm(inputs_embeds=embeds, output_attentions=True).attentions
    finally:
        vlm.lm.config._attn_implementation = "sdpa"
    for layer in range(3):
        on_bos = att[layer][:, :, 1:, 0].double().mean(-1).numpy()  # image queries -> BOS
        np.testing.assert_allclose(mass[:, layer], 1.0 - on_bos, atol=1e-5)
    mask = torch.tensor([False, True, True])
    assert vh.uniform_image_mass(mask) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_identical_good_and_poor_images_give_no_valid_pairs(tiny_vlm):
    vm = tiny_vlm
    images, readouts = _images(3, seed=6), _vlm_readout(vm)
    same = [ro.ImagePair(f"p{k}.poor", f"p{k}", "exposure", 1.0, k, k) for k in range(3)]
    screen = vh.screen_heads(vm, images, same, readouts, "mean", 0.0)
    assert not screen["valid"].any() and screen["atp_recovery"].isna().all()
    assert vh.rank_heads(screen, 4).empty
    every = {"exposure": [(0, 0), (2, 3)]}
    rows = vh.run_head_patching(vm, images, same, readouts, every, "mean", 0.0, 1)
    assert rows == [] and vh.head_measurement_rows(rows, "d", "m", "mean", READ) == []


def test_head_config_defaults_come_from_the_schema():
    cfg = vh.VisionHeadConfig.from_config(schema_defaults("vision"))
    assert (cfg.top_k, cfg.random_seeds) == (8, 1)
    assert vh.VisionHeadConfig.from_config({"patching": {"heads": {"top_k": 3}}}).top_k == 3
