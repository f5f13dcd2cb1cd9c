"""alignment_bootstrap: activation stores + alignment table -> {a}__{b}.bootstrap.csv.

Replicates over train samples (stratified by label, seeded) of the emotion-subspace overlaps
before/after every map, with the random-subspace baseline, for the layer pairs chosen by
alignment.bootstrap_* (see circuitflow.alignment.bootstrap_table). Plus a sidecar manifest.
"""

import dataclasses
import time

import pandas as pd
from threadpoolctl import threadpool_limits

from circuitflow import alignment, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    config = alignment.AlignmentConfig.from_config(p.alignment, seed=p.seed, k_max=p.k_max)
    boot = alignment.BootstrapConfig.from_config(p.bootstrap)
    have = store.store_positions(smk.input.activations_a)
    if any(x not in have for x in boot.positions):
        print(f"bootstrap positions {list(boot.positions)}: the store has {have}; skipped")
        boot = dataclasses.replace(boot, positions=tuple(x for x in boot.positions if x in have))
    print(f"config: {config}\nbootstrap: {boot}")
    start = time.perf_counter()
    table = pd.read_csv(smk.input.table)
    with threadpool_limits(limits=int(smk.threads)):
        out = alignment.bootstrap_table(
            table,
            smk.input.activations_a,
            smk.input.activations_b,
            p.baseline,
            config,
            boot,
            log=print,
        )
    out.to_csv(smk.output[0], index=False, float_format="%.6g")
    print(f"{len(out)} rows in {time.perf_counter() - start:.1f}s")
    store.write_manifest(
        smk.output[0],
        kind="alignment_bootstrap",
        inputs={name: smk.input[name] for name in smk.input.keys()},
        params={
            "dataset": p.dataset,
            "model_a": p.model_a,
            "model_b": p.model_b,
            "baseline": p.baseline,
            "alignment": alignment.config_dict(config),
            "bootstrap": {
                "n_bootstrap": boot.n_bootstrap,
                "sites": list(boot.sites),
                "positions": list(boot.positions),
                "pairs": boot.pairs,
            },
        },
        seeds={"bootstrap": config.seed, "random_subspaces": config.seed},
        extra={"n_rows": len(out)},
    )


run_logged(snakemake, main)  # noqa: F821
