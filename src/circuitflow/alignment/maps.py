"""Linear maps from one model's residual stream to another's, fit on paired neutral rows.

Each map keeps ``W [d_a, d_b]`` factorised (:class:`LinearMap`) so that directions and
subspaces are mapped without forming it. Procrustes and CCA work on a PCA reduction of each
side (:class:`Reduction`), ridge on the full widths in dual form (:class:`RidgeFactor`, one
n x n solve per A layer). :func:`map_r2` scores a map on held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orth, orthogonal_procrustes, solve, svd
from sklearn.decomposition import PCA

from circuitflow.alignment.config import METHODS, NO_MAP, AlignmentConfig


@dataclass(frozen=True)
class Reduction:
    """PCA of one side's train neutral activations: ``mean [d]``, ``components [r, d]``
    (orthonormal rows, sklearn's sign convention), ``scores [n, r]`` (centred)."""

    mean: np.ndarray
    components: np.ndarray
    scores: np.ndarray

    @property
    def rank(self) -> int:
        """Number of components with non-negligible variance (the data's numerical rank)."""
        var = (self.scores**2).sum(axis=0)
        return int((var > 1e-12 * var.max(initial=0.0)).sum()) if var.size else 0

    def truncate(self, r: int) -> Reduction:
        """The top ``r`` components only."""
        return Reduction(self.mean, self.components[:r], self.scores[:, :r])


def common_rank(n: int, d_a: int, d_b: int, r_max: int) -> int:
    """The common reduced dimension r = min(r_max, n - 1, d_a, d_b)."""
    r = min(r_max, n - 1, d_a, d_b)
    if r < 1:
        raise ValueError(f"too few neutral training samples to fit a map: n={n}")
    return r


def pca_reduce(x: np.ndarray, r: int) -> Reduction:
    """Centre ``x [n, d]`` and keep its top ``r`` principal axes (full SVD, deterministic)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant data: variance ratio 0/0
        pca = PCA(n_components=r, svd_solver="full").fit(x)
    return Reduction(pca.mean_, pca.components_, pca.transform(x))


@dataclass(frozen=True)
class LinearMap:
    """``x_b ≈ mean_b + (x_a - mean_a) @ W`` with ``W = factors[0] @ factors[1] @ ...``
    ``[d_a, d_b]`` kept factorised (e.g. ``P_a.T @ R @ P_b``) and never formed."""

    method: str
    mean_a: np.ndarray
    mean_b: np.ndarray
    factors: tuple[np.ndarray, ...]

    @property
    def matrix(self) -> np.ndarray:
        """``W [d_a, d_b]`` (formed on request)."""
        return np.linalg.multi_dot(self.factors) if len(self.factors) > 1 else self.factors[0]

    def apply(self, v: np.ndarray) -> np.ndarray:
        """Linear part only (for directions): [..., d_a] -> [..., d_b]."""
        out = np.asarray(v, dtype=np.float64)
        for factor in self.factors:
            out = out @ factor
        return out

    def predict(self, x_a: np.ndarray) -> np.ndarray:
        """B activations predicted from A's: [n, d_a] -> [n, d_b]."""
        return self.mean_b + self.apply(np.asarray(x_a, dtype=np.float64) - self.mean_a)

    def map_subspace(self, basis: np.ndarray) -> np.ndarray:
        """Rows spanning A's subspace [k, d_a] -> orthonormal rows spanning its image in B
        [k, d_b] (``scipy.linalg.orth``; fewer rows if the map loses rank)."""
        return orth(self.apply(basis).T).T


def _permuted(x: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    return x if perm is None else x[perm]


def identity_map(ra: Reduction, rb: Reduction) -> LinearMap:
    """A's PCA coordinates read as B's (``W = P_a.T @ P_b``): the map behind the descriptive
    ``overlap_before`` (no learned correspondence, not a null)."""
    return LinearMap(NO_MAP, ra.mean, rb.mean, (ra.components.T, rb.components))


def shared_basis_map(x_a: np.ndarray, x_b: np.ndarray) -> LinearMap:
    """Method ``none``: ``W = I``, meaningful only where both models write the same basis
    (equal ``d_model``, e.g. one model and its fine-tune); the offset is still fit."""
    d_a, d_b = np.shape(x_a)[1], np.shape(x_b)[1]
    if d_a != d_b:
        raise ValueError(
            f"alignment method {NO_MAP!r} assumes a shared basis: d_model {d_a} != {d_b}; "
            f"use a learned map ({', '.join(METHODS)})"
        )
    mean_a, mean_b = np.mean(x_a, axis=0), np.mean(x_b, axis=0)
    return LinearMap(NO_MAP, mean_a, mean_b, (np.eye(d_a),))


def fit_procrustes(ra: Reduction, rb: Reduction, perm: np.ndarray | None = None) -> LinearMap:
    """Orthogonal Procrustes between PCA scores; ``perm`` shuffles B's rows (baseline)."""
    za, zb = ra.scores, _permuted(rb.scores, perm)
    rot, sv_sum = orthogonal_procrustes(za, zb)
    scale = sv_sum / max((za**2).sum(), np.finfo(float).tiny)
    return LinearMap("procrustes", ra.mean, rb.mean, (ra.components.T, scale * rot, rb.components))


@dataclass(frozen=True)
class RidgeFactor:
    """The A side of a ridge fit, reusable for every B: ``left = X_n.T (X_n X_n.T + alpha I)^-1
    / s_a`` with ``X_n`` A's centred train rows divided by their RMS norm ``s_a``."""

    mean: np.ndarray
    left: np.ndarray  # [d_a, n]


def ridge_factor(x_a: np.ndarray, alpha: float) -> RidgeFactor:
    """Factor of :func:`fit_ridge` that depends on A only (dual / kernel form, n x n solve)."""
    x_a = np.asarray(x_a, np.float64)
    mean = x_a.mean(axis=0)
    centred = x_a - mean
    scale = _rms(centred)
    xn = centred / scale
    gram = xn @ xn.T
    gram[np.diag_indices_from(gram)] += alpha
    return RidgeFactor(mean, solve(gram, xn, assume_a="pos").T / scale)


def fit_ridge(
    x_a: np.ndarray,
    x_b: np.ndarray,
    alpha: float,
    perm: np.ndarray | None = None,
    factor: RidgeFactor | None = None,
) -> LinearMap:
    """Ridge regression from centred A to centred B, A scaled to total variance 1.

    Equal to ``sklearn.linear_model.Ridge(alpha, fit_intercept=False)`` fit on
    ``(x_a - mean_a) / s_a`` -> ``x_b - mean_b`` (tests check this), written in the dual form
    ``W = X_n.T (X_n X_n.T + alpha I)^-1 Y_c / s_a`` so that A's n x n solve is shared by every
    B layer and shuffle: ``left = X_n.T (...)^-1 / s_a [d_a, n]``, ``right = Y_c [n, d_b]``.
    Scaling B does not change a ridge fit (each output is its own regression).
    """
    factor = factor if factor is not None else ridge_factor(x_a, alpha)
    x_b = np.asarray(x_b, np.float64)
    mean_b = x_b.mean(axis=0)
    return LinearMap("ridge", factor.mean, mean_b, (factor.left, _permuted(x_b - mean_b, perm)))


def _rms(x: np.ndarray) -> float:
    """RMS row norm: sqrt(total variance) of centred rows."""
    value = float(np.sqrt((x**2).sum() / len(x)))
    return value if value > 0 else 1.0


def canonical_directions(
    za: np.ndarray, zb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CCA of two sets of uncorrelated, centred scores (PCA scores) ``[n, r_a]``, ``[n, r_b]``.

    Returns ``(w_a [r_a, m], w_b [r_b, m], rho [m])``, ``m = min(r_a, r_b)``: the canonical
    variates ``za @ w_a`` and ``zb @ w_b`` have unit variance and correlations ``rho``
    (largest first). Uncorrelated scores are whitened by dividing by their sd, so the SVD
    of the whitened cross-covariance gives the canonical directions; components with
    (numerically) zero variance are left out.
    """
    inv_a, inv_b = inverse_sd(za), inverse_sd(zb)
    cross = (za * inv_a).T @ (zb * inv_b) / (len(za) - 1)
    u, rho, vt = svd(cross, full_matrices=False)
    return u * inv_a[:, None], vt.T * inv_b[:, None], rho


def inverse_sd(z: np.ndarray) -> np.ndarray:
    """1 / sd (ddof 1) of each column; 0 for (numerically) constant columns."""
    sd = z.std(axis=0, ddof=1)
    ok = sd > 1e-10 * sd.max(initial=0.0)
    return np.where(ok, 1.0 / np.where(ok, sd, 1.0), 0.0)


def fit_cca(
    ra: Reduction, rb: Reduction, n_components: int, perm: np.ndarray | None = None
) -> LinearMap:
    """CCA between PCA scores; A -> its canonical variates -> least-squares B scores -> B.

    Closed form (:func:`canonical_directions`, the textbook solution that sklearn's iterative
    ``CCA`` approximates; tests check the two agree). A's first ``c`` canonical variates
    ``u = z_a @ w_a[:, :c]`` are uncorrelated with unit variance, so the least-squares
    regression of B's (centred) scores on them is ``G = u.T z_b / (n - 1)``
    (= ``diag(rho_c) @ (B's canonical directions)`` in B's score space): ``z_b_hat = u @ G``,
    ``W = P_a.T @ w_a[:, :c] @ G @ P_b``.
    """
    za, zb = ra.scores, _permuted(rb.scores, perm)
    w_a, _, _ = canonical_directions(za, zb)
    to_variates = w_a[:, : min(n_components, w_a.shape[1])]  # [r_a, c]
    g = (za @ to_variates).T @ (zb - zb.mean(axis=0)) / (len(za) - 1)  # [c, r_b]
    return LinearMap("cca", ra.mean, rb.mean, (ra.components.T, to_variates @ g, rb.components))


def fit_map(
    method: str,
    x_a: np.ndarray,
    x_b: np.ndarray,
    config: AlignmentConfig | None = None,
    perm: np.ndarray | None = None,
    reductions: tuple[Reduction, Reduction] | None = None,
    factor: RidgeFactor | None = None,
) -> LinearMap:
    """Fit one map (``procrustes``, ``ridge``, ``cca`` or ``none``: the identity, equal widths
    only) from ``x_a [n, d_a]`` to ``x_b [n, d_b]`` (rows paired); ``perm`` permutes B's rows
    first (shuffled-pairing null).
    ``reductions`` (the PCA of each side) and ``factor`` (A's ridge factor) reuse work."""
    if method not in (*METHODS, NO_MAP):
        raise ValueError(f"unknown alignment method {method!r}; choose from {[*METHODS, NO_MAP]}")
    config = config or AlignmentConfig()
    if method == NO_MAP:
        return shared_basis_map(x_a, x_b)
    if method == "ridge":
        return fit_ridge(x_a, x_b, config.ridge_alpha, perm, factor)
    if reductions is None:
        r = common_rank(len(x_a), x_a.shape[1], x_b.shape[1], config.r_max)
        reductions = (pca_reduce(x_a, r), pca_reduce(x_b, r))
    ra, rb = reductions
    if method == "procrustes":
        return fit_procrustes(ra, rb, perm)
    return fit_cca(ra, rb, config.cca_components, perm)


def map_r2(fitted: LinearMap, x_a: np.ndarray, x_b: np.ndarray) -> float:
    """R² of ``x_b [n, d_b]`` predicted from ``x_a [n, d_a]``: ``1 - SSE / SST`` summed over B's
    dims (= sklearn ``r2_score(..., multioutput="variance_weighted")``); NaN if < 2 rows or
    B is constant on them."""
    if len(x_a) < 2:
        return float("nan")
    x_b = np.asarray(x_b, np.float64)
    sse = ((x_b - fitted.predict(x_a)) ** 2).sum()
    sst = ((x_b - x_b.mean(axis=0)) ** 2).sum()
    if sst <= 1e-12 * (x_b**2).sum():  # B does not vary on these rows: R² is undefined
        return float("nan")
    return float(1.0 - sse / sst)
