"""circuitflow.datasets.prompts: source validation (exact messages), splits, sample ids, shipped data."""

import json
from collections import Counter
from pathlib import Path

import pytest

from circuitflow.datasets import (
    DatasetError,
    build_prompt_dataset,
    expand_frames,
    load_prompts,
    split_rows,
)

REPO = Path(__file__).resolve().parent.parent
LABELS = ["gratitude", "anger", "apology", "neutral"]
TRIGGERS = {
    "gratitude": "thank you",
    "anger": "I am furious",
    "apology": "I am sorry",
    "neutral": "I am writing",
}


def prompt(text_before: str, label: str, text_after: str = ".", trigger: str | None = None):
    trigger = trigger or TRIGGERS[label]
    text = f"{text_before}{trigger}{text_after}"
    start = len(text_before)
    return {
        "text": text,
        "label": label,
        "trigger": trigger,
        "span": [start, start + len(trigger)],
        "genre": "note",
    }


def frame(frame_id: str, template: str = "Hi Dana, {phrase} about the parcel.", **override):
    phrases = {
        "gratitude": "thanks a lot",
        "anger": "I am livid",
        "apology": "I apologise",
        "neutral": "I am writing",
    }
    phrases.update(override)
    return {
        "frame_id": frame_id,
        "genre": "email",
        "template": template,
        "phrases": {k: v for k, v in phrases.items() if v is not None},
    }


def write_jsonl(path: Path, rows) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_prompts(counts: dict[str, int]) -> list[dict]:
    return [
        prompt(f"Message {i} for {label}: ", label) for label, n in counts.items() for i in range(n)
    ]


# ---------------------------------------------------------------- prompt validation
def test_load_prompts_ok(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl", [prompt("Well, ", "gratitude"), "", prompt("Oh. ", "anger")]
    )
    rows = load_prompts(path, LABELS)
    assert [r["source"] for r in rows] == ["p.jsonl:1", "p.jsonl:3"]  # blank line counted
    assert rows[0] == {
        "text": "Well, thank you.",
        "label": "gratitude",
        "span": [6, 15],
        "genre": "note",
        "frame_id": "",
        "source": "p.jsonl:1",
    }


@pytest.mark.parametrize(
    "line, message",
    [
        ("{bad json}", "not valid JSON (Expecting property name enclosed in double quotes)"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "hi", "label": "anger", "trigger": "hi"}', "missing key 'span'"),
        ('{"text": "  ", "label": "anger", "trigger": "x", "span": [0, 1]}', "empty text"),
        (
            '{"text": "Yay me", "label": "joy", "trigger": "Yay", "span": [0, 3]}',
            "unknown label 'joy'; expected one of gratitude, anger, apology, neutral",
        ),
        (
            '{"text": "Thanks a lot", "label": "gratitude", "trigger": "Thanks", "span": [1, 7]}',
            "span [1, 7] does not match trigger 'Thanks' in the text",
        ),
        (
            '{"text": "Thanks", "label": "gratitude", "trigger": "Thanks", "span": [0, 9]}',
            "span [0, 9] does not match trigger 'Thanks' in the text",
        ),
        (
            '{"text": "Thanks", "label": "gratitude", "trigger": "Thanks", "span": "0-6"}',
            "span 0-6 does not match trigger 'Thanks' in the text",
        ),
    ],
)
def test_load_prompts_errors(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt("A ", "neutral"), "", line])
    with pytest.raises(DatasetError) as err:
        load_prompts(path, LABELS)
    assert str(err.value) == f"{path}:3: {message}"


def test_duplicate_text_names_both_places(tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            prompt("First: ", "anger"),
            prompt("Hello, ", "gratitude"),  # "Hello, thank you."
            prompt("  HELLO,   ", "gratitude", ". ", trigger="Thank You"),
        ],
    )
    with pytest.raises(DatasetError) as err:
        build_prompt_dataset(prompts, None, LABELS, 0.3, 0)
    assert str(err.value) == "prompts.jsonl:3: duplicate text, first seen at prompts.jsonl:2"


def test_duplicate_between_prompts_and_frames(tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [prompt("Hi Dana, ", "neutral", " about the parcel.")]
    )
    frames = write_jsonl(tmp_path / "frames.jsonl", [frame("f1")])
    with pytest.raises(DatasetError) as err:
        build_prompt_dataset(prompts, frames, LABELS, 0.5, 0)
    assert str(err.value) == "frames.jsonl:1: duplicate text, first seen at prompts.jsonl:1"


# ---------------------------------------------------------------- frame validation
@pytest.mark.parametrize(
    "bad, message",
    [
        (
            frame("f2", template="No placeholder here."),
            "template must contain {phrase} exactly once",
        ),
        (
            frame("f2", template="{phrase} and {phrase}."),
            "template must contain {phrase} exactly once",
        ),
        (frame("f2", neutral=None), "frame 'f2' lacks label 'neutral'"),
        (
            frame("f2", joy="yay"),
            "unknown label 'joy'; expected one of gratitude, anger, apology, neutral",
        ),
        (frame("f2", anger=" "), "empty phrase for label 'anger'"),
        (frame("f1", template="Other {phrase}."), "duplicate frame_id 'f1' (first on line 1)"),
        ({"frame_id": "f2", "template": "{phrase}"}, "missing key 'phrases'"),
    ],
)
def test_expand_frames_errors(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "frames.jsonl", [frame("f1"), bad])
    with pytest.raises(DatasetError) as err:
        expand_frames(path, LABELS)
    assert str(err.value) == f"{path}:2: {message}"


def test_expand_frames_spans_cover_phrase(tmp_path):
    path = write_jsonl(
        tmp_path / "frames.jsonl", [frame("f1"), frame("f2", template="{phrase}, see you soon.")]
    )
    rows = expand_frames(path, LABELS)
    assert len(rows) == 8
    assert [r["label"] for r in rows[:4]] == LABELS
    assert rows[1]["text"] == "Hi Dana, I am livid about the parcel."
    assert rows[1]["span"] == [9, 19]
    assert rows[4]["span"] == [0, len("thanks a lot")]
    for r in rows:
        start, end = r["span"]
        assert r["text"][start:end] == frame("x")["phrases"][r["label"]]
    assert {r["source"] for r in rows[4:]} == {"frames.jsonl:2"}


def test_no_rows_and_too_few(tmp_path):
    with pytest.raises(DatasetError, match="^dataset has no rows"):
        build_prompt_dataset(None, None, LABELS, 0.3, 0)
    path = write_jsonl(
        tmp_path / "p.jsonl", free_prompts({"gratitude": 3, "anger": 3, "apology": 3, "neutral": 1})
    )
    with pytest.raises(DatasetError) as err:
        build_prompt_dataset(path, None, LABELS, 0.3, 0)
    assert str(err.value) == "label 'neutral' has 1 rows; need at least 2"


# ---------------------------------------------------------------- splits
COUNTS = {"gratitude": 10, "anger": 13, "apology": 7, "neutral": 20}


def _rows_with_frames(n_frames: int = 10) -> list[dict]:
    rows = [{**r, "frame_id": ""} for r in free_prompts(COUNTS)]
    for f in range(n_frames):
        rows += [
            {"text": f"frame {f} {label}", "label": label, "frame_id": f"f{f:03d}"}
            for label in LABELS
        ]
    return rows


def test_split_stratified():
    rows = _rows_with_frames(0)
    splits = split_rows(rows, 0.3, seed=0)
    assert set(splits) == {"train", "test"}
    for label, n in COUNTS.items():
        n_test = sum(s == "test" for r, s in zip(rows, splits, strict=True) if r["label"] == label)
        assert abs(n_test - 0.3 * n) <= 1, (label, n_test)
        assert n_test >= 1 and n - n_test >= 1
    assert Counter(splits)["test"] == 15  # ceil(0.3 * 50)


def test_split_deterministic_and_seeded():
    rows = _rows_with_frames()
    assert split_rows(rows, 0.3, seed=0) == split_rows(rows, 0.3, seed=0)
    assert split_rows(rows, 0.3, seed=0) != split_rows(rows, 0.3, seed=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_frames_whole(seed):
    rows = _rows_with_frames(10)
    splits = split_rows(rows, 0.3, seed=seed)
    by_frame: dict[str, set] = {}
    for r, s in zip(rows, splits, strict=True):
        if r["frame_id"]:
            by_frame.setdefault(r["frame_id"], set()).add(s)
    assert len(by_frame) == 10
    assert all(len(s) == 1 for s in by_frame.values())
    assert sum(s == {"test"} for s in by_frame.values()) == 3  # 30% of frames


def test_build_prompt_dataset_ids_and_spans(tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        free_prompts({"gratitude": 4, "anger": 4, "apology": 4, "neutral": 4}),
    )
    frames = write_jsonl(
        tmp_path / "frames.jsonl",
        [frame(f"f{i}", template=f"Note {i}: {{phrase}} today.") for i in range(4)],
    )
    rows = build_prompt_dataset(prompts, frames, LABELS, 0.5, 0)
    assert len(rows) == 32
    assert [r["sample_id"] for r in rows[:16]] == [f"p{i:05d}" for i in range(1, 17)]
    assert [r["sample_id"] for r in rows[16:20]] == [f"f0.{label}" for label in LABELS]
    assert rows[-1]["sample_id"] == "f3.neutral"
    assert list(rows[0]) == [
        "sample_id",
        "text",
        "label",
        "span",
        "genre",
        "frame_id",
        "source",
        "split",
    ]
    for r in rows:
        start, end = r["span"]
        if r["frame_id"]:
            assert r["text"][start:end] == frame("x")["phrases"][r["label"]]
            assert r["text"] == f"Note {r['frame_id'][1:]}: {r['text'][start:end]} today."
        else:
            assert r["text"][start:end] == TRIGGERS[r["label"]]
    assert len({r["sample_id"] for r in rows}) == 32


def test_one_free_prompt_of_a_label_is_a_dataset_error(tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        free_prompts({"gratitude": 3, "anger": 3, "apology": 3, "neutral": 1}),
    )
    frames = write_jsonl(
        tmp_path / "frames.jsonl",
        [frame(f"f{i}", template=f"Note {i}: {{phrase}}.") for i in range(4)],
    )
    with pytest.raises(DatasetError):
        build_prompt_dataset(prompts, frames, LABELS, 0.3, 0)


# ---------------------------------------------------------------- shipped data
def test_shipped_emotion_dataset():
    rows = build_prompt_dataset(
        REPO / "data" / "emotion" / "prompts.jsonl",
        REPO / "data" / "emotion" / "frames.jsonl",
        LABELS,
        0.3,
        0,
    )
    free = Counter(r["label"] for r in rows if not r["frame_id"])
    assert set(free) == set(LABELS)
    assert min(free.values()) >= 200, free
    frame_rows = [r for r in rows if r["frame_id"]]
    assert len(frame_rows) % 4 == 0
    assert len(frame_rows) // 4 >= 100
    assert len({r["frame_id"] for r in frame_rows}) == len(frame_rows) // 4
    for split in ("train", "test"):
        assert {r["label"] for r in rows if r["split"] == split} == set(LABELS)
        assert {r["label"] for r in frame_rows if r["split"] == split} == set(LABELS)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert len({r["sample_id"] for r in rows}) == len(rows)
    for r in rows:
        start, end = r["span"]
        assert 0 <= start < end <= len(r["text"])
