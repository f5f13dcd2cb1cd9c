"""Text datasets from JSONL, CSV/TSV, Parquet and save_to_disk folders (datasets.tables):
readers, column mapping, label_map, multi-label rules, phrase-located triggers, one-line
errors; and two workflow runs on tables without spans or frames."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from circuitflow import store
from circuitflow.datasets import (
    DatasetError,
    TableSpec,
    build_prompt_dataset,
    load_table,
    read_table,
)
from circuitflow.workflow import schema_defaults

LABELS = ["gratitude", "anger", "neutral"]
ROWS = [
    {"text": "Thank you so much for the help.", "label": "gratitude"},
    {"text": "I am furious about the delay.", "label": "anger"},
    {"text": "The meeting is at noon.", "label": "neutral"},
]


def spec(**kw) -> TableSpec:
    return TableSpec(**kw)


def write_csv(path: Path, rows, delimiter=",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def test_spec_defaults_are_the_schema_defaults():
    d = schema_defaults("datasets", "*")
    s = TableSpec()
    assert (s.format, s.text_column, s.label_column) == (
        d["format"],
        d["text_column"],
        d["label_column"],
    )
    assert (s.trigger_column, s.span_column) == ("trigger", "span")
    assert (s.unmapped_labels, s.missing_trigger) == ("error", "drop_position")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet", "hf"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt in ("csv", "tsv"):
        path = write_csv(tmp_path / f"d.{fmt}", ROWS, "," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        pd.DataFrame(ROWS).to_parquet(path)
    else:
        import datasets as hf

        path = tmp_path / "d_hf"
        hf.Dataset.from_list(ROWS).save_to_disk(str(path))
    columns, rows = read_table(path)
    assert columns == ["text", "label"]
    assert [r for _, r in rows] == ROWS
    out = load_table(path, spec(), LABELS)
    assert [r["label"] for r in out] == ["gratitude", "anger", "neutral"]
    assert all(r["span"] is None for r in out)
    first = {"jsonl": "d.jsonl:1", "csv": "d.csv:2", "tsv": "d.tsv:2"}
    want = first.get(fmt, f"{path.name}: row 1")
    assert out[0]["source"] == want


def test_explicit_format_overrides_the_suffix(tmp_path):
    path = write_csv(tmp_path / "d.txt", ROWS, "\t")
    with pytest.raises(DatasetError, match=r"d\.txt: cannot tell the format .* set format"):
        read_table(path)
    assert len(read_table(path, "tsv")[1]) == 3


def test_hf_dataset_dict_class_labels_and_label_map(tmp_path):
    import datasets as hf

    features = hf.Features(
        {"sentence": hf.Value("string"), "y": hf.ClassLabel(names=["neg", "pos", "none"])}
    )
    data = {"sentence": ["I hate this.", "Thanks, love it.", "It is a chair."], "y": [0, 1, 2]}
    dd = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(data, features=features),
            "test": hf.Dataset.from_dict(
                {"sentence": ["Awful!", "Great, thanks."], "y": [0, 1]}, features=features
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    s = spec(
        text_column="sentence",
        label_column="y",
        label_map={"neg": "anger", "pos": "gratitude", "none": "neutral"},
    )
    out = load_table(tmp_path / "dd", s, LABELS)
    assert [r["label"] for r in out] == ["anger", "gratitude", "neutral", "anger", "gratitude"]
    assert out[3]["source"] == "dd[test]: row 1"


def test_label_map_renames_and_unknown_label_names_row_and_fix(tmp_path):
    rows = [*ROWS, {"text": "Oops, my fault.", "label": "sorry"}]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(), LABELS)
    assert str(err.value) == (
        f"{path}:5: unknown label 'sorry'; expected one of gratitude, anger, neutral; "
        "map it with label_map or set unmapped_labels: drop"
    )
    out = load_table(path, spec(label_map={"sorry": "neutral"}), LABELS)
    assert [r["label"] for r in out][-1] == "neutral"
    assert len(load_table(path, spec(unmapped_labels="drop"), LABELS)) == 3


def test_missing_column_names_file_and_available_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS)
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(text_column="sentence"), LABELS)
    assert str(err.value) == (
        f"{path}: no column 'sentence' (text_column); columns: text, label; set text_column"
    )


def test_bad_csv_row_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nThanks a lot,gratitude\nWell, this is bad,anger\n")
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(), LABELS)
    assert str(err.value) == (
        f"{path}:3: 3 fields, the header has 2; quote fields that contain ','"
    )


def test_bad_jsonl_line_and_empty_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "Thanks", "label": "gratitude"}\n{"text": "x", "label": "anger",}\n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: not valid JSON \(trailing comma"):
        load_table(path, spec(), LABELS)
    path.write_text('{"text": "Thanks", "label": "gratitude"}\n{"text": " ", "label": "anger"}\n')
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(), LABELS)
    assert str(err.value) == f"{path}:2: empty text in column 'text'"


def test_multi_label_rules(tmp_path):
    rows = [  # GoEmotions-style indicator columns
        {"text": "Thanks, and I am angry.", "gratitude": 1, "anger": 1, "neutral": 0},
        {"text": "Thanks!", "gratitude": 1, "anger": 0, "neutral": 0},
        {"text": "Nothing at all.", "gratitude": 0, "anger": 0, "neutral": 0},
        {"text": "Grr, thanks.", "gratitude": 1, "anger": 3, "neutral": 0},
    ]
    path = tmp_path / "g.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cols = ["gratitude", "anger", "neutral"]

    def labels(rule):
        out = load_table(path, spec(multi_label={"columns": cols, "rule": rule}), LABELS)
        return [(r["text"][:5], r["label"]) for r in out]

    assert labels("first") == [
        ("Thank", "gratitude"),
        ("Thank", "gratitude"),
        ("Grr, ", "gratitude"),
    ]
    assert labels("only_single") == [("Thank", "gratitude")]
    assert labels("max") == [("Thank", "gratitude"), ("Thank", "gratitude"), ("Grr, ", "anger")]
    with pytest.raises(DatasetError, match=r"no column 'joy' \(multi_label.columns \(joy\)\)"):
        load_table(path, spec(multi_label={"columns": ["joy"]}), LABELS)


def test_list_label_column_keeps_single_label_rows(tmp_path):
    import datasets as hf

    ds = hf.Dataset.from_dict(
        {"text": ["Thanks.", "Thanks, grr.", "Grr."], "labels": [["g"], ["g", "a"], ["a"]]}
    )
    ds.save_to_disk(str(tmp_path / "go"))
    s = spec(label_column="labels", label_map={"g": "gratitude", "a": "anger"})
    out = load_table(tmp_path / "go", s, LABELS)
    assert [r["label"] for r in out] == ["gratitude", "anger"]


def test_spans_from_span_trigger_columns_and_phrases(tmp_path):
    rows = [
        {
            "text": "Oh thank you, Ana.",
            "label": "gratitude",
            "trigger": "thank you",
            "span": "[3, 12]",
        },
        {"text": "I am FURIOUS now.", "label": "anger", "trigger": "furious", "span": ""},
        {"text": "The bus is late.", "label": "neutral", "trigger": "", "span": ""},
    ]
    path = write_csv(tmp_path / "t.csv", rows)
    out = load_table(path, spec(), LABELS)
    assert [r["span"] for r in out] == [[3, 12], [5, 12], None]
    phrases = {"neutral": ["bus", "late"], "anger": ["livid"]}
    out = load_table(
        path, spec(trigger_column=None, span_column=None, trigger_phrases=phrases), LABELS
    )
    assert [r["span"] for r in out] == [None, None, [4, 7]]
    out = load_table(
        path,
        spec(
            trigger_column=None,
            span_column=None,
            trigger_phrases=phrases,
            missing_trigger="drop_rows",
        ),
        LABELS,
    )
    assert [r["text"] for r in out] == ["The bus is late."]


def test_phrases_match_whole_words_case_insensitively(tmp_path):
    path = write_csv(
        tmp_path / "p.csv",
        [{"text": "Thanksgiving, then THANKS again.", "label": "gratitude"}],
    )
    out = load_table(path, spec(trigger_phrases={"gratitude": ["thanks"]}), LABELS)
    assert out[0]["span"] == [19, 25]
    assert out[0]["text"][19:25] == "THANKS"


def test_bad_span_and_absent_trigger_name_row_and_column(tmp_path):
    rows = [{"text": "Thanks a lot.", "label": "gratitude", "trigger": "Thanks", "span": "[1, 7]"}]
    path = write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(), LABELS)
    assert str(err.value) == (
        f"{path}:2: column 'span': span [1, 7] is not [start, end] of trigger 'Thanks' of the text"
    )
    rows[0].update(span="", trigger="cheers")
    path = write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(DatasetError) as err:
        load_table(path, spec(), LABELS)
    assert str(err.value) == (
        f"{path}:2: column 'trigger': trigger 'cheers' is not in the text; fix it or leave "
        "the cell empty"
    )


def test_built_dataset_keeps_missing_spans_as_null(tmp_path):
    rows = [
        {"text": f"Note {i} {w}.", "label": lab}
        for i in range(4)
        for lab, w in [("gratitude", "thanks"), ("anger", "grr"), ("neutral", "ok")]
    ]
    path = write_csv(tmp_path / "d.csv", rows)
    table_rows = load_table(path, spec(), LABELS)
    out = build_prompt_dataset(None, None, LABELS, 0.5, 0, table_rows=table_rows)
    assert len(out) == 12 and {r["split"] for r in out} == {"train", "test"}
    assert out[0]["sample_id"] == "p00001" and out[0]["span"] is None
    store.write_samples(tmp_path / "ds", out)
    assert store.read_samples(tmp_path / "ds")[0]["span"] is None


def test_tokenize_and_extraction_positions_without_spans():
    from circuitflow.core.tokens import Tokenized
    from circuitflow.extract.text import text_positions

    with_span = Tokenized(np.arange(4), np.array([1, 2]), 0)
    without = Tokenized(np.arange(4), np.array([], dtype=np.int64), 0)
    assert text_positions([with_span, with_span], ["a", "b"]) == store.POSITIONS
    assert text_positions([with_span, without], ["a", "b"]) == ("last", "mean")


# ---------------------------------------------------------------- workflow runs
TARGET = "results/stats/effect_sizes.csv"


def _table_config(models, table, **entry):
    from test_workflow import _config

    cfg = _config(models)
    cfg["datasets"] = {
        "tab": {
            "table": str(table),
            "labels": LABELS,
            "baseline": "neutral",
            "test_fraction": 0.5,
            **entry,
        }
    }
    cfg["extract"] = {"layers": [0, 1]}
    cfg["vectors"] = {"specificity_folds": 2}
    cfg["steering"] = {"n_prompts": 2, "max_new_tokens": 3, "random_seeds": [], "layers": [1]}
    cfg["calibration"] = {"seeds": []}
    return cfg


def _table_rows(n=6):
    words = {"gratitude": "thank you", "anger": "I am furious", "neutral": "the bus"}
    return [
        {"text": f"Note {i}: {w}, said person {i}.", "label": lab}
        for i in range(n)
        for lab, w in words.items()
    ]


@pytest.fixture(scope="module")
def one_model(tiny_model_dirs):
    return {"tiny-llama": {"source": str(tiny_model_dirs["llama"])}}


def _check_run(work, proc):
    effects = pd.read_csv(work / TARGET)
    assert {"vectors", "steering"} <= set(effects.phase)
    assert "patching" not in set(effects.phase)
    vec = effects[effects.phase == "vectors"]
    assert set(vec.position) == {"last", "mean"}
    assert set(vec.condition) == {"gratitude", "anger"}
    assert store.store_positions(work / "results/activations/tab/tiny-llama.zarr") == [
        "last",
        "mean",
    ]
    logs = "".join(p.read_text() for p in (work / "logs").rglob("*.log"))
    assert "position trigger_mean is not stored" in logs
    assert "steering with the directions at position 'last'" in logs
    assert "no frames (counterfactual pairs), so patching skips it" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_plain_csv_runs_to_effect_sizes(tmp_path, one_model):
    from test_workflow import snakemake

    table = write_csv(tmp_path / "plain.csv", _table_rows())
    work = tmp_path / "w"
    proc = snakemake(work, _table_config(one_model, table), TARGET)
    _check_run(work, proc)
    manifest = store.read_manifest(work / "results/datasets/tab")
    assert manifest["n_without_trigger_span"] == 18


@pytest.mark.slow
def test_save_to_disk_folder_runs_to_effect_sizes(tmp_path, one_model):
    import datasets as hf
    from test_workflow import snakemake

    rows = _table_rows()
    names = ["pos", "neg", "none"]
    ds = hf.Dataset.from_dict(
        {"sentence": [r["text"] for r in rows], "y": [LABELS.index(r["label"]) for r in rows]},
        features=hf.Features({"sentence": hf.Value("string"), "y": hf.ClassLabel(names=names)}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    cfg = _table_config(
        one_model,
        tmp_path / "hf",
        text_column="sentence",
        label_column="y",
        label_map={"pos": "gratitude", "neg": "anger", "none": "neutral"},
    )
    work = tmp_path / "w"
    proc = snakemake(work, cfg, TARGET)
    _check_run(work, proc)
    assert os.path.isdir(work / "results/datasets/tab")
