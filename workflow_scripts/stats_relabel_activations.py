"""relabel_activations: the real dataset's activation store -> a permuted copy's
(results/activations/{dataset}.permuted{seed}/{model}.zarr): the same arrays (hard-linked),
the copy's labels."""

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = store.read_samples(smk.input.dataset)
    counts = stats.relabel_store(smk.input.activations, smk.output[0], rows)
    print(f"{p.dataset}/{p.model}: {len(rows)} samples relabelled from {p.source}; {counts}")
    source = store.read_manifest(smk.input.activations)
    store.write_manifest(
        smk.output[0],
        kind="activations",
        inputs={"activations": smk.input.activations, "dataset": smk.input.dataset},
        params={**source["params"], "dataset": p.dataset, "relabelled_from": p.source},
        seeds=source.get("seeds", {}),
        extra={"files_linked": counts["linked"], "files_copied": counts["copied"]},
    )


run_logged(snakemake, main)  # noqa: F821
