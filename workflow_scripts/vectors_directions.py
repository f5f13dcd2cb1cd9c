"""directions: activation store -> results/vectors/{dataset}/{model}.zarr.

Per hook x position x condition: unit mean-difference direction and norm (train split),
projections of every sample, the top-k PCA subspace of per-sample difference vectors, and
cosine matrices between conditions and across hooks.
"""

import numpy as np

from circuitflow import store, vectors
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    acts = smk.input.activations
    conditions = [label for label in p.labels if label != p.baseline]
    coords = store.read_sample_coords(acts)
    labels, train = coords["label"], coords["split"] == "train"
    hooks = store.activation_hooks(acts)
    positions = store.store_positions(acts)
    P, C, K = len(positions), len(conditions), p.k_max
    out = {
        name: []
        for name in (
            "direction",
            "norm",
            "projection",
            "subspace",
            "singular_values",
            "explained_variance_ratio",
        )
    }
    for hook in hooks:
        a = store.read_array(acts, hook)  # [sample, position, d_model]
        unit, norm = vectors.directions(a, labels, train, conditions, p.baseline)
        out["direction"].append(unit)
        out["norm"].append(norm)
        out["projection"].append(vectors.project(a, unit))
        comps = np.zeros((P, C, K, a.shape[-1]))
        sing = np.full((P, C, K), np.nan)
        ratio = np.full((P, C, K), np.nan)
        for i in range(P):
            for j, condition in enumerate(conditions):
                diffs = vectors.difference_vectors(a[:, i], labels, condition, p.baseline, train)
                c, s, r = vectors.pca_subspace(diffs, K)
                comps[i, j, : len(c)], sing[i, j, : len(s)], ratio[i, j, : len(r)] = c, s, r
        out["subspace"].append(comps)
        out["singular_values"].append(sing)
        out["explained_variance_ratio"].append(ratio)
    # hooks of a CNN differ in width: zero-pad the feature axis to the widest (hook_width says
    # how many entries are real); cosines across hooks of different widths are NaN.
    widths = np.array([d.shape[-1] for d in out["direction"]])
    for name in ("direction", "subspace"):
        out[name] = [
            np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, widths.max() - v.shape[-1])])
            for v in out[name]
        ]
    out = {name: np.stack(values) for name, values in out.items()}
    unit = out["direction"]  # [hook, position, condition, d_model]
    cosine_hooks = vectors.cosine_matrix(unit.transpose(1, 2, 0, 3))
    cosine_hooks[..., widths[:, None] != widths[None, :]] = np.nan
    dims = ["hook", "position", "condition"]
    ds = store.vectors_dataset(
        hooks,
        conditions,
        coords,
        {
            "direction": ([*dims, "d_model"], unit),
            "norm": (dims, out["norm"]),
            "projection": ([*dims, "sample"], out["projection"]),
            "subspace": ([*dims, "component", "d_model"], out["subspace"]),
            "singular_values": ([*dims, "component"], out["singular_values"]),
            "explained_variance_ratio": ([*dims, "component"], out["explained_variance_ratio"]),
            "cosine_conditions": ([*dims, "condition_b"], vectors.cosine_matrix(unit)),
            "cosine_hooks": (["position", "condition", "hook", "hook_b"], cosine_hooks),
            "hook_width": (["hook"], widths),
        },
        attrs={
            "dataset": p.dataset,
            "model": p.model,
            "baseline": p.baseline,
            "direction": "mean(condition) - mean(baseline) on the train split, unit norm",
            "subspace": "uncentred full SVD of train difference vectors (sample - mean baseline); "
            "sign: mean difference projects positively",
        },
        positions=positions,
    )
    store.write_dataset(smk.output[0], ds)
    store.write_manifest(
        smk.output[0],
        kind="vectors",
        inputs={"activations": acts, "dataset": smk.input.dataset},
        params={
            "dataset": p.dataset,
            "model": p.model,
            "conditions": conditions,
            "baseline": p.baseline,
            "k_max": K,
        },
    )


run_logged(snakemake, main)  # noqa: F821
