"""effect_sizes: every vectors store -> results/stats/effect_sizes.csv (+ manifest sidecar)."""

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = []
    for path in smk.input.vectors:
        ds = store.open_dataset(path)
        rows += stats.separation_rows(
            projection=ds["projection"].values,
            hooks=[str(h) for h in ds["hook"].values],
            positions=[str(x) for x in ds["position"].values],
            conditions=[str(x) for x in ds["condition"].values],
            labels=ds["label"].values,
            split=ds["split"].values,
            baseline=ds.attrs["baseline"],
            dataset=ds.attrs["dataset"],
            model=ds.attrs["model"],
            seed=p.seed,
            n_resamples=p.stats["bootstrap_resamples"],
            confidence_level=p.stats["confidence_level"],
        )
    table = stats.finalize(rows)
    table.to_csv(smk.output[0], index=False, float_format="%.6g")
    print(f"{len(table)} rows; {int((table.p_fdr_bh < 0.05).sum())} with p_fdr_bh < 0.05")
    store.write_manifest(
        smk.output[0],
        kind="effect_sizes",
        inputs={"vectors": list(smk.input.vectors)},
        params={"stats": dict(p.stats)},
        seeds={"bootstrap": p.seed},
    )


run_logged(snakemake, main)  # noqa: F821
