"""directions: activation store -> results/vectors/{dataset}/{model}.zarr.

Per hook x position x condition: unit mean-difference direction and norm (train split),
projections of every sample, the top-k PCA subspace of per-sample difference vectors, and
cosine matrices between conditions and across hooks. Besides the emotion-vs-neutral
direction, the emotion-specific ones (vs the other emotions; the multinomial probe's), their
cosines to the shared axis, projections, and the train-split cross-validated specificity
AUROC the separation rule chooses each hook by (circuitflow.vectors.specificity).
"""

import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

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
    stored = store.open_dataset(acts)
    d_hooks = [stored[hook].shape[-1] for hook in hooks]
    n_train = {c: int((train & (labels == c)).sum()) for c in conditions}
    P, K = len(positions), vectors.kept_components(p.k_max, d_hooks, n_train, p.model)
    if K < p.k_max:
        print(
            f"vectors.k_max {p.k_max}: at most {K} train samples per condition, so the "
            f"subspaces keep {K} components (train samples: {n_train})"
        )
    cfg = vectors.SpecificityConfig(seed=p.seed, **p.specificity)
    contrast_names = {k: store.DIRECTION_VARIABLES[k] for k in vectors.CONTRASTS}
    projection_names = {k: vectors.projection_variable(k) for k in vectors.CONTRASTS}
    folds = vectors.cv_folds(
        labels,
        vectors.cv_groups(coords["sample"], coords["frame_id"]),
        train,
        [*conditions, p.baseline],
        cfg.folds,
        cfg.seed,
    )
    print(f"specificity: {len(folds)} train-split CV folds; probe {cfg.probe}")
    out = {
        name: []
        for name in (
            *contrast_names.values(),
            *projection_names.values(),
            "norm",
            "shared_axis",
            "cosine_to_shared_axis",
            "specificity_cv_auroc",
            "subspace",
            "singular_values",
            "explained_variance_ratio",
        )
    }
    seconds, not_converged = 0.0, 0
    # no BLAS threads beyond the rule's own: these small SVDs and solves ran 8-50x slower
    # with two OpenBLAS threads on a busy 2-core machine (0.64 s vs 5-32 s per hook)
    with threadpool_limits(limits=int(getattr(smk, "threads", 1) or 1)):
        for hook in hooks:
            a = store.read_array(acts, hook)  # [sample, position, d_model]
            a = vectors.finite_activations(a, acts, hook, coords["sample"]).astype(np.float64)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                fit = vectors.hook_specificity(a, labels, train, folds, conditions, p.baseline, cfg)
            not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            seconds += time.perf_counter() - start
            for contrast in vectors.CONTRASTS:
                out[contrast_names[contrast]].append(fit.unit[contrast])
                out[projection_names[contrast]].append(vectors.project(a, fit.unit[contrast]))
            out["norm"].append(vectors.directions(a, labels, train, conditions, p.baseline)[1])
            out["shared_axis"].append(fit.shared_axis)
            out["cosine_to_shared_axis"].append(fit.cosine)
            out["specificity_cv_auroc"].append(fit.cv_auroc)
            per_position = [
                vectors.condition_subspaces(a[:, i], labels, train, conditions, p.baseline, K)
                for i in range(P)
            ]
            names = ("subspace", "singular_values", "explained_variance_ratio")
            for name, values in zip(names, zip(*per_position, strict=True), strict=True):
                out[name].append(np.stack(values))  # [position, condition, ...]
    # hooks of a CNN differ in width: zero-pad the feature axis to the widest (hook_width says
    # how many entries are real); cosines across hooks of different widths are NaN.
    widths = np.array([d.shape[-1] for d in out["direction"]])
    for name in (*contrast_names.values(), "shared_axis", "subspace"):
        out[name] = [
            np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, widths.max() - v.shape[-1])])
            for v in out[name]
        ]
    out = {name: np.stack(values) for name, values in out.items()}
    print(
        f"specificity directions + CV over {len(hooks)} hooks: {seconds:.1f} s"
        + (f"; {not_converged} probe fits hit specificity_probe_max_iter" if not_converged else "")
    )
    unit = out["direction"]  # [hook, position, condition, d_model]
    cosine_hooks = vectors.cosine_matrix(unit.transpose(1, 2, 0, 3))
    cosine_hooks[..., widths[:, None] != widths[None, :]] = np.nan
    dims = ["hook", "position", "condition"]
    ds = store.vectors_dataset(
        hooks,
        conditions,
        coords,
        {
            **{name: ([*dims, "d_model"], out[name]) for name in contrast_names.values()},
            "norm": (dims, out["norm"]),
            **{name: ([*dims, "sample"], out[name]) for name in projection_names.values()},
            "shared_axis": (["hook", "position", "d_model"], out["shared_axis"]),
            "cosine_to_shared_axis": ([*dims, "contrast"], out["cosine_to_shared_axis"]),
            "specificity_cv_auroc": ([*dims, "contrast"], out["specificity_cv_auroc"]),
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
            "direction_vs_others": "mean(condition) - mean(the other conditions' samples) on "
            "the train split, unit norm",
            "direction_probe": f"the condition's weights of a multinomial {cfg.probe} probe "
            "over the conditions (baseline excluded), standardized train features mapped back "
            "to raw space, unit norm",
            "shared_axis": "mean(all condition samples) - mean(baseline) on the train split, "
            "unit norm",
            "specificity_cv_auroc": "condition vs the other conditions' samples along each "
            f"contrast's direction, {len(folds)}-fold CV on the train split grouped by frame_id",
            "subspace": "uncentred full SVD of train difference vectors (sample - mean baseline); "
            "sign: mean difference projects positively",
        },
        positions=positions,
    ).assign_coords(contrast=list(vectors.CONTRASTS))
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
            "specificity": dict(p.specificity),
        },
        seeds={"specificity_folds": cfg.seed, "probe": cfg.seed},
    )


run_logged(snakemake, main)  # noqa: F821
