"""directions: activation store -> results/vectors/{dataset}/{model}.zarr (directions, projections)."""

import numpy as np

from circuitflow import store, vectors
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    acts = smk.input.activations
    conditions = [label for label in p.labels if label != p.baseline]
    coords = store.read_sample_coords(acts)
    train = coords["split"] == "train"
    hooks = store.activation_hooks(acts)
    unit, norm, projection = [], [], []
    for hook in hooks:
        a = store.read_array(acts, hook)  # [sample, position, d_model]
        u, n = vectors.directions(a, coords["label"], train, conditions, p.baseline)
        unit.append(u)
        norm.append(n)
        projection.append(vectors.project(a, u))
    store.write_vectors(
        smk.output[0],
        hooks=hooks,
        positions=list(store.POSITIONS),
        conditions=conditions,
        unit=np.stack(unit),
        norm=np.stack(norm),
        projection=np.stack(projection),
        coords=coords,
        attrs={"dataset": p.dataset, "model": p.model, "baseline": p.baseline,
               "method": "mean difference (train split), unit-normalised"},
    )
    store.write_manifest(
        smk.output[0],
        kind="vectors",
        inputs={"activations": acts, "dataset": smk.input.dataset},
        params={"dataset": p.dataset, "model": p.model, "conditions": conditions,
                "baseline": p.baseline},
    )


run_logged(snakemake, main)  # noqa: F821
