"""build_prompts: prompt/frame JSONL sources -> results/datasets/{dataset}/samples.jsonl."""

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
    )
    store.write_samples(smk.output[0], rows)
    counts = datasets.label_counts(rows)
    print(f"{len(rows)} samples: {counts}")
    store.write_manifest(
        smk.output[0],
        kind="dataset",
        inputs=dict(smk.input.items()),
        params={"dataset": p.dataset, "labels": list(p.labels), "test_fraction": p.test_fraction},
        seeds={"split": p.seed},
        extra={"counts": counts, "n_frames": len({r["frame_id"] for r in rows if r["frame_id"]})},
    )


run_logged(snakemake, main)  # noqa: F821
