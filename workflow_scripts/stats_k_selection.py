"""k_selection: alignment tables + their bootstrap replicates -> results/stats/k_selection.csv."""

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def main(smk):
    frames = []
    for table_path, boot_path in zip(smk.input.tables, smk.input.bootstrap, strict=True):
        table = pd.read_csv(table_path)
        boot = pd.read_csv(boot_path)
        n_random = store.read_manifest(table_path)["params"]["alignment"]["n_random"]
        frames.append(
            stats.k_selection(table, boot, n_random, smk.params.stats["confidence_level"])
        )
        print(f"{boot_path}: {len(boot)} replicate rows")
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else stats.k_selection(pd.DataFrame(), pd.DataFrame(), 0)
    )
    if len(frames) > 1:  # one BH correction over every selection of every pair
        out = stats.adjust_k_selection(out)
    out.to_csv(smk.output[0], index=False, float_format="%.6g")
    chosen = out[out.selected]
    print(f"{len(chosen)} selections; {int((chosen.p_fdr_bh < 0.05).sum())} with p_fdr_bh < 0.05")
    store.write_manifest(
        smk.output[0],
        kind="k_selection",
        inputs={"tables": list(smk.input.tables), "bootstrap": list(smk.input.bootstrap)},
        params={"confidence_level": smk.params.stats["confidence_level"]},
    )


run_logged(snakemake, main)  # noqa: F821
