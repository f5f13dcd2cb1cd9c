"""Scored photographs from CSV manifests (PARA, AADB or a generic layout), as image datasets.

Each row of the CSV names an image and its overall and attribute scores; the dataset labels
images ``high`` / ``mid`` / ``low`` by overall-score tertile and splits by image, with the same
row and image layout as :func:`circuitflow.datasets.images.build_image_dataset`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from circuitflow.datasets.images import (
    ImageDatasetError,
    center_square,
    load_image_file,
    split_sources,
    to_uint8,
)

# column aliases per layout: our name -> accepted CSV headers (first match wins)
MANIFEST_LAYOUTS = {
    "para": {
        "image": ["imageName", "image", "path"],
        "session": ["sessionId", "session"],
        "overall": ["aestheticScore_mean", "aestheticScore", "overall"],
        "composition": ["compositionScore_mean", "compositionScore", "composition"],
        "lighting": ["lightScore_mean", "lightScore", "lighting"],
        "color": ["colorScore_mean", "colorScore", "color"],
    },
    "aadb": {
        "image": ["ImageFile", "image", "path"],
        "overall": ["score", "Score", "overall"],
        "composition": ["RuleOfThirds", "composition"],
        "lighting": ["Light", "lighting"],
        "color": ["ColorHarmony", "color"],
    },
    # any CSV: a path column and score columns named as here, or renamed by ``columns``
    "generic": {
        "image": ["image", "path", "file"],
        "overall": ["overall", "score"],
        "composition": ["composition"],
        "lighting": ["lighting"],
        "color": ["color"],
    },
}
SCORE_KEYS = ("overall", "composition", "lighting", "color")


def load_score_manifest(
    path: str | Path,
    layout: str = "para",
    image_root: str | Path | None = None,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Rows ``{image, path, overall, composition, lighting, color}`` of a scored CSV in one of
    MANIFEST_LAYOUTS; ``columns`` names the CSV header of any of those keys (it replaces the
    layout's aliases for that key). Image paths are relative to ``image_root`` (default: the
    CSV's folder). Errors name the file and line."""
    path = Path(path)
    if layout not in MANIFEST_LAYOUTS:
        raise ImageDatasetError(
            f"{path}: unknown manifest layout {layout!r}; known: {', '.join(MANIFEST_LAYOUTS)}"
        )
    unknown = sorted(set(columns or {}) - {"image", "session", *SCORE_KEYS})
    if unknown:
        raise ImageDatasetError(
            f"{path}: manifest columns key {unknown[0]!r} is not one of image, session, "
            f"{', '.join(SCORE_KEYS)}"
        )
    configured = dict(columns or {})
    aliases = {**MANIFEST_LAYOUTS[layout], **{k: [v] for k, v in configured.items()}}
    root = Path(image_root) if image_root else path.parent
    try:
        fh = open(path, newline="")
    except OSError as err:
        raise ImageDatasetError(f"{path}: cannot open manifest ({err.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        columns = {}
        for key, names in aliases.items():
            found = next((n for n in names if n in header), None)
            if found is None and key in configured:
                raise ImageDatasetError(
                    f"{path}:1: no column {configured[key]!r} (manifest columns.{key}); the header "
                    f"has {', '.join(header)}"
                )
            if found is None and key in ("image", "overall"):
                raise ImageDatasetError(
                    f"{path}:1: no {key} column for layout {layout!r}; expected one of "
                    f"{', '.join(names)}"
                )
            if found is not None:
                columns[key] = found
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            if None in rec or any(rec.get(c) is None for c in columns.values()):
                raise ImageDatasetError(
                    f"{path}:{lineno}: expected {len(header)} fields, got a different number"
                )
            name = rec[columns["image"]].strip()
            if not name:
                raise ImageDatasetError(f"{path}:{lineno}: empty image path")
            if "session" in columns:
                image_path = root / rec[columns["session"]].strip() / name
                if not image_path.exists():
                    image_path = root / name
            else:
                image_path = root / name
            if not image_path.exists():
                raise ImageDatasetError(f"{path}:{lineno}: image {image_path} does not exist")
            row = {"image": Path(name).stem, "path": str(image_path)}
            for key in SCORE_KEYS:
                if key not in columns:
                    continue
                raw = rec[columns[key]].strip()
                try:
                    value = float(raw)
                except ValueError:
                    raise ImageDatasetError(
                        f"{path}:{lineno}: column {columns[key]!r} = {raw!r} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise ImageDatasetError(f"{path}:{lineno}: column {columns[key]!r} is {raw}")
                row[key] = value
            rows.append(row)
    if len(rows) < 2:
        raise ImageDatasetError(f"{path}: {len(rows)} image row(s); need at least 2")
    return rows


def build_manifest_dataset(
    path: str | Path,
    layout: str,
    size: int,
    test_fraction: float,
    seed: int,
    image_root: str | Path | None = None,
    columns: dict[str, str] | None = None,
) -> tuple[list[dict], np.ndarray]:
    """Real scored photographs: label ``high`` / ``low`` / ``mid`` by overall-score tertile
    (baseline ``low``), the overall and attribute scores as levels; split by image."""
    scored = load_score_manifest(path, layout, image_root, columns)
    overall = np.array([r["overall"] for r in scored])
    lo, hi = np.quantile(overall, [1 / 3, 2 / 3])
    splits = split_sources([r["image"] for r in scored], test_fraction, seed)
    rows, images = [], []
    for r in scored:
        img, _ = center_square(load_image_file(r["path"]), size)
        label = "high" if r["overall"] > hi else "low" if r["overall"] <= lo else "mid"
        rows.append(
            {
                "sample_id": r["image"],
                "label": label,
                "frame_id": r["image"],
                "source": r["image"],
                "attribute": "overall",
                "group": "score",
                "level": float(r["overall"]),
                "scores": {k: r[k] for k in SCORE_KEYS if k in r},
                "params": {},
                "split": splits[r["image"]],
                "image_index": len(images),
                "origin": r["path"],
            }
        )
        images.append(to_uint8(img))
    return rows, np.stack(images)
