"""separation: vectors store -> results/vectors/{dataset}/{model}.measurements.csv.

The test-split projections of condition and baseline samples on every train-split
direction, one row per sample (circuitflow.store MEASUREMENTS layout).
"""

from circuitflow import store, vectors
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    ds = store.open_dataset(smk.input[0])
    m = vectors.separation_measurements(
        projection=ds["projection"].values,
        hooks=[str(h) for h in ds["hook"].values],
        positions=[str(x) for x in ds["position"].values],
        conditions=[str(x) for x in ds["condition"].values],
        samples=ds["sample"].values.astype(str),
        labels=ds["label"].values,
        split=ds["split"].values,
        baseline=p.baseline,
        dataset=p.dataset,
        model=p.model,
    )
    m.to_csv(smk.output[0], index=False)
    print(f"{len(m)} measurements")
    store.write_manifest(
        smk.output[0],
        kind="measurements",
        inputs={"vectors": smk.input[0]},
        params={"dataset": p.dataset, "model": p.model, "baseline": p.baseline},
    )


run_logged(snakemake, main)  # noqa: F821
