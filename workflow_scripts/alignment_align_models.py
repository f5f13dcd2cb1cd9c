"""align_models: activation + vectors stores of two models -> results/alignment CSV.

Maps model_a -> model_b fit on train-split neutral samples (Procrustes, ridge, CCA; the
identity only for equal widths), the overlap of each emotion subspace after mapping, and at
matched depths for the k of stats.alignment_k its two nulls through the same map (maps refit
on shuffled pairings; the fitted maps on subspaces of permuted labels) plus debiased CKA and
mutual k-NN of the test samples against shuffled pairings: one tidy row per layer pair x site
x position x measure x condition x method x k (see circuitflow.alignment for every
definition). The summaries (design permutation) feed the statistics. Plus sidecar manifests.
"""

import dataclasses
import time

import pandas as pd
from threadpoolctl import threadpool_limits

from circuitflow import alignment, store
from circuitflow.workflow import run_logged


def stored_positions(cfg, activations, keys):
    """``cfg`` with the positions of ``keys`` the store lacks (no trigger spans) dropped."""
    have = store.store_positions(activations)
    lacking = sorted({x for k in keys for x in getattr(cfg, k) if x not in have})
    if not lacking:
        return cfg
    print(f"positions {lacking}: not in {activations} (samples without trigger spans); skipped")
    kept = {k: tuple(x for x in getattr(cfg, k) if x in have) for k in keys}
    return dataclasses.replace(cfg, **kept)


def main(smk):
    p = smk.params
    config = alignment.AlignmentConfig.from_config(p.alignment, seed=p.seed, k_max=p.k_max)
    config = stored_positions(config, smk.input.activations_a, ("positions", "grid_positions"))
    print(f"config: {config}")
    start = time.perf_counter()
    # Thousands of small matrix products: one BLAS thread per job is fastest and fair.
    with threadpool_limits(limits=int(smk.threads)):
        inputs = {}
        ids = None
        for side in ("a", "b"):
            inputs[side], ids = alignment.read_model_inputs(
                smk.input[f"activations_{side}"],
                smk.input[f"vectors_{side}"],
                baseline=p.baseline,
                positions=config.positions,
                sites=config.sites,
                sample_order=ids,
                model=p[f"model_{side}"],
            )
        print(f"read {len(ids)} samples in {time.perf_counter() - start:.1f}s")
        table = alignment.alignment_table(
            inputs["a"], inputs["b"], config, p.dataset, log=print, null_ks=list(p.summary_k)
        )
    table.to_csv(smk.output.table, index=False, float_format="%.6g")
    print(f"{len(table)} rows in {time.perf_counter() - start:.1f}s")
    # the tests read the table as written (its precision), as any reader of the CSV would
    summaries = alignment.alignment_summaries(pd.read_csv(smk.output.table), ks=p.summary_k)
    summaries.to_csv(smk.output.summaries, index=False)
    store.write_manifest(
        smk.output.summaries,
        kind="alignment_summaries",
        inputs={"table": smk.output.table},
        params={"summary_k": list(p.summary_k)},
    )
    store.write_manifest(
        smk.output.table,
        kind="alignment",
        inputs={name: smk.input[name] for name in smk.input.keys()},
        params={
            "dataset": p.dataset,
            "model_a": p.model_a,
            "model_b": p.model_b,
            "baseline": p.baseline,
            "alignment": alignment.config_dict(config),
            "null_k": list(p.summary_k),
        },
        seeds={
            "shuffles": config.seed,
            "label_permutations": config.seed,
            "pairing_permutations": config.seed,
            "random_subspaces": config.seed,
        },
        extra={"n_rows": len(table), "n_train_neutral": int(table["n_train_neutral"].max())},
    )


run_logged(snakemake, main)  # noqa: F821
