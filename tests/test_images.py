"""Aesthetic counterfactual stimuli: each transform changes only its attribute; crops put the
subject on the requested point; splits keep a photo's variants together; manifests fail on the
bad line."""

import numpy as np
import pytest

from circuitflow import store
from circuitflow.datasets import images, manifests


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph shipped in scikit-image (coffee cup), downscaled."""
    return images.resize(images.load_builtin("coffee"), (96, 144))


def _circ_diff(a, b):
    d = np.abs(a - b)
    return np.minimum(d, 1 - d)


def _chromatic(img):
    return (img.max(-1) - img.min(-1)) > 0.05


def test_builtin_photographs_ship_in_installed_wheels():
    for name in images.BUILTIN_SOURCES:
        img = images.load_builtin(name)
        assert img.ndim == 3 and img.shape[-1] == 3 and min(img.shape[:2]) >= 256, name
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05, name


def test_exposure_is_monotone_in_luma_and_keeps_hue(photo):
    evs = [-2, -1, -0.5, 0, 0.5, 1, 2]
    lumas = [images.luma(images.exposure(photo, ev)).mean() for ev in evs]
    assert all(b > a for a, b in zip(lumas, lumas[1:], strict=False))
    np.testing.assert_allclose(images.exposure(photo, 0), photo)
    h0 = images.hue(photo)
    for ev in (-2, 1, 2):
        out = images.exposure(photo, ev)
        mask = _chromatic(photo) & _chromatic(out)
        assert np.median(_circ_diff(images.hue(out), h0)[mask]) < 1e-3
        assert np.percentile(_circ_diff(images.hue(out), h0)[mask], 99) < 0.01


def test_saturation_keeps_luma_and_hue_and_scales_chroma(photo):
    y0, h0 = images.luma(photo), images.hue(photo)
    chroma = [
        (images.saturation(photo, g).max(-1) - images.saturation(photo, g).min(-1)).mean()
        for g in (0.0, 0.5, 1.0, 1.5)
    ]
    assert all(b > a for a, b in zip(chroma, chroma[1:], strict=False))
    assert chroma[0] < 1e-9  # gain 0 is gray
    for g in (0.5, 1.5, 2.0):
        out = images.saturation(photo, g)
        np.testing.assert_allclose(images.luma(out), y0, atol=1e-9)
        mask = _chromatic(photo) & _chromatic(out)
        assert np.percentile(_circ_diff(images.hue(out), h0)[mask], 99) < 1e-3


def test_contrast_tone_and_color_cast_change_their_attribute_only(photo):
    y = images.luma(photo)
    stds = [images.luma(images.contrast(photo, g)).std() for g in (0.4, 0.7, 1.0, 1.4)]
    assert all(b > a for a, b in zip(stds, stds[1:], strict=False))
    assert abs(images.luma(images.contrast(photo, 0.5)).mean() - y.mean()) < 0.01
    # tone: gamma on the luma, hue kept, monotone in the (signed) level
    means = [images.luma(images.tone(photo, g)).mean() for g in (2.0, 1.4, 1.0, 0.7, 0.5)]
    assert all(b > a for a, b in zip(means, means[1:], strict=False))
    out = images.tone(photo, 0.7)
    mask = _chromatic(photo) & _chromatic(out)
    assert np.percentile(_circ_diff(images.hue(out), images.hue(photo))[mask], 99) < 1e-3
    # color cast: red/blue balance moves with the temperature, mean luma roughly kept
    ratio = [
        images.color_cast(photo, t)[..., 0].mean() / images.color_cast(photo, t)[..., 2].mean()
        for t in (-0.3, -0.15, 0.0, 0.15, 0.3)
    ]
    assert all(b > a for a, b in zip(ratio, ratio[1:], strict=False))
    for t in (-0.3, 0.3):
        assert abs(images.luma(images.color_cast(photo, t)).mean() - y.mean()) < 0.03


@pytest.mark.parametrize("target", images.THIRDS + [(0.5, 0.5)])
def test_crop_puts_the_point_on_a_third(target):
    rng = np.random.default_rng(0)
    img = rng.random((300, 400, 3))
    point = (180.0, 140.0)
    targets = images.THIRDS + [(0.5, 0.5)]
    side = images.max_crop_side(point, img.shape[:2], targets)
    assert side > 100
    out, params = images.crop_at(img, point, target, side, 64)
    assert out.shape == (64, 64, 3)
    x0, y0, s, _ = params["window"]
    assert 0 <= x0 and 0 <= y0 and x0 + s <= 400 and y0 + s <= 300
    rel = np.array(params["salient_rel"])
    assert np.all(np.abs(rel - np.array(target)) <= 1.0 / s + 1e-9)  # within one source pixel


def test_crop_content_moves_with_the_target():
    """A bright dot at the subject point lands where the crop says it does."""
    img = np.zeros((300, 400, 3))
    img[138:143, 178:183] = 1.0
    out, params = images.crop_at(img, (180.0, 140.0), (1 / 3, 2 / 3), 150, 150)
    y, x = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert abs(x / 150 - 1 / 3) < 0.03 and abs(y / 150 - 2 / 3) < 0.03


def test_tilt_zero_is_the_center_square_and_tilt_keeps_colors(photo):
    base, _ = images.center_square(photo, 64)
    np.testing.assert_allclose(images.tilt(photo, 0.0, 64), base, atol=0.02)
    tilted = images.tilt(photo, 6.0, 64)
    assert np.abs(tilted.mean((0, 1)) - base.mean((0, 1))).max() < 0.05
    assert np.abs(tilted - base).mean() > 0.01


def test_dataset_rows_levels_and_split_by_source(tmp_path):
    for i, name in enumerate(["chelsea", "rocket", "flower"]):
        images.to_uint8(images.resize(images.load_builtin(name), (80, 120)))
        from PIL import Image

        Image.fromarray(images.to_uint8(images.load_builtin(name))).resize((120, 80)).save(
            tmp_path / f"{i}_{name}.png"
        )
    spec = images.ImageSpec(labels=images.LABELS, size=32, work_size=64, jitter_copies=2)
    rows, ims = images.build_image_dataset([str(tmp_path), "builtin:coffee"], spec, 0.5, seed=3)
    assert ims.dtype == np.uint8 and ims.shape[1:] == (32, 32, 3) and len(ims) == len(rows)
    assert {r["label"] for r in rows} == set(images.LABELS)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["frame_id"], set()).add(r["split"])
        assert r["source"] == r["frame_id"] and "params" in r and "attribute" in r
        if r["label"].endswith("_low") and r["attribute"] != "composition":
            assert r["level"] < 0
        if r["label"].endswith("_high") and r["attribute"] != "composition":
            assert r["level"] > 0
    assert all(len(s) == 1 for s in by_source.values())
    assert {s.pop() for s in by_source.values()} == {"train", "test"}
    # same seed, same dataset
    rows2, ims2 = images.build_image_dataset([str(tmp_path), "builtin:coffee"], spec, 0.5, seed=3)
    assert rows2 == rows and np.array_equal(ims, ims2)
    store.write_samples(tmp_path / "ds", rows)
    store.write_images(tmp_path / "ds", ims)
    np.testing.assert_array_equal(store.read_images(tmp_path / "ds", [2, 0]), ims[[2, 0]])


def test_unknown_label_or_source_is_one_line():
    with pytest.raises(images.ImageDatasetError, match="labels: 'blurry'"):
        images.ImageSpec(labels=("original", "blurry"))
    with pytest.raises(images.ImageDatasetError, match="builtin:nope"):
        images.resolve_sources(["builtin:nope"])


def _write_para(tmp_path, lines):
    from PIL import Image

    (tmp_path / "imgs").mkdir(exist_ok=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(tmp_path / "imgs" / name)
    path = tmp_path / "para.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_para_manifest_loads_and_builds(tmp_path):
    header = "imageName,aestheticScore_mean,compositionScore_mean,lightScore_mean,colorScore_mean"
    path = _write_para(
        tmp_path,
        [header, "imgs/a.jpg,3.5,3,4,2", "imgs/b.jpg,2.0,2,2,2", "imgs/c.jpg,4.5,5,4,4"],
    )
    rows = manifests.load_score_manifest(path, "para")
    assert [r["overall"] for r in rows] == [3.5, 2.0, 4.5] and rows[0]["lighting"] == 4
    built, ims = manifests.build_manifest_dataset(path, "para", 32, 0.34, seed=0)
    assert ims.shape == (3, 32, 32, 3)
    assert [r["label"] for r in built] == ["mid", "low", "high"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgs/b.jpg,high,2,2,2", r"para\.csv:3: column 'aestheticScore_mean' = 'high'"),
        ("imgs/missing.jpg,2.0,2,2,2", r"para\.csv:3: image .*missing\.jpg does not exist"),
        ("imgs/b.jpg,2.0,2", r"para\.csv:3: expected 5 fields"),
    ],
)
def test_bad_manifest_line_is_one_line_error(tmp_path, line, message):
    header = "imageName,aestheticScore_mean,compositionScore_mean,lightScore_mean,colorScore_mean"
    path = _write_para(tmp_path, [header, "imgs/a.jpg,3.5,3,4,2", line])
    with pytest.raises(images.ImageDatasetError, match=message) as info:
        manifests.load_score_manifest(path, "para")
    assert "\n" not in str(info.value)


def test_aadb_manifest_without_score_column_names_the_file(tmp_path):
    path = _write_para(tmp_path, ["ImageFile,Light", "imgs/a.jpg,0.2"])
    with pytest.raises(images.ImageDatasetError, match=r"para\.csv:1: no overall column"):
        manifests.load_score_manifest(path, "aadb")


def test_generic_manifest_with_renamed_columns(tmp_path):
    path = _write_para(
        tmp_path,
        ["file,mos,light_mos", "imgs/a.jpg,3.5,4", "imgs/b.jpg,2.0,1.5", "imgs/c.jpg,4.5,5"],
    )
    rows = manifests.load_score_manifest(
        path, "generic", columns={"overall": "mos", "lighting": "light_mos"}
    )
    assert [r["overall"] for r in rows] == [3.5, 2.0, 4.5]
    assert [r["lighting"] for r in rows] == [4.0, 1.5, 5.0]
    assert "composition" not in rows[0] and rows[1]["path"].endswith("imgs/b.jpg")
    built, ims = manifests.build_manifest_dataset(
        path, "generic", 32, 0.34, seed=0, columns={"overall": "mos"}
    )
    assert ims.shape == (3, 32, 32, 3) and [r["label"] for r in built] == ["mid", "low", "high"]


def test_generic_manifest_names_a_missing_configured_column(tmp_path):
    path = _write_para(tmp_path, ["path,overall", "imgs/a.jpg,3", "imgs/b.jpg,2"])
    with pytest.raises(images.ImageDatasetError) as info:
        manifests.load_score_manifest(path, "generic", columns={"color": "colour_mos"})
    assert str(info.value) == (
        f"{path}:1: no column 'colour_mos' (manifest columns.color); the header has path, overall"
    )
    with pytest.raises(images.ImageDatasetError, match="columns key 'hue' is not one of"):
        manifests.load_score_manifest(path, "generic", columns={"hue": "h"})
