"""build_prompts: prompt/frame JSONL sources or a text table (JSONL, CSV, TSV, Parquet,
save_to_disk folder) -> results/datasets/{dataset}/samples.jsonl (a calibration copy,
``{dataset}.permuted{seed}``, with its labels permuted)."""

from pathlib import Path

from circuitflow import datasets, store
from circuitflow.workflow import run_logged


def _inputs(smk) -> dict:
    """Input paths to key the manifest by; a save_to_disk folder by each of its files."""
    inputs = dict(smk.input.items())
    table = inputs.get("table")
    if table and Path(table).is_dir():
        inputs["table"] = sorted(str(f) for f in Path(table).rglob("*") if f.is_file())
    return inputs


def main(smk):
    p = smk.params
    table = smk.input.get("table")
    spec = datasets.TableSpec.from_entry(p.table_spec)
    table_rows = datasets.load_table(table, spec, p.labels) if table else []
    rows = datasets.build_prompt_dataset(
        smk.input.get("prompts"),
        smk.input.get("frames"),
        labels=p.labels,
        test_fraction=p.test_fraction,
        seed=p.seed,
        permute_seed=p.permute_labels,
        table_rows=table_rows,
    )
    store.write_samples(smk.output[0], rows)
    counts = datasets.label_counts(rows)
    permuted = "" if p.permute_labels is None else f" (labels permuted, seed {p.permute_labels})"
    print(f"{len(rows)} samples{permuted}: {counts}")
    no_span = sum(r["span"] is None for r in rows)
    seeds = {"split": p.seed}
    if p.permute_labels is not None:
        seeds["permute_labels"] = p.permute_labels
    store.write_manifest(
        smk.output[0],
        kind="dataset",
        inputs=_inputs(smk),
        params={
            "dataset": p.dataset,
            "labels": list(p.labels),
            "test_fraction": p.test_fraction,
            **({"table": dict(p.table_spec)} if p.table_spec else {}),
        },
        seeds=seeds,
        extra={
            "counts": counts,
            "n_frames": len({r["frame_id"] for r in rows if r["frame_id"]}),
            "n_without_trigger_span": no_span,
        },
    )


run_logged(snakemake, main)  # noqa: F821
