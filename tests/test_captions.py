"""Caption datasets: deterministic views split by photo, captions that say exactly the levels
applied, distractors one attribute away, CSV and folder input with one-line errors."""

import collections
import re

import numpy as np
import pytest
from PIL import Image

from circuitflow import store
from circuitflow.datasets import caption_csv, captions, images

SOURCES = ["builtin:chelsea", "builtin:coffee", "builtin:rocket", "builtin:astronaut"]
SPEC = captions.CaptionSpec(views=6, size=32, work_size=64)


@pytest.fixture(scope="module")
def built():
    return captions.build_caption_dataset(SOURCES, SPEC, 0.5, seed=3)


def _write_photos(folder, names):
    """Small PNGs of real builtin photographs (48 x 64), one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, builtin in zip(names, ["chelsea", "rocket", "flower"], strict=False):
        img = images.to_uint8(images.resize(images.load_builtin(builtin), (48, 64)))
        Image.fromarray(img).save(folder / name)


def test_views_have_the_shape_asked_and_rebuild_byte_identical(built):
    rows, ims = built
    assert ims.dtype == np.uint8 and ims.shape == (len(SOURCES) * SPEC.views, 32, 32, 3)
    assert [r["image_index"] for r in rows] == list(range(len(rows)))
    assert len({r["sample_id"] for r in rows}) == len(rows)
    rows2, ims2 = captions.build_caption_dataset(SOURCES, SPEC, 0.5, seed=3)
    assert rows2 == rows and ims2.tobytes() == ims.tobytes()
    rows3, ims3 = captions.build_caption_dataset(SOURCES, SPEC, 0.5, seed=4)
    assert [r["caption"] for r in rows3] != [r["caption"] for r in rows]
    assert ims3.tobytes() != ims.tobytes()
    reordered = captions.CaptionSpec(
        views=6, size=32, work_size=64, attributes=SPEC.attributes[::-1]
    )
    rows4, ims4 = captions.build_caption_dataset(SOURCES, reordered, 0.5, seed=3)
    assert rows4 == rows and ims4.tobytes() == ims.tobytes()
    # views of one photo differ from each other (crops, flips, edits)
    assert len({ims[i].tobytes() for i in range(SPEC.views)}) == SPEC.views


def test_rows_round_trip_through_the_store(built, tmp_path):
    rows, ims = built
    store.write_samples(tmp_path / "ds", rows)
    store.write_images(tmp_path / "ds", ims)
    assert store.read_samples(tmp_path / "ds") == rows
    np.testing.assert_array_equal(store.read_images(tmp_path / "ds", [5, 1]), ims[[5, 1]])


def test_train_and_test_are_split_by_source_photo(built):
    rows, _ = built
    splits = collections.defaultdict(set)
    for r in rows:
        splits[r["source"]].add(r["split"])
        assert r["frame_id"] == r["source"]
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "test"}
    assert splits == {
        sid: {s} for sid, s in images.split_sources(list(splits), 0.5, seed=3).items()
    }


def test_every_caption_says_exactly_its_rows_levels(built):
    rows, _ = built
    content = {"chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket"}
    for r in rows:
        assert captions.caption_levels(r["caption"]) == {
            a: (r[a],) for a in captions.CAPTION_ATTRIBUTES
        }, r["caption"]
        assert r["content"] in r["caption"]
        assert r["content"] == content.get(r["source"], "an astronaut")
        assert r["label"] == r["exposure"]
        assert r["tone_word"] == captions.VOCABULARY["tone"][r["tone"]][0]
    assert {r["template"] for r in rows} == set(range(len(captions.TEMPLATES)))


def test_every_vocabulary_word_parses_to_its_own_level_only():
    for attribute, levels in captions.VOCABULARY.items():
        for level, words in levels.items():
            for word in words:
                found = captions.caption_levels(f"a photo, {word}, here")
                assert found[attribute] == (level,), word
                assert all(v == () for a, v in found.items() if a != attribute), word


def _no_article(text):
    return re.sub(r"\ban?\b", "a", text)


def test_distractors_change_exactly_one_attribute(built):
    rows, _ = built
    assert captions.chance_levels(SPEC) == {a: 1 / 3 for a in captions.CAPTION_ATTRIBUTES}
    for r in rows:
        truth = {a: (r[a],) for a in captions.CAPTION_ATTRIBUTES}
        distractors = captions.distractor_captions(r, SPEC)
        assert set(distractors) == set(SPEC.attributes)
        for attribute, texts in distractors.items():
            assert len(texts) == 2 and r["caption"] not in texts
            got = [captions.caption_levels(t) for t in texts]
            assert all({**g, attribute: truth[attribute]} == truth for g in got)
            assert {g[attribute][0] for g in got} | {r[attribute]} == set(
                captions.LEVEL_NAMES[attribute]
            )
            # the rest of the sentence is the caption's, word for word (but for a / an)
            word = captions.caption_word(attribute, r[attribute])
            for t, g in zip(texts, got, strict=True):
                other = captions.caption_word(attribute, g[attribute][0])
                assert _no_article(t.replace(other, word)) == _no_article(r["caption"])


def test_levels_are_balanced_within_each_photo():
    spec = captions.CaptionSpec(views=7, size=32, work_size=64)
    rows, _ = captions.build_caption_dataset(SOURCES, spec, 0.5, seed=1)
    for source in {r["source"] for r in rows}:
        mine = [r for r in rows if r["source"] == source]
        for attribute in captions.CAPTION_ATTRIBUTES:
            counts = collections.Counter(r[attribute] for r in mine)
            assert set(counts) == set(captions.LEVEL_NAMES[attribute])
            assert max(counts.values()) - min(counts.values()) <= 1, (source, attribute, counts)
        assert len({r["template"] for r in mine}) == 6


def test_exposure_levels_order_the_views_brightness():
    spec = captions.CaptionSpec(views=9, size=32, work_size=64, attributes=("exposure",))
    rows, ims = captions.build_caption_dataset(SOURCES[:2], spec, 0.5, seed=0)
    y = images.luma(ims / 255.0).mean((1, 2))
    for source in ("chelsea", "coffee"):
        mean = {
            lvl: np.mean(
                [y[r["image_index"]] for r in rows if (r["source"], r["exposure"]) == (source, lvl)]
            )
            for lvl in ("low", "mid", "high")
        }
        assert mean["low"] + 0.05 < mean["mid"] < mean["high"] - 0.05, mean
    assert all(captions.caption_levels(r["caption"])["composition"] == () for r in rows)


def test_a_flip_mirrors_the_view_and_keeps_its_facts():
    kept = captions.CaptionSpec(views=4, size=32, work_size=64, flip_probability=0.0)
    flipped = captions.CaptionSpec(views=4, size=32, work_size=64, flip_probability=1.0)
    rows0, ims0 = captions.build_caption_dataset(SOURCES[:2], kept, 0.5, seed=2)
    rows1, ims1 = captions.build_caption_dataset(SOURCES[:2], flipped, 0.5, seed=2)
    np.testing.assert_array_equal(ims1, ims0[:, :, ::-1])
    for a, b in zip(rows0, rows1, strict=True):
        assert (a["flip"], b["flip"]) == (False, True)
        assert a["composition"] == b["composition"] and a["caption"] == b["caption"]
        assert b["subject_rel"] == pytest.approx([1 - a["subject_rel"][0], a["subject_rel"][1]])


def test_a_folder_of_photos_gets_views_edits_and_captions_from_file_names(tmp_path):
    _write_photos(tmp_path / "photos", ["red_barn.png", "old-bridge.jpg", "1234.png"])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    spec = captions.CaptionSpec(views=3, size=32, work_size=48)
    rows, ims = captions.build_caption_dataset([str(tmp_path / "photos")], spec, 0.3, seed=0)
    assert ims.shape == (9, 32, 32, 3)
    assert [r["source"] for r in rows[::3]] == ["1234", "old-bridge", "red_barn"]
    assert [r["content"] for r in rows[::3]] == ["a scene", "old bridge", "red barn"]
    for r in rows:
        assert r["subject"] == "spectral_residual" and r["content"] in r["caption"]
        assert captions.caption_levels(r["caption"]) == {
            a: (r[a],) for a in captions.CAPTION_ATTRIBUTES
        }


def _caption_csv(tmp_path, lines):
    _write_photos(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    path = tmp_path / "captions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_caption_csv_round_trips(tmp_path):
    path = _caption_csv(
        tmp_path,
        [
            "image_path,caption",
            'imgs/a.png,"a cat on a sofa, looking up"',
            "imgs/b.png,a rocket at dusk",
            "imgs/a.png,a sleepy cat",
            f"{tmp_path / 'imgs' / 'c.png'},a red flower",
        ],
    )
    rows, ims = caption_csv.build_csv_caption_dataset(path, 32, 0.3, seed=0)
    assert ims.shape == (4, 32, 32, 3)
    assert [r["caption"] for r in rows] == [
        "a cat on a sofa, looking up",
        "a rocket at dusk",
        "a sleepy cat",
        "a red flower",
    ]
    assert [r["sample_id"] for r in rows[:3]] == ["imgs/a.png.0", "imgs/b.png.0", "imgs/a.png.1"]
    assert rows[0]["split"] == rows[2]["split"] and {r["split"] for r in rows} == {"train", "test"}
    assert all(r["label"] == captions.UNLABELED and r["template"] == -1 for r in rows)
    assert [r["csv_row"] for r in rows] == [2, 3, 4, 5]
    expected, _ = images.center_square(images.load_image_file(tmp_path / "imgs" / "b.png"), 32)
    np.testing.assert_array_equal(ims[1], images.to_uint8(expected))
    np.testing.assert_array_equal(ims[0], ims[2])
    with pytest.raises(captions.CaptionDatasetError) as info:
        captions.distractor_captions(rows[0])
    assert str(info.value) == (
        "sample 'imgs/a.png.0': its caption came from a CSV, so its attribute levels are "
        "unknown and it has no distractor captions"
    )


def test_caption_csv_split_and_source_columns_are_used(tmp_path):
    path = _caption_csv(
        tmp_path,
        [
            "image_path,caption,split,source",
            "imgs/a.png,one,train,cat",
            "imgs/c.png,two,train,cat",
            "imgs/b.png,three,test,",
        ],
    )
    rows, _ = caption_csv.build_csv_caption_dataset(path, 32, 0.3, seed=0)
    assert [(r["source"], r["split"]) for r in rows] == [
        ("cat", "train"),
        ("cat", "train"),
        ("imgs/b.png", "test"),
    ]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ["image_path,caption", "imgs/a.png,one", "x.jpg,two"],
            "row 3: column 'image_path': no such file 'x.jpg'",
        ),
        (
            ["image_path,text", "imgs/a.png,one"],
            "row 1: missing column 'caption'; need image_path, caption (optional: split, source)",
        ),
        (
            ["image_path,caption", "imgs/a.png,one", "imgs/b.png,  "],
            "row 3: column 'caption': empty caption",
        ),
        (
            ["image_path,caption,split", "imgs/a.png,one,train", "imgs/b.png,two,dev"],
            "row 3: column 'split': 'dev' is not train or test",
        ),
        (
            ["image_path,caption,split", "imgs/a.png,one,train", "imgs/a.png,two,test"],
            "row 3: column 'split': source 'imgs/a.png' is in both train and test",
        ),
    ],
)
def test_bad_caption_csv_is_a_one_line_error(tmp_path, lines, message):
    path = _caption_csv(tmp_path, lines)
    with pytest.raises(captions.CaptionDatasetError) as info:
        caption_csv.load_caption_csv(path)
    assert str(info.value) == f"{path} {message}"


def test_spec_errors_name_the_key():
    where = "datasets.cap.captions"
    cases = [
        (
            {"attributes": ("exposure", "blur")},
            "attributes: unknown attribute 'blur'; known: exposure, contrast, tone, saturation, "
            "color_cast, composition",
        ),
        ({"views": 0}, "views: must be >= 1, got 0"),
        (
            {"levels": {"exposure": (-1.0, 0.5, 1.0)}},
            "levels.exposure: need [low, identity, high] (graded low < 0 < high), got [-1.0, 0.5, 1.0]",
        ),
        (
            {"levels": {"contrast": (0.0, 1.0, 2.0)}},
            "levels.contrast: [0.0, 1.0, 2.0]: contrast gain must be > 0, got 0.0",
        ),
        (
            {"label_attribute": "tone", "attributes": ("exposure",)},
            "label_attribute: 'tone' is not one of attributes ['exposure']",
        ),
        ({"templates": 7}, "templates: must be in 1..6, got 7"),
    ]
    for kwargs, message in cases:
        with pytest.raises(captions.CaptionDatasetError) as info:
            captions.CaptionSpec(**kwargs, where=where)
        assert str(info.value) == f"{where}.{message}"


def test_config_entry_builds_photos_or_csv(tmp_path):
    entry = {
        "kind": "captions",
        "test_fraction": 0.5,
        "images": {"sources": SOURCES, "size": 32, "work_size": 64},
        "captions": {"views": 6, "levels": {"exposure": [-1.5, 0.0, 1.5]}},
    }
    rows, ims = caption_csv.caption_dataset_from_config(entry, seed=3, name="cap")
    spec = captions.CaptionSpec(
        views=6,
        size=32,
        work_size=64,
        levels={**captions.CAPTION_LEVELS, "exposure": (-1.5, 0.0, 1.5)},
    )
    rows2, ims2 = captions.build_caption_dataset(SOURCES, spec, 0.5, seed=3)
    assert rows == rows2 and ims.tobytes() == ims2.tobytes()
    assert {r["exposure_level"] for r in rows} == {-1.5, 0.0, 1.5}
    with pytest.raises(captions.CaptionDatasetError) as info:
        caption_csv.caption_dataset_from_config(
            {**entry, "captions": {"view": 3}}, seed=3, name="cap"
        )
    assert str(info.value).startswith(
        "datasets.cap.captions: unknown key 'view'; allowed: csv, views,"
    )
    path = _caption_csv(tmp_path, ["image_path,caption", "imgs/a.png,one", "imgs/b.png,two"])
    rows, ims = caption_csv.caption_dataset_from_config(
        {"images": {"size": 32}, "captions": {"csv": str(path)}}, seed=0
    )
    assert ims.shape == (2, 32, 32, 3) and [r["caption"] for r in rows] == ["one", "two"]
