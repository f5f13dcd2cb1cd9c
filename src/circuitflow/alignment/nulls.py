"""Null distributions of the alignment table that go through the same operation as the
observed overlap, and the seeded draws behind them.

- **Shuffled pairings** (:func:`shuffle_permutations`): the same method refit with B's
  neutral rows permuted, i.e. a map of the same capacity and image but no correspondence.
- **Permuted labels** (:func:`label_permutations`): the emotion labels of the train rows
  permuted among the emotional rows (within frames; the same permutation for both models,
  whose rows are paired by sample), both models' emotion subspaces recomputed as the vectors
  phase computes them (:func:`permuted_subspaces`), and the SAME fitted map applied. The
  baseline rows keep their label: the maps were fit on them, and a permuted group holding
  some of them is mapped better than any other rows (overfit), which made the null
  conservative and its p-values non-uniform (KS p 0.0006 over 360 rows of unrelated
  models, 2% below .05; exact with them fixed). So the null asks what is specific to each
  emotion: a direction all emotions share (an "emotional register") is in the null too.
- Random subspaces of R^d_b (:func:`random_bases`) stay a descriptive column only: every
  mapped subspace lies in B's few high-variance axes, so unrelated models beat that baseline.

Draws are made once per seed and shared by every layer pair (each kind of draw has its own
seed stream). Overlaps under either null are computed in the small coordinates of the map
(:class:`MapCoordinates`): a map's linear part is ``v -> v @ left @ core @ image`` with
``image`` orthonormal rows, so the mapped subspace's principal angles with a target basis
``Q`` are those of ``(v @ left @ core)`` with ``image @ Q`` — r-dim (Procrustes, CCA) or
n-dim (ridge) instead of d_b-dim. :func:`null_counts` turns draws into the table's
mean / sd / n / n_ge columns (p = (1 + n_ge) / (1 + n), computed by ``circuitflow.stats``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh, svd
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from circuitflow.alignment.config import (
    LABEL_STREAM,
    NO_MAP,
    PAIRING_STREAM,
    RANDOM_STREAM,
    SHUFFLE_STREAM,
)
from circuitflow.alignment.maps import LinearMap, Reduction, inverse_sd
from circuitflow.alignment.overlap import basis_sweep, nested_basis
from circuitflow.core import rand

# A null draw counts as >= the observed value within this relative tolerance, so that a
# draw equal to it up to rounding is never counted as smaller (the p-value stays valid).
GE_RTOL = 1e-9


def shuffle_permutations(n: int, n_shuffles: int, seed: int) -> list[np.ndarray]:
    """``n_shuffles`` seeded permutations of ``n`` neutral rows (the same for every pair)."""
    rng = rand.rng(seed, SHUFFLE_STREAM)
    return [rng.permutation(n) for _ in range(n_shuffles)]


def label_permutations(
    blocks: np.ndarray | int,
    n_permutations: int,
    seed: int,
    fixed: np.ndarray | None = None,
) -> list[np.ndarray]:
    """``n_permutations`` seeded permutations of the train labels (``labels[perm]``), each
    within its exchangeability block: ``blocks [N]`` holds each row's block (the frame id of a
    counterfactual frame, whose variants keep one label each; one block for the free
    prompts), or an int N for one block of N rows. Rows where ``fixed [N]`` holds keep their
    label: the alignment fixes the baseline rows, which the maps were fit on."""
    blocks = np.zeros(blocks, int) if np.ndim(blocks) == 0 else np.asarray(blocks)
    free = np.ones(len(blocks), bool) if fixed is None else ~np.asarray(fixed, bool)
    groups = [np.flatnonzero((blocks == b) & free) for b in np.unique(blocks)]
    rng = rand.rng(seed, LABEL_STREAM)
    perms = []
    for _ in range(n_permutations):
        perm = np.arange(len(blocks))
        for g in groups:
            perm[g] = g[rng.permutation(len(g))]
        perms.append(perm)
    return perms


def pairing_permutations(n: int, n_permutations: int, seed: int) -> list[np.ndarray]:
    """``n_permutations`` seeded permutations of ``n`` paired test rows (similarity nulls)."""
    rng = rand.rng(seed, PAIRING_STREAM)
    return [rng.permutation(n) for _ in range(n_permutations)]


def random_bases(d: int, k_max: int, n_random: int, seed: int) -> np.ndarray:
    """``n_random`` uniformly random nested orthonormal bases of R^d: ``[n_random, d, k_max]``
    (k_max at most d); columns ``[:, :k]`` span a uniformly random k-dim subspace for every k."""
    return rand.random_bases(rand.rng(seed, RANDOM_STREAM), n_random, d, k_max)


def permuted_subspaces(
    x: np.ndarray,
    labels: np.ndarray,
    perms: Sequence[np.ndarray],
    baseline: str,
    conditions: Sequence[str],
    k: int,
) -> np.ndarray:
    """Emotion subspaces under permuted labels, as coefficients over the rows of ``x``:
    ``[P, C, k, N]`` (the subspace vectors are ``coef @ x``, orthonormal rows).

    x: train rows of every label ``[N, d]``; ``labels [N]``; for each permutation the labels
    ``labels[perm]`` define the groups, and each condition's subspace is the span of the top
    k right singular vectors of its difference vectors (each condition row minus the mean
    baseline row), as :func:`circuitflow.core.subspaces.pca_subspace` computes it (signs
    aside, which no overlap depends on). Computed exactly from the Gram matrix of ``x``: one
    [N, N] product, then the top k eigenpairs (u, w) of an n_c x n_c matrix per condition and
    permutation; the vector ``D.T u / sqrt(w)`` is a combination of x's rows. Rows beyond a
    group's rank are zero.
    """
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)  # differences do not depend on it; the Gram stays well conditioned
    out = np.zeros((len(perms), len(conditions), k, len(x)))
    if not len(perms):
        return out
    gram = x @ x.T
    lab = np.asarray(labels)[np.asarray(perms, dtype=int)]  # [P, N]
    n_perm = len(lab)
    base = (lab == baseline).astype(np.float64)
    counts = base.sum(axis=1)
    if not counts.all():
        raise ValueError(f"no {baseline!r} rows among the train labels")
    weights = base / np.maximum(counts, 1)[:, None]  # [P, N]: the mean baseline row is w @ x
    cross = weights @ gram  # [P, N]: <x_i, mean>
    mean_sq = (cross * weights).sum(axis=1)  # [P]: <mean, mean>
    for j, condition in enumerate(conditions):
        member = lab == condition
        m = int(member[0].sum())  # permutations keep every label's count
        kk = min(k, m)
        if kk == 0:
            continue
        idx = np.sort(np.argsort(~member, axis=1, kind="stable")[:, :m], axis=1)  # [P, m]
        scaled = np.zeros((n_perm, kk, m))  # [P, k, m]: u / sqrt(w), top first
        for start in range(0, n_perm, _CHUNK):
            sl = slice(start, start + _CHUNK)
            c = np.take_along_axis(cross[sl], idx[sl], axis=1)  # [p, m]
            g = gram[idx[sl, :, None], idx[sl, None, :]]  # [p, m, m]
            g -= c[:, :, None] + c[:, None, :] - mean_sq[sl, None, None]
            if m <= _BATCHED_EIGH:  # small: one batched LAPACK call, no per-matrix overhead
                w_all, u_all = np.linalg.eigh(g)
                pairs = zip(w_all[:, ::-1][:, :kk], u_all[:, :, ::-1][:, :, :kk], strict=True)
            else:
                pairs = (top_eigenpairs(gq, kk) for gq in g)
            for q, (w, u) in enumerate(pairs):
                keep = w > 1e-12 * max(w[0], np.finfo(float).tiny)
                scaled[start + q, : keep.sum()] = (u[:, keep] / np.sqrt(w[keep])).T
        coef = out[:, j, :kk]  # [P, k, N]: the condition rows minus the mean baseline row
        np.put_along_axis(coef, np.broadcast_to(idx[:, None, :], scaled.shape), scaled, axis=2)
        coef -= scaled.sum(axis=2)[:, :, None] * weights[:, None, :]
    return out


_CHUNK = 50  # permutations whose n_c x n_c matrices are formed at once
_BATCHED_EIGH = 64  # up to this n_c, all eigenpairs of a chunk in one batched call


def top_eigenpairs(g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending) and eigenvectors ``[m, k]`` of a symmetric
    ``g [m, m]``: Lanczos (ARPACK ``eigsh``, relative tol 1e-10, 20 Lanczos vectors, a fixed
    start vector) for m > 120, where it beats LAPACK's subset ``eigh`` (one core, k = 3:
    0.78 vs 2.3 ms at m = 245, 0.61 vs 0.94 ms at m = 160; subspaces equal to 1e-14);
    LAPACK otherwise or if ARPACK does not converge."""
    m = len(g)
    if m > max(120, 4 * k + 20):
        start = np.random.default_rng(0).standard_normal(m)
        try:
            w, u = eigsh(
                g, k=k, which="LA", tol=1e-10, ncv=min(m - 1, max(20, 2 * k + 1)), v0=start
            )
        except ArpackNoConvergence:
            pass
        else:
            order = np.argsort(w)[::-1]
            return w[order], u[:, order]
    w, u = eigh(g, subset_by_index=[m - k, m - 1], check_finite=False, driver="evr")
    return w[::-1], u[:, ::-1]


@dataclass(frozen=True)
class MapCoordinates:
    """A map's linear part as ``v -> v @ left @ core @ image`` (``left`` None: the identity)
    with ``image [q', d_b]`` orthonormal rows; ``core [q, q']`` is the fitted one."""

    left: np.ndarray | None
    core: np.ndarray | None
    image: np.ndarray | None

    @classmethod
    def of(cls, fitted: LinearMap) -> MapCoordinates:
        """Coordinates of a fitted map: Procrustes / CCA ``(P_a.T, core, P_b)``; ridge
        ``(X_n.T (...)^-1 / s_a, U S, V.T)`` from the SVD of B's centred rows; none: identity."""
        if fitted.method == NO_MAP:
            return cls(None, None, None)
        if fitted.method == "ridge":
            left, centred_b = fitted.factors
            image, us = ridge_image(centred_b)
            return cls(left, us, image)
        left, core, image = fitted.factors
        return cls(left, core, image)

    def source(self, rows: np.ndarray) -> np.ndarray:
        """``rows @ left`` ([..., d_a] -> [..., q])."""
        return rows if self.left is None else rows @ self.left

    def targets(self, bases: np.ndarray) -> np.ndarray:
        """Target bases ``[..., d_b, K]`` in the image coordinates ``[..., q', K]``."""
        return bases if self.image is None else self.image @ bases

    def overlaps(self, source: np.ndarray, cores: np.ndarray | None, targets: np.ndarray):
        """Overlap sweep of ``source @ core`` with ``targets``: source ``[..., C, K, q]``,
        cores ``[..., q, q']`` (None: the identity), targets ``[..., C, q', K]``;
        returns ``[..., C, K]``."""
        mapped = source if cores is None else source @ cores[..., None, :, :]
        short = mapped.shape[-2] - mapped.shape[-1]
        if short > 0:  # an image of fewer than K dims (low-rank data): pad it with zeros
            mapped = np.concatenate([mapped, np.zeros((*mapped.shape[:-1], short))], axis=-1)
            pad = np.zeros((*targets.shape[:-2], short, targets.shape[-1]))
            targets = np.concatenate([targets, pad], axis=-2)
        return basis_sweep(nested_basis(mapped), targets)


def ridge_image(centred_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal rows ``[q', d_b]`` spanning B's centred train rows and their coordinates
    ``U S [n, q']`` (thin SVD, numerically zero singular values dropped)."""
    u, s, vt = svd(centred_b, full_matrices=False)
    keep = s > 1e-12 * max(s.max(initial=0.0), np.finfo(float).tiny)
    keep[0] = True
    return vt[keep], u[:, keep] * s[keep]


def null_counts(draws: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
    """``draws [S, ...]`` of a null against ``observed [...]``: mean, sd (ddof 1), n and
    n_ge (draws >= observed, within :data:`GE_RTOL`); NaN / 0 where there are no draws."""
    n = len(draws)
    nan = np.full(np.shape(observed), np.nan)
    if n == 0:
        return {"mean": nan, "sd": nan, "n": np.zeros(np.shape(observed), int), "ge": nan}
    tol = GE_RTOL * np.maximum(1.0, np.abs(observed))
    return {
        "mean": draws.mean(axis=0),
        "sd": draws.std(axis=0, ddof=1) if n > 1 else nan,
        "n": np.full(np.shape(observed), n),
        "ge": (draws >= observed - tol).sum(axis=0).astype(float),
    }


class NullCache:
    """Permuted-label subspaces of the last few activation tensors, keyed by content, so a
    tensor shared by several layer pairs (or by two sites: resid_post L is resid_pre L+1) is
    done once; at most ``size`` kept (each is [P, C, k, d])."""

    def __init__(self, size: int = 6):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key, compute):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = compute()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def shuffled_cores(
    coords: MapCoordinates,
    method: str,
    reductions: tuple[Reduction, Reduction],
    perms: Sequence[np.ndarray],
    n_components: int,
) -> np.ndarray:
    """The ``core`` of ``method`` refit with B's neutral rows permuted by each of ``perms``,
    batched: ``[S, q, q']`` in the coordinates of ``coords`` (the observed fit's: the same
    ``left`` and ``image``, which do not depend on the pairing).

    Procrustes: ``U V.T`` of the SVD of ``z_a.T z_b[perm]`` (scipy's orthogonal_procrustes;
    the scale is left out, no subspace depends on it). CCA: :func:`~.maps.fit_cca`'s
    ``w_a[:, :c] @ G`` with the canonical directions of ``(z_a, z_b[perm])``. Ridge:
    ``(U S)[perm]``, since ``W = left @ Y_c[perm]`` and ``Y_c = U S V.T``.
    """
    idx = np.asarray(perms)
    if method == "ridge":
        return coords.core[idx]
    za, zb = reductions[0].scores, reductions[1].scores
    zb_p = zb[idx]  # [S, n, r_b]
    if method == "procrustes":
        u, _, vt = np.linalg.svd(za.T[None] @ zb_p)
        return u @ vt
    if method != "cca":
        raise ValueError(f"no shuffled-pairing null for alignment method {method!r}")
    n = len(za)
    inv_a, inv_b = inverse_sd(za), inverse_sd(zb)
    cross = (za * inv_a).T[None] @ (zb_p * inv_b) / (n - 1)
    u, _, _ = np.linalg.svd(cross, full_matrices=False)
    to_variates = (u * inv_a[:, None])[..., : min(n_components, u.shape[-1])]  # [S, r_a, c]
    g = np.swapaxes(za @ to_variates, -1, -2) @ (zb_p - zb.mean(axis=0)) / (n - 1)
    return to_variates @ g
