"""User image-caption data through the caption dataset builder: a CSV of ``image_path,
caption`` (optional ``split``, ``source``), and :func:`caption_dataset_from_config`, the one
call the build rule makes for a ``kind: captions`` entry (CSV, or views of photos)."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from circuitflow.datasets.captions import (
    CSV_COLUMNS,
    CSV_OPTIONAL,
    UNLABELED,
    CaptionDatasetError,
    CaptionSpec,
    build_caption_dataset,
)
from circuitflow.datasets.images import (
    BUILTIN_SOURCES,
    ImageDatasetError,
    center_square,
    load_image_file,
    split_sources,
    to_uint8,
)


def load_caption_csv(path: str | Path) -> list[dict]:
    """Validated rows of a caption CSV: ``image_path`` (relative to the CSV's folder, or
    absolute), ``caption``, optional ``split`` (train | test) and ``source`` (photo id; default
    the image path). Returns ``[{"row", "path", "image", "caption", "split", "source"}]`` with
    ``row`` counted as in a spreadsheet (header = row 1)."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise CaptionDatasetError(f"{path}: cannot open caption CSV ({err.strerror})") from None
    out, split_of = [], {}
    with fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        for col in CSV_COLUMNS:
            if col not in header:
                raise CaptionDatasetError(
                    f"{path} row 1: missing column {col!r}; need {', '.join(CSV_COLUMNS)} "
                    f"(optional: {', '.join(CSV_OPTIONAL)})"
                )
        for n, rec in enumerate(reader, start=2):
            vals = {c: (rec.get(c) or "").strip() for c in (*CSV_COLUMNS, *CSV_OPTIONAL)}
            where = f"{path} row {n}"
            raw = vals["image_path"]
            if not raw:
                raise CaptionDatasetError(f"{where}: column 'image_path': empty")
            image = Path(raw).expanduser()
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise CaptionDatasetError(f"{where}: column 'image_path': no such file {raw!r}")
            if not vals["caption"]:
                raise CaptionDatasetError(f"{where}: column 'caption': empty caption")
            source = vals["source"] or Path(raw).as_posix()
            split = vals["split"] or None
            if "split" in header:
                if split not in ("train", "test"):
                    raise CaptionDatasetError(
                        f"{where}: column 'split': {vals['split']!r} is not train or test"
                    )
                if split_of.setdefault(source, split) != split:
                    raise CaptionDatasetError(
                        f"{where}: column 'split': source {source!r} is in both train and test"
                    )
            out.append(
                {
                    "row": n,
                    "path": str(image),
                    "image": raw,
                    "caption": vals["caption"],
                    "split": split,
                    "source": source,
                }
            )
    if not out:
        raise CaptionDatasetError(f"{path}: no caption rows")
    return out


def build_csv_caption_dataset(
    path: str | Path, size: int, test_fraction: float, seed: int
) -> tuple[list[dict], np.ndarray]:
    """(rows, images uint8 [n_rows, size, size, 3]) for a caption CSV: the center square of
    each image, its caption as given; split by the ``split`` column or by source. Rows have
    no attribute levels (label :data:`UNLABELED`, template -1), hence no distractors."""
    records = load_caption_csv(path)
    splits = (
        {r["source"]: r["split"] for r in records}
        if records[0]["split"]
        else split_sources(sorted({r["source"] for r in records}), test_fraction, seed)
    )
    rows, ims, cache, count = [], [], {}, {}
    for r in records:
        if r["path"] not in cache:
            try:
                img = load_image_file(r["path"])
            except ImageDatasetError:
                raise CaptionDatasetError(
                    f"{path} row {r['row']}: column 'image_path': cannot read image {r['image']!r}"
                ) from None
            out, crop = center_square(img, size)
            xi, yi, si, _ = crop["window"]
            h, w = img.shape[:2]
            cache[r["path"]] = (to_uint8(out), [xi / w, yi / h, si / w, si / h])
        im, box = cache[r["path"]]
        k = count[r["source"]] = count.get(r["source"], -1) + 1
        rows.append(
            {
                "sample_id": f"{r['source']}.{k}",
                "label": UNLABELED,
                "frame_id": r["source"],
                "source": r["source"],
                "origin": r["path"],
                "content": "",
                "split": splits[r["source"]],
                "image_index": len(ims),
                "caption": r["caption"],
                "template": -1,
                "crop_box": box,
                "flip": False,
                "scale": 1.0,
                "csv_row": r["row"],
            }
        )
        ims.append(im)
    return rows, np.stack(ims)


def caption_dataset_from_config(
    entry: Mapping, seed: int, name: str = "captions"
) -> tuple[list[dict], np.ndarray]:
    """(rows, images) for one ``config['datasets'][name]`` entry: ``captions.csv`` if given,
    else views of ``images.sources`` with :class:`CaptionSpec` from the entry."""
    section = entry.get("captions") or {}
    test_fraction = entry.get("test_fraction", 0.3)
    images_block = entry.get("images") or {}
    if section.get("csv"):
        size = images_block.get("size", CaptionSpec.size)
        return build_csv_caption_dataset(section["csv"], size, test_fraction, seed)
    spec = CaptionSpec.from_config(entry, name)
    if not images_block.get("sources"):
        raise CaptionDatasetError(
            f"datasets.{name}.images.sources: give photos (builtin:<name>, files, folders; "
            f"builtins: {', '.join(sorted(BUILTIN_SOURCES))}) or datasets.{name}.captions.csv"
        )
    return build_caption_dataset(images_block["sources"], spec, test_fraction, seed)
