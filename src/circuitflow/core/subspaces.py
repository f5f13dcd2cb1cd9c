"""Emotion subspaces: per-sample difference vectors and their sign-fixed PCA basis.

Shared by the vectors phase (fit on all samples) and the alignment bootstrap (refit on each
resample), so both compute the subspace the same way.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float
from scipy.linalg import svd


def difference_vectors(
    acts: Float[np.ndarray, "sample d_model"],
    labels: np.ndarray,
    condition: str,
    baseline: str,
    mask: Bool[np.ndarray, " sample"],
) -> Float[np.ndarray, "n_condition d_model"]:
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
