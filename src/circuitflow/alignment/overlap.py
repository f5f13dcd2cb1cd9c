"""Overlap of two subspaces: the mean cos² of their principal angles, for one k or every k.

The table scores every k = 1..K of nested bases at once (:func:`overlap_sweep`); tests check
that this equals :func:`subspace_overlap`, the direct scipy computation, k by k.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import subspace_angles


def subspace_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cos² of the principal angles between span(rows of ``a``) and span(rows of ``b``).

    a: [k_a, d], b: [k_b, d] (any bases; orthonormalised by ``scipy.linalg.subspace_angles``).
    The mean is over the nominal ``max(k_a, k_b)`` dims, so a rank-deficient basis counts
    the missing directions as orthogonal. 1: same subspace; 0: orthogonal; k/d on average for
    a random k-dim subspace against a fixed one.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"subspaces live in different spaces: d={a.shape[1]} vs d={b.shape[1]}")
    k = max(a.shape[0], b.shape[0])
    if not (np.abs(a).max(initial=0) > 0 and np.abs(b).max(initial=0) > 0):
        return 0.0
    angles = subspace_angles(a.T, b.T)
    return float((np.cos(angles) ** 2).sum() / k)


def nested_basis(rows: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis ``[d, K]`` whose first k columns span the first k rows, for every k
    (Gram-Schmidt via QR); batched over leading axes (``[..., K, d] -> [..., d, K]``). A row
    already in the span of the previous ones (or zero) gives a zero column."""
    rows = np.asarray(rows, float)
    rows = rows[None] if rows.ndim == 1 else rows
    *batch, k, d = rows.shape
    if k > d:
        raise ValueError(f"cannot nest {k} directions in {d} dimensions")
    flat = rows.reshape(-1, k, d)
    q, r = np.linalg.qr(np.swapaxes(flat, -1, -2))
    scale = np.linalg.norm(flat, axis=-1).max(axis=-1)
    tol = rtol * np.maximum(scale, np.finfo(float).tiny)
    deficient = (np.abs(np.diagonal(r, axis1=-2, axis2=-1)) <= tol[:, None]).any(axis=-1)
    for i in np.flatnonzero(deficient):  # rare: redo this one row by row, skipping dependents
        q[i] = _nested_basis_rowwise(flat[i], tol[i])
    return q.reshape(*batch, d, k)


def _nested_basis_rowwise(rows: np.ndarray, tol: float) -> np.ndarray:
    out = np.zeros(rows.shape[::-1])
    kept: list[int] = []
    for j in range(len(rows)):
        q, r = np.linalg.qr(rows[[*kept, j]].T)
        if abs(r[-1, -1]) > tol:
            kept.append(j)
            out[:, j] = q[:, -1]
    return out


def overlap_sweep(mapped: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:func:`subspace_overlap` of the first k rows of ``mapped`` and of ``target``, for every
    k = 1..K at once: ``[K]``.

    mapped, target: [K, d]. Uses sum cos² of principal angles = ||Q_a.T Q_b||_F² (the squared
    singular values of Q_a.T Q_b are the cos²), equal to ``subspace_overlap`` row by row.
    """
    return basis_sweep(nested_basis(mapped), nested_basis(target))


def basis_sweep(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """qa, qb: [d, K] nested bases (or [..., d, K]) -> overlap for k = 1..K, [..., K]."""
    m2 = np.matmul(np.swapaxes(qa, -1, -2), qb) ** 2
    csum = m2.cumsum(-2).cumsum(-1)
    k = np.arange(1, qa.shape[-1] + 1)
    return np.diagonal(csum, axis1=-2, axis2=-1) / k


def random_overlaps(target: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Overlap of each random nested basis ``bases [n, d, K]`` with ``target [K, d]``: [n, K]."""
    return basis_sweep(bases, nested_basis(target)[None])
