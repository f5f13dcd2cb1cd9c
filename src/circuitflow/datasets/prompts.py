"""Prompt datasets: read and validate the shipped sources, expand counterfactual frames, split.

Sources (JSON lines):
- prompts: ``{"text", "label", "trigger", "span": [start, end], "genre"}``
- frames: ``{"frame_id", "genre", "template" (one "{phrase}"), "phrases": {label: phrase}}``

A permuted-label copy (:func:`permute_labels`, the calibration's null) keeps texts, ids and
splits and shuffles labels within each frame and among the free prompts of each split.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from circuitflow.core.errors import CircuitflowError

PLACEHOLDER = "{phrase}"


class DatasetError(CircuitflowError, ValueError):
    """A source file is malformed; the message names file and line."""


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"{path}:{lineno}: not valid JSON ({_json_problem(err)})"
                ) from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
    return rows


def _json_problem(err: json.JSONDecodeError) -> str:
    """The decoder's message, or where a trailing comma is (JSON allows none; the decoder
    says "Expecting property name" or "Extra data" instead)."""
    line = err.doc.rstrip("\n")
    before = line[: err.pos].rstrip()
    if before.endswith(",") and line[err.pos : err.pos + 1] in ("}", "]"):
        column = len(before)
    elif err.msg == "Extra data" and line[err.pos :].strip() == ",":
        column = line.index(",", err.pos) + 1
    else:
        return err.msg
    return f"trailing comma at column {column}; delete it"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _unknown_label(label, labels: Sequence[str]) -> str:
    """What is wrong with a label not in ``labels``; names the one meant when only case or
    surrounding spaces differ (labels are matched exactly)."""
    message = f"unknown label {label!r}; expected one of {', '.join(labels)}"
    meant = [x for x in labels if isinstance(label, str) and label.strip().lower() == x.lower()]
    return f"{message} (did you mean {meant[0]!r}?)" if meant else message


def _require(path: Path, lineno: int, obj: dict, keys: Sequence[str]) -> None:
    for key in keys:
        if key not in obj:
            raise DatasetError(f"{path}:{lineno}: missing key {key!r}")


def load_prompts(path: str | Path, labels: Sequence[str]) -> list[dict]:
    """Validated prompt rows with ``source`` = ``file:line``."""
    path = Path(path)
    out = []
    for lineno, obj in _read_jsonl(path):
        _require(path, lineno, obj, ("text", "label", "trigger", "span"))
        text, label, trigger, span = obj["text"], obj["label"], obj["trigger"], obj["span"]
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}:{lineno}: empty text")
        if label not in labels:
            raise DatasetError(f"{path}:{lineno}: {_unknown_label(label, labels)}")
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(i, int) for i in span)
            or not 0 <= span[0] < span[1] <= len(text)
            or text[span[0] : span[1]] != trigger
        ):
            raise DatasetError(
                f"{path}:{lineno}: span {span} does not match trigger {trigger!r} in the text"
            )
        out.append(
            {
                "text": text,
                "label": label,
                "span": list(span),
                "genre": obj.get("genre", ""),
                "frame_id": "",
                "source": f"{path.name}:{lineno}",
            }
        )
    return out


def expand_frames(path: str | Path, labels: Sequence[str]) -> list[dict]:
    """One row per (frame, label): the template with that label's phrase and its span."""
    path = Path(path)
    out = []
    seen_ids: dict[str, int] = {}
    for lineno, obj in _read_jsonl(path):
        _require(path, lineno, obj, ("frame_id", "template", "phrases"))
        frame_id, template, phrases = obj["frame_id"], obj["template"], obj["phrases"]
        if frame_id in seen_ids:
            raise DatasetError(
                f"{path}:{lineno}: duplicate frame_id {frame_id!r} (first on line "
                f"{seen_ids[frame_id]})"
            )
        seen_ids[frame_id] = lineno
        if template.count(PLACEHOLDER) != 1:
            raise DatasetError(f"{path}:{lineno}: template must contain {PLACEHOLDER} exactly once")
        unknown = sorted(set(phrases) - set(labels))
        if unknown:
            raise DatasetError(f"{path}:{lineno}: {_unknown_label(unknown[0], labels)}")
        missing = [label for label in labels if label not in phrases]
        if missing:
            raise DatasetError(f"{path}:{lineno}: frame {frame_id!r} lacks label {missing[0]!r}")
        start = template.index(PLACEHOLDER)
        for label in labels:
            phrase = phrases[label]
            if not isinstance(phrase, str) or not phrase.strip():
                raise DatasetError(f"{path}:{lineno}: empty phrase for label {label!r}")
            text = template.replace(PLACEHOLDER, phrase)
            out.append(
                {
                    "text": text,
                    "label": label,
                    "span": [start, start + len(phrase)],
                    "genre": obj.get("genre", ""),
                    "frame_id": frame_id,
                    "source": f"{path.name}:{lineno}",
                }
            )
    return out


def check_duplicates(rows: Sequence[dict]) -> None:
    """Raise on the first text (case/whitespace-insensitive) that occurs twice."""
    first: dict[str, str] = {}
    for row in rows:
        key = _norm(row["text"])
        if key in first:
            raise DatasetError(f"{row['source']}: duplicate text, first seen at {first[key]}")
        first[key] = row["source"]


def split_rows(rows: list[dict], test_fraction: float, seed: int) -> list[str]:
    """Stratified train/test split; counterfactual frames stay whole on one side.

    Free prompts are split stratified by label; frames are split by frame_id so that no
    sentence appears in both splits with a different phrase.
    """
    splits = [""] * len(rows)
    free = [i for i, r in enumerate(rows) if not r["frame_id"]]
    if free:
        counts = Counter(rows[i]["label"] for i in free)
        n_test = math.ceil(test_fraction * len(free))
        scarce = sorted(label for label, n in counts.items() if n < 2)
        if scarce or n_test < len(counts) or len(free) - n_test < len(counts):
            raise DatasetError(
                f"free prompts (no frame_id): {dict(sorted(counts.items()))} cannot be split "
                f"stratified with test_fraction {test_fraction}; give every label at least 2 "
                "free prompts and enough prompts for one of each label on both sides"
            )
        train, test = train_test_split(
            free,
            test_size=test_fraction,
            stratify=[rows[i]["label"] for i in free],
            random_state=seed,
        )
        for i in train:
            splits[i] = "train"
        for i in test:
            splits[i] = "test"
    frame_ids = sorted({r["frame_id"] for r in rows if r["frame_id"]})
    if frame_ids:
        train_f, _ = train_test_split(frame_ids, test_size=test_fraction, random_state=seed)
        train_f = set(train_f)
        for i, r in enumerate(rows):
            if r["frame_id"]:
                splits[i] = "train" if r["frame_id"] in train_f else "test"
    return splits


def permute_labels(rows: Sequence[dict], seed: int) -> list[dict]:
    """A copy of built ``rows`` whose labels are permuted (seeded), everything else kept.

    The labels of a frame's counterfactual variants are permuted among themselves (each frame
    still has one variant per label, so counterfactual pairs stay within a frame), and the free
    prompts' labels among the free prompts of the same split (so each split keeps its label
    counts). Sample ids, texts, spans and splits are unchanged: the activations of a sample
    are those of the real dataset, only its label differs.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        key = ("frame", row["frame_id"]) if row["frame_id"] else ("free", row["split"])
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    labels = [row["label"] for row in rows]
    for key in sorted(groups):
        members = groups[key]
        for i, j in zip(members, rng.permutation(members), strict=True):
            labels[i] = rows[j]["label"]
    return [{**row, "label": label} for row, label in zip(rows, labels, strict=True)]


def build_prompt_dataset(
    prompts: str | Path | None,
    frames: str | Path | None,
    labels: Sequence[str],
    test_fraction: float,
    seed: int,
    permute_seed: int | None = None,
    table_rows: Sequence[dict] = (),
) -> list[dict]:
    """Validated, split rows with stable sample ids (``p00001``, ``f001.anger``); with
    ``permute_seed``, the same rows with permuted labels (:func:`permute_labels`; the split
    is the real labels' split). ``table_rows``: rows of a text table
    (:func:`circuitflow.datasets.tables.load_table`; ``span`` may be None)."""
    rows = []
    if prompts:
        rows += load_prompts(prompts, labels)
    rows += list(table_rows)
    if frames:
        rows += expand_frames(frames, labels)
    if not rows:
        raise DatasetError("dataset has no rows: give a prompts, table and/or frames file")
    check_duplicates(rows)
    counts = {label: sum(r["label"] == label for r in rows) for label in labels}
    too_few = [label for label, n in counts.items() if n < 2]
    if too_few:
        raise DatasetError(f"label {too_few[0]!r} has {counts[too_few[0]]} rows; need at least 2")
    splits = split_rows(rows, test_fraction, seed)
    out = []
    n_free = 0
    for row, split in zip(rows, splits, strict=True):
        if row["frame_id"]:
            sample_id = f"{row['frame_id']}.{row['label']}"
        else:
            n_free += 1
            sample_id = f"p{n_free:05d}"
        out.append({"sample_id": sample_id, **row, "split": split})
    return out if permute_seed is None else permute_labels(out, permute_seed)


def label_counts(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """``{split: {label: n}}`` for the manifest."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["split"], {}).setdefault(r["label"], 0)
        out[r["split"]][r["label"]] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}
