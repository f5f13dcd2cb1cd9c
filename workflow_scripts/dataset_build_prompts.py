"""build_prompts: prompt/frame JSONL sources -> results/datasets/{dataset}/samples.jsonl
(a calibration copy, ``{dataset}.permuted{seed}``, with its labels permuted)."""

from circuitflow import datasets, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = datasets.build_prompt_dataset(
        smk.input.get("prompts"),
        smk.input.get("frames"),
        labels=p.labels,
        test_fraction=p.test_fraction,
        seed=p.seed,
        permute_seed=p.permute_labels,
    )
    store.write_samples(smk.output[0], rows)
    counts = datasets.label_counts(rows)
    permuted = "" if p.permute_labels is None else f" (labels permuted, seed {p.permute_labels})"
    print(f"{len(rows)} samples{permuted}: {counts}")
    seeds = {"split": p.seed}
    if p.permute_labels is not None:
        seeds["permute_labels"] = p.permute_labels
    store.write_manifest(
        smk.output[0],
        kind="dataset",
        inputs=dict(smk.input.items()),
        params={"dataset": p.dataset, "labels": list(p.labels), "test_fraction": p.test_fraction},
        seeds=seeds,
        extra={"counts": counts, "n_frames": len({r["frame_id"] for r in rows if r["frame_id"]})},
    )


run_logged(snakemake, main)  # noqa: F821
