"""Condition directions: mean-difference vectors from the train split, projections onto them,
the PCA subspace of per-sample differences, and cosines between directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float

from circuitflow import store
from circuitflow.core.subspaces import difference_vectors, pca_subspace

__all__ = ["difference_vectors", "pca_subspace"]  # re-exported: the vectors phase's subspaces

UNIT_KIND = "sample"  # what one independent unit of the separation measurements is


def mean_difference(
    acts: np.ndarray, labels: np.ndarray, condition: str, baseline: str, mask: np.ndarray
) -> np.ndarray:
    """mean(acts[condition]) - mean(acts[baseline]) over rows where ``mask`` holds.

    acts: [sample, ..., d_model]; returns [..., d_model] in float64.
    """
    acts = np.asarray(acts, dtype=np.float64)
    sel_c = mask & (labels == condition)
    sel_b = mask & (labels == baseline)
    for name, sel in ((condition, sel_c), (baseline, sel_b)):
        if not sel.any():
            raise ValueError(f"no training samples with label {name!r}")
    return acts[sel_c].mean(axis=0) - acts[sel_b].mean(axis=0)


def directions(
    acts: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    conditions: Sequence[str],
    baseline: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean-difference directions and their raw norms for each condition vs baseline.

    acts: [sample, position, d_model] -> (unit [position, condition, d_model],
    norm [position, condition]).
    """
    raw = np.stack(
        [mean_difference(acts, labels, c, baseline, train) for c in conditions], axis=1
    )  # [position, condition, d_model]
    norm = np.linalg.norm(raw, axis=-1)
    unit = raw / np.where(norm > 0, norm, 1.0)[..., None]
    return unit, norm


def project(acts: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Scalar projection of every sample onto every direction.

    acts: [sample, position, d_model], unit: [position, condition, d_model]
    -> [position, condition, sample].
    """
    return np.einsum("spd,pcd->pcs", np.asarray(acts, dtype=np.float64), unit)


def condition_subspaces(
    acts: Float[np.ndarray, "sample d_model"],
    labels: np.ndarray,
    train: np.ndarray,
    conditions: Sequence[str],
    baseline: str,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k PCA of the train difference vectors of each condition at one position:
    (components [condition, k, d_model], singular values [condition, k], explained variance
    ratios [condition, k]); zero components and NaN values beyond a condition's rank. Only
    ``k`` components are allocated (:func:`.inputs.kept_components` bounds it)."""
    comps = np.zeros((len(conditions), k, acts.shape[-1]))
    sing = np.full((len(conditions), k), np.nan)
    ratio = np.full((len(conditions), k), np.nan)
    for j, condition in enumerate(conditions):
        c, s, r = pca_subspace(difference_vectors(acts, labels, condition, baseline, train), k)
        comps[j, : len(c)], sing[j, : len(s)], ratio[j, : len(r)] = c, s, r
    return comps, sing, ratio


def cosine_matrix(unit: np.ndarray) -> np.ndarray:
    """Pairwise cosines of unit vectors on the second-to-last axis: [..., n, d] -> [..., n, n]."""
    return np.einsum("...id,...jd->...ij", unit, unit)


def separation_measurements(
    projection: Float[np.ndarray, "hook position condition sample"],
    hooks: Sequence[str],
    positions: Sequence[str],
    conditions: Sequence[str],
    samples: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    baseline: str,
    dataset: str,
    model: str,
    cosine: Float[np.ndarray, "hook position condition"] | None = None,
) -> pd.DataFrame:
    """Held-out separation along each train-split direction as ``measurements.csv`` rows:
    per hook x position x condition, the test-split projections of the condition's samples
    (arm ``treatment``) and of the baseline's (arm ``baseline``); unit = sample, so the
    statistics phase compares them as independent groups. A comparison with a non-finite
    projection is left out. Setting ``contrast=vs_neutral`` (the direction's contrast),
    ``unit_kind`` sample, and where ``cosine`` (each direction's cosine to the axis all
    conditions share) is given, ``note`` names it: a cosine near 1 means the row measures
    that shared axis, not the condition (see :mod:`.specificity`)."""
    test = split == "test"
    base = test & (labels == baseline)
    frames = []
    for h, hook in enumerate(hooks):
        layer, site = store.parse_hook_name(hook)
        for p, position in enumerate(positions):
            for c, condition in enumerate(conditions):
                treat = test & (labels == condition)
                values = projection[h, p, c]
                if not np.isfinite(values[treat | base]).all():
                    continue
                for arm, mask in (("treatment", treat), ("baseline", base)):
                    frames.append(
                        pd.DataFrame(
                            {
                                "phase": "vectors",
                                "dataset": dataset,
                                "model": model,
                                "layer": layer,
                                "site": site,
                                "position": position,
                                "condition": condition,
                                "setting": "contrast=vs_neutral",
                                "metric": "projection_on_mean_diff",
                                "arm": arm,
                                "unit": samples[mask],
                                "value": values[mask].astype(np.float64),
                                "unit_kind": UNIT_KIND,
                                "note": ""
                                if cosine is None
                                else f"shared-axis cosine {cosine[h, p, c]:.2f}",
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
