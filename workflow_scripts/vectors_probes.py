"""probes: image activation store -> results/vectors/{dataset}/{model}.probes/
(probes.csv: held-out R² / accuracy per hook x position x attribute; measurements.csv: per
test image losses of the probe, a constant baseline and shuffled-target controls)."""

from pathlib import Path

import pandas as pd

from circuitflow import store, vectors
from circuitflow.vectors import probes
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    acts = smk.input.activations
    keys = ("sample", "label", "split", "frame_id", "attribute", "level")
    coords = {key: store.read_array(acts, key) for key in keys}
    hooks = store.activation_hooks(acts)
    summary, long = probes.run_probes(
        {
            hook: vectors.finite_activations(
                store.read_array(acts, hook), acts, hook, coords["sample"]
            )
            for hook in hooks
        },
        store.store_positions(acts),
        coords,
        seed=p.seed,
        n_controls=p.n_controls,
        baseline=p.baseline,
    )
    out = Path(smk.output.probes).parent
    table = pd.DataFrame(summary)
    table.insert(0, "model", p.model)
    table.insert(0, "dataset", p.dataset)
    table.to_csv(smk.output.probes, index=False, float_format="%.6g")
    m = pd.DataFrame(long)
    m.insert(0, "model", p.model)
    m.insert(0, "dataset", p.dataset)
    m.insert(0, "phase", "probes")
    m.to_csv(smk.output.measurements, index=False, float_format="%.6g")
    best = table.sort_values("score").groupby("target").tail(1)
    print(best[["target", "hook", "position", "metric", "score", "chance"]].to_string(index=False))
    store.write_manifest(
        out,
        kind="probes",
        inputs={"activations": acts, "dataset": smk.input.dataset},
        params={
            "dataset": p.dataset,
            "model": p.model,
            "baseline": p.baseline,
            "n_controls": p.n_controls,
        },
        seeds={"controls": p.seed},
    )


run_logged(snakemake, main)  # noqa: F821
