"""Text datasets in the forms people have them: JSONL, CSV/TSV, Parquet or a
``datasets.save_to_disk`` folder, columns named in config (``datasets.<name>.table``).

Each row gives a text and a label (one column, a list of labels, or indicator columns chosen
by a :data:`MULTI_LABEL_RULES` rule), mapped through ``label_map``. The trigger span comes
from ``span_column`` (``[start, end]``), else ``trigger_column`` (its first occurrence), else
the first of the row label's ``trigger_phrases`` found in the text; else the row has no span
(``span`` None) and the trigger-dependent position ``trigger_mean`` is not extracted.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from circuitflow.datasets.prompts import DatasetError, _read_jsonl, _unknown_label
from circuitflow.workflow import schema_backed

TABLE_FORMATS = ("auto", "jsonl", "csv", "tsv", "parquet", "hf")
MULTI_LABEL_RULES = ("first", "only_single", "max")
UNMAPPED_LABELS = ("error", "drop")
MISSING_TRIGGER = ("drop_position", "drop_rows")
SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
@schema_backed("datasets", "*")
class TableSpec:
    """How to read one text table (the ``table`` keys of a dataset entry)."""

    format: str
    text_column: str
    label_column: str
    trigger_column: str | None
    span_column: str | None
    label_map: dict = field(default_factory=dict)
    multi_label: dict | None = None
    trigger_phrases: dict = field(default_factory=dict)
    unmapped_labels: str
    missing_trigger: str

    def __post_init__(self):
        for key, value, allowed in (
            ("format", self.format, TABLE_FORMATS),
            ("unmapped_labels", self.unmapped_labels, UNMAPPED_LABELS),
            ("missing_trigger", self.missing_trigger, MISSING_TRIGGER),
        ):
            if value not in allowed:
                raise DatasetError(f"{key}: {value!r} not in {', '.join(allowed)}")
        if self.multi_label is not None:
            rule = self.multi_label.get("rule", "first")
            if rule not in MULTI_LABEL_RULES:
                raise DatasetError(
                    f"multi_label.rule: {rule!r} not in {', '.join(MULTI_LABEL_RULES)}"
                )

    @classmethod
    def from_entry(cls, entry: Mapping) -> TableSpec:
        """The spec from a validated dataset entry (schema defaults filled)."""
        names = [f for f in cls.__dataclass_fields__ if f in entry]
        return cls(**{f: entry[f] for f in names})


def table_format(path: str | Path, fmt: str = "auto") -> str:
    """The table's format: ``fmt``, else from the suffix, else ``hf`` for a folder."""
    path = Path(path)
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()]
    raise DatasetError(
        f"{path}: cannot tell the format from the suffix {path.suffix!r}; set format: "
        f"{' | '.join(TABLE_FORMATS[1:])}"
    )


def read_table(path: str | Path, fmt: str = "auto") -> tuple[list[str], list[tuple[str, dict]]]:
    """(columns, [(where, row)]): ``where`` names file and line (or row) for errors."""
    path = Path(path)
    fmt = table_format(path, fmt)
    if fmt == "jsonl":
        rows = [(f"{path}:{n}", obj) for n, obj in _read_jsonl(path)]
        return list(dict.fromkeys(k for _, r in rows for k in r)), rows
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, "," if fmt == "csv" else "\t")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:
            raise DatasetError(f"{path}: not a Parquet file ({err}); set format") from None
        return table.column_names, _numbered(path, table.to_pylist())
    return _read_hf(path)


def _numbered(path: Path, rows: list[dict], prefix: str = "") -> list[tuple[str, dict]]:
    return [(f"{path}{prefix}: row {i}", r) for i, r in enumerate(rows, start=1)]


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], list[tuple[str, dict]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{path}:1: no header row; the first line names the columns")
        rows = []
        for fields in reader:
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(
                    f"{path}:{reader.line_num}: {len(fields)} fields, the header has "
                    f"{len(header)}; quote fields that contain {delimiter!r}"
                )
            rows.append((f"{path}:{reader.line_num}", dict(zip(header, fields, strict=True))))
    return header, rows


def _read_hf(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """A ``save_to_disk`` folder: a Dataset, or a DatasetDict (every split, in order);
    ClassLabel integers become their names."""
    import datasets as hf

    try:
        loaded = hf.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DatasetError(
            f"{path}: not a datasets.save_to_disk folder ({err}); give a file or such a folder"
        ) from None
    parts = loaded.items() if isinstance(loaded, hf.DatasetDict) else [("", loaded)]
    columns, rows = [], []
    for split, ds in parts:
        names = {k: f.names for k, f in ds.features.items() if isinstance(f, hf.ClassLabel)} | {
            k: f.feature.names
            for k, f in ds.features.items()
            if isinstance(f, hf.Sequence | hf.List) and isinstance(f.feature, hf.ClassLabel)
        }
        records = [_class_names(r, names) for r in ds.to_list()]
        columns += [c for c in ds.column_names if c not in columns]
        rows += _numbered(path, records, f"[{split}]" if split else "")
    return columns, rows


def _class_names(row: dict, names: Mapping[str, list[str]]) -> dict:
    out = dict(row)
    for key, vocab in names.items():
        value = out.get(key)
        if isinstance(value, int):
            out[key] = vocab[value]
        elif isinstance(value, list):
            out[key] = [vocab[v] if isinstance(v, int) else v for v in value]
    return out


def _require_columns(path: Path, columns: Sequence[str], needed: Mapping[str, str]) -> None:
    for key, column in needed.items():
        if column not in columns:
            raise DatasetError(
                f"{path}: no column {column!r} ({key}); columns: {', '.join(map(str, columns))}; "
                f"set {key}"
            )


def _active(value) -> float:
    """An indicator or score cell as a number (0 when empty or false)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value or "").strip().lower()
    if text in ("", "false", "no"):
        return 0.0
    if text in ("true", "yes"):
        return 1.0
    return float(text)


def _choose(candidates: list[tuple[str, float]], rule: str) -> str | None:
    """The label ``rule`` picks among (label, score) with score > 0; None: drop the row."""
    active = [(label, s) for label, s in candidates if s > 0]
    if not active or (rule == "only_single" and len(active) != 1):
        return None
    if rule == "max":
        return max(active, key=lambda x: x[1])[0]  # the first of equal maxima
    return active[0][0]


def _raw_labels(where: str, row: dict, spec: TableSpec) -> str | None:
    """The row's label before ``label_map`` (None: the multi-label rule drops the row)."""
    if spec.multi_label is not None:
        rule = spec.multi_label.get("rule", "first")
        candidates = []
        for column in spec.multi_label["columns"]:
            try:
                candidates.append((column, _active(row[column])))
            except ValueError:
                raise DatasetError(
                    f"{where}: column {column!r} holds {row[column]!r}; multi_label columns "
                    "hold 0/1 or scores"
                ) from None
        return _choose(candidates, rule)
    value = row[spec.label_column]
    if isinstance(value, list):  # a list of labels (e.g. GoEmotions' simplified labels)
        rule = (spec.multi_label or {}).get("rule", "only_single")
        return _choose([(str(v), 1.0) for v in value], rule)
    return None if value is None else str(value)


def _span(where: str, text: str, row: dict, spec: TableSpec, label: str, columns) -> list | None:
    trigger = row.get(spec.trigger_column) if spec.trigger_column in columns else None
    if spec.span_column in columns and row.get(spec.span_column) not in (None, ""):
        span = row[spec.span_column]
        if isinstance(span, str):
            try:
                span = json.loads(span)
            except json.JSONDecodeError:
                pass
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(i, int) for i in span)
            or not 0 <= span[0] < span[1] <= len(text)
            or (trigger not in (None, "") and text[span[0] : span[1]] != trigger)
        ):
            raise DatasetError(
                f"{where}: column {spec.span_column!r}: span {row[spec.span_column]} is not "
                f"[start, end] of {'trigger ' + repr(trigger) if trigger else 'a piece'} "
                "of the text"
            )
        return list(span)
    if trigger not in (None, ""):
        start = text.find(trigger)
        if start < 0:
            start = text.lower().find(str(trigger).lower())
        if start < 0:
            raise DatasetError(
                f"{where}: column {spec.trigger_column!r}: trigger {trigger!r} is not in the "
                "text; fix it or leave the cell empty"
            )
        return [start, start + len(trigger)]
    found = []
    for phrase in spec.trigger_phrases.get(label, []):
        m = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE)
        if m:
            found.append((m.start(), m.end()))
    return list(min(found)) if found else None


def load_table(path: str | Path, spec: TableSpec, labels: Sequence[str]) -> list[dict]:
    """Prompt rows (``text``, ``label``, ``span`` or None, ``genre``, ``source``) of a table.

    Rows whose label the multi-label rule rejects, or (``unmapped_labels: drop``) whose
    mapped label is not in ``labels``, are dropped and counted in a printed line.
    """
    path = Path(path)
    columns, rows = read_table(path, spec.format)
    needed = {"text_column": spec.text_column}
    if spec.multi_label is None:
        needed["label_column"] = spec.label_column
    else:
        needed |= {f"multi_label.columns ({c})": c for c in spec.multi_label["columns"]}
    _require_columns(path, columns, needed)
    dropped: Counter = Counter()
    out = []
    for where, row in rows:
        text = row.get(spec.text_column)
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{where}: empty text in column {spec.text_column!r}")
        raw = _raw_labels(where, row, spec)
        if raw is None:
            dropped["no single label (multi_label rule)"] += 1
            continue
        label = spec.label_map.get(raw, raw)
        if label not in labels:
            if spec.unmapped_labels == "drop":
                dropped[f"label {raw!r}"] += 1
                continue
            raise DatasetError(
                f"{where}: {_unknown_label(label, labels)}; map it with label_map or set "
                "unmapped_labels: drop"
            )
        span = _span(where, text, row, spec, label, columns)
        if span is None and spec.missing_trigger == "drop_rows":
            dropped["no trigger found"] += 1
            continue
        out.append(
            {
                "text": text,
                "label": label,
                "span": span,
                "genre": str(row.get("genre") or ""),
                "frame_id": "",
                "source": where.replace(str(path), path.name, 1),
            }
        )
    if dropped:
        print(f"{path}: dropped {sum(dropped.values())} rows: {dict(sorted(dropped.items()))}")
    missing = sum(r["span"] is None for r in out)
    if missing:
        print(
            f"{path}: {missing} of {len(out)} rows have no trigger span (no span/trigger "
            "column, no trigger_phrases match): position trigger_mean is not extracted"
        )
    return out
