"""Condition directions: mean-difference vectors from the train split, projections onto them,
the PCA subspace of per-sample differences, and cosines between directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import svd


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


def difference_vectors(
    acts: np.ndarray, labels: np.ndarray, condition: str, baseline: str, mask: np.ndarray
) -> np.ndarray:
    """Per-sample differences: each ``condition`` sample minus the mean ``baseline`` sample.

    acts: [sample, d_model] -> [n_condition, d_model] (rows where ``mask`` holds).
    """
    acts = np.asarray(acts, dtype=np.float64)
    return acts[mask & (labels == condition)] - acts[mask & (labels == baseline)].mean(axis=0)


def pca_subspace(diffs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k principal directions of difference vectors, uncentred, by full SVD.

    Uncentred so the mean difference (the emotion direction) is part of the subspace rather
    than subtracted away. Deterministic: LAPACK full SVD, and each component's sign is fixed
    so the mean difference projects positively on it (ties: largest |loading| positive).
    Returns (components [k, d_model], singular_values [k], explained_variance_ratio [k]).
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if not np.isfinite(diffs).all():
        raise ValueError("NaN or inf in the difference vectors")
    k = min(k, *diffs.shape)
    _, s, vt = svd(diffs, full_matrices=False, lapack_driver="gesvd")
    components = vt[:k]
    mean = diffs.mean(axis=0)
    sign = np.sign(components @ mean)
    ties = np.abs(components @ mean) <= 1e-12 * max(np.linalg.norm(mean), 1e-300)
    argmax = np.abs(components).argmax(axis=1)
    sign[ties] = np.sign(components[ties, argmax[ties]])
    sign[sign == 0] = 1.0
    total = (s**2).sum()
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return components * sign[:, None], s[:k], ratio


def cosine_matrix(unit: np.ndarray) -> np.ndarray:
    """Pairwise cosines of unit vectors on the second-to-last axis: [..., n, d] -> [..., n, n]."""
    return np.einsum("...id,...jd->...ij", unit, unit)
