"""Condition directions: mean-difference vectors from the train split, projections onto them,
the PCA subspace of per-sample differences, and cosines between directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuitflow.core.subspaces import difference_vectors, pca_subspace

__all__ = ["difference_vectors", "pca_subspace"]  # re-exported: the vectors phase's subspaces


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


def cosine_matrix(unit: np.ndarray) -> np.ndarray:
    """Pairwise cosines of unit vectors on the second-to-last axis: [..., n, d] -> [..., n, n]."""
    return np.einsum("...id,...jd->...ij", unit, unit)
