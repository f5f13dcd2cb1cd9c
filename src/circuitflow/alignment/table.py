"""Cross-model alignment: linear maps between two models' residual streams, learned on
neutral samples only, and the overlap of each emotion subspace before and after mapping.

Vocabulary (shapes use ``n`` samples, ``d_a`` / ``d_b`` model widths, ``k`` subspace dims):

- A *map* sends model A's activations to model B's: ``x_b ≈ mean_b + (x_a - mean_a) @ W``
  with ``W [d_a, d_b]`` kept factorised (:class:`LinearMap`). The same ``W`` maps a direction
  (a difference of activations) from A's space into B's; the offset plays no part there.
- Every map is fit on the **train-split neutral** samples of both models at one hook and one
  sentence-level position (``mean``, ``last``: token positions do not pair up across
  tokenizers), rows paired by sample id. Emotion samples never enter a fit.
- Methods (:data:`METHODS`):

  ``procrustes``  centre both sides, reduce each with PCA (sklearn, full SVD) to a common
                  ``r = min(r_max, n - 1, d_a, d_b)`` (lower if either side's neutral
                  activations have lower numerical rank), then
                  ``scipy.linalg.orthogonal_procrustes`` between the two ``[n, r]`` score
                  matrices: ``W = P_a.T @ (s R) @ P_b`` with ``P`` the ``[r, d]`` PCA
                  components and ``s`` the least-squares isotropic scale (it matters for
                  predictions only, not for subspaces).
  ``ridge``       ridge regression (``sklearn.linear_model.Ridge(alpha)``, written in its
                  dual form so one n x n solve per A layer serves every B layer; tests check it
                  equals sklearn) from centred A to centred B in the full widths. A is first
                  divided by its RMS row norm (total variance 1), so ``alpha`` does not depend
                  on the model's activation scale.
  ``cca``         CCA between the same PCA scores as Procrustes (CCA in the full widths is
                  degenerate with ``n < d``; this is the SVCCA construction), solved in closed
                  form (SVD of the whitened cross-covariance; it agrees with
                  ``sklearn.cross_decomposition.CCA``, whose iterative NIPALS fit is ~100x
                  slower). A is mapped to B *through the canonical space*: A's PCA scores become
                  its first ``c`` canonical variates, and B's PCA scores are regressed on those
                  variates by least squares (train split), so
                  ``W = P_a.T @ w_a[:, :c] @ G @ P_b``; A's dimensions outside its top ``c``
                  canonical directions are dropped.
  ``none``        no learned map, see ``overlap_before`` below.

- *Overlap* of two k-dim subspaces is the mean of cos² of their principal angles
  (``scipy.linalg.subspace_angles``, :func:`subspace_overlap`): 1 for the same subspace, 0 for
  orthogonal ones, k/d on average for a uniformly random k-dim subspace of R^d. A mapped
  subspace that loses rank counts the lost dimensions as orthogonal (the mean is over the
  nominal k). The table gets every k = 1..k_max at once from nested orthonormal bases as
  ``||Q_a[:, :k].T Q_b[:, :k]||_F² / k`` (:func:`overlap_sweep`; the squared singular values
  of ``Q_a.T Q_b`` are the cos²), which tests check equals ``subspace_overlap``.
- ``overlap_after``: A's emotion subspace (the first k rows of the vectors store's
  ``subspace``), mapped by ``W`` and orthonormalised, against B's subspace of the same
  emotion and k.
- ``overlap_before``: the same comparison with the learned rotation left out: A's subspace
  is written in A's PCA coordinates, those coordinates are read as if they were B's PCA
  coordinates (``W = P_a.T @ P_b``, i.e. Procrustes with ``R = I``) and compared with B's
  subspace. It is what "the same subspace in the same coordinates" would give once both models
  are reduced to a common dimension. PCA orders axes by variance and sklearn fixes each
  component's sign from its own coordinates, so this identity already lines up models whose
  top principal axes correspond one to one (up to sign); it is the floor a learned map has to
  beat, not a random baseline. It does not depend on the method; rows with method ``none``
  report it as their ``overlap_after`` too.
- Baselines in the same row: ``overlap_random_*`` — uniformly random k-dim subspaces of R^d_b
  against B's subspace (``n_random`` seeded draws; expectation k/d_b); ``overlap_shuffled`` —
  the mean over ``n_shuffles`` maps of the same method fit on shuffled pairings (B's neutral
  rows permuted, seeded), i.e. a map with the same capacity and image but no correspondence
  (``overlap_shuffled_sd``: their standard deviation, ddof 1).
- Bootstrap (:func:`bootstrap_table`, the ``.bootstrap.csv`` beside the table): the train
  samples of every label are resampled with replacement (stratified by label, the same
  sample ids for both models, ``n_bootstrap`` seeded replicates); each replicate recomputes
  the emotion subspaces (uncentred PCA of difference vectors, as the vectors phase) and
  refits every map, for the layer pairs and k = 1..k_max of ``bootstrap_sites`` x
  ``bootstrap_positions`` (``bootstrap_pairs``: the matched-depth pair with the largest
  mean overlap_after, or every matched pair).
- ``map_r2_test``: R² (as sklearn ``r2_score(..., multioutput="variance_weighted")``: one
  minus the summed squared error over the summed variance of B's d_b dims) of B's
  **test-split** neutral activations predicted from A's, so a reader can see the map works.
  For ``none`` it is the R² of reading A's PCA scores as B's (no scale fitted), typically <= 0.
- Layer pairs: ``relative_depth`` is the fraction of blocks a hook has passed (resid_pre L:
  L / n_layers, resid_post L: (L + 1) / n_layers); ``matched_depth`` marks, per site, every
  layer of either model paired with the other model's nearest layer in relative depth. The
  full layer x layer grid is computed only for ``grid_sites`` x ``grid_positions``, matched
  pairs for every other site x position (:func:`alignment_table`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

METHODS = ("procrustes", "ridge", "cca")
NO_MAP = "none"
SITES = ("hook_resid_pre", "hook_resid_post")
POSITIONS = ("mean", "last", "trigger_mean")
COLUMNS = (
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "relative_depth_a",
    "relative_depth_b",
    "matched_depth",
    "site",
    "position",
    "condition",
    "method",
    "k",
    "overlap_before",
    "overlap_after",
    "overlap_random_mean",
    "overlap_random_sd",
    "overlap_shuffled",
    "overlap_shuffled_sd",
    "map_r2_test",
    "n_train_neutral",
)
# Seed streams: one per kind of random draw, so adding draws of one kind leaves others fixed.
_SHUFFLE_STREAM, _RANDOM_STREAM = 1, 2


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
class AlignmentConfig:
    """Settings of one alignment table (config key ``alignment`` plus the global ``seed``)."""

    methods: tuple[str, ...] = METHODS
    r_max: int = 64
    ridge_alpha: float = 1.0
    cca_components: int = 16
    n_random: int = 50
    n_shuffles: int = 3
    k_max: int = 10
    sites: tuple[str, ...] = SITES
    positions: tuple[str, ...] = ("mean", "last")
    grid_sites: tuple[str, ...] = ("hook_resid_post",)
    grid_positions: tuple[str, ...] = ("mean",)
    seed: int = 0

    def __post_init__(self):
        for key in ("methods", "sites", "positions", "grid_sites", "grid_positions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key, allowed in (
            ("methods", METHODS),
            ("sites", SITES),
            ("positions", POSITIONS),
            ("grid_sites", SITES),
            ("grid_positions", POSITIONS),
        ):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad:
                raise ValueError(f"alignment.{key}: {bad} not among {list(allowed)}")
        for key in ("r_max", "cca_components", "k_max"):
            if getattr(self, key) < 1:
                raise ValueError(f"alignment.{key}: {getattr(self, key)} must be >= 1")
        for key in ("n_random", "n_shuffles"):
            if getattr(self, key) < 0:
                raise ValueError(f"alignment.{key}: {getattr(self, key)} must be >= 0")
        if not self.ridge_alpha > 0:
            raise ValueError(f"alignment.ridge_alpha: {self.ridge_alpha} must be > 0")
        if self.seed < 0:
            raise ValueError(f"seed: {self.seed} must be >= 0")

    @classmethod
    def from_config(cls, alignment: Mapping, seed: int, k_max: int) -> AlignmentConfig:
        """From the validated config section (unknown keys such as ``pairs`` are ignored);
        ``k_max`` is the fallback when the section has none (the vectors phase's k_max)."""
        names = set(cls.__dataclass_fields__) - {"seed", "k_max"}
        kwargs = {key: alignment[key] for key in names if key in alignment}
        return cls(**kwargs, seed=seed, k_max=alignment.get("k_max", k_max))


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def shuffle_permutations(n: int, n_shuffles: int, seed: int) -> list[np.ndarray]:
    """``n_shuffles`` seeded permutations of ``n`` rows (the same for every layer pair)."""
    rng = _rng(seed, _SHUFFLE_STREAM)
    return [rng.permutation(n) for _ in range(n_shuffles)]


def random_bases(d: int, k_max: int, n_random: int, seed: int) -> np.ndarray:
    """``n_random`` uniformly random nested orthonormal bases of R^d: ``[n_random, d, k_max]``
    (k_max at most d); columns ``[:, :k]`` span a uniformly random k-dim subspace for every k."""
    rng = _rng(seed, _RANDOM_STREAM)
    k_max = min(k_max, d)
    out = np.empty((n_random, d, k_max))
    for i in range(n_random):
        q, r = np.linalg.qr(rng.standard_normal((d, k_max)))
        out[i] = q * np.sign(np.diag(r))
    return out


# ---------------------------------------------------------------- overlaps
def subspace_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cos² of the principal angles between span(rows of ``a``) and span(rows of ``b``).

    a: [k_a, d], b: [k_b, d] (any bases; orthonormalised by ``scipy.linalg.subspace_angles``).
    The mean is over the nominal ``max(k_a, k_b)`` dims, so a rank-deficient basis counts
    the missing directions as orthogonal. 1: same subspace; 0: orthogonal; k/d on average for
    a random k-dim subspace against a fixed one.
    """
    from scipy.linalg import subspace_angles

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
    return _sweep(nested_basis(mapped), nested_basis(target))


def _sweep(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """qa, qb: [d, K] nested bases (or [..., d, K]) -> overlap for k = 1..K, [..., K]."""
    m2 = np.matmul(np.swapaxes(qa, -1, -2), qb) ** 2
    csum = m2.cumsum(-2).cumsum(-1)
    k = np.arange(1, qa.shape[-1] + 1)
    return np.diagonal(csum, axis1=-2, axis2=-1) / k


def random_overlaps(target: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Overlap of each random nested basis ``bases [n, d, K]`` with ``target [K, d]``: [n, K]."""
    return _sweep(bases, nested_basis(target)[None])


# ---------------------------------------------------------------- maps
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
    from sklearn.decomposition import PCA

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
        from scipy.linalg import orth

        return orth(self.apply(basis).T).T


def _permuted(x: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    return x if perm is None else x[perm]


def identity_map(ra: Reduction, rb: Reduction) -> LinearMap:
    """Method ``none``: A's PCA coordinates read as B's (``W = P_a.T @ P_b``)."""
    return LinearMap(NO_MAP, ra.mean, rb.mean, (ra.components.T, rb.components))


def fit_procrustes(ra: Reduction, rb: Reduction, perm: np.ndarray | None = None) -> LinearMap:
    """Orthogonal Procrustes between PCA scores; ``perm`` shuffles B's rows (baseline)."""
    from scipy.linalg import orthogonal_procrustes

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
    from scipy.linalg import solve

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
    from scipy.linalg import svd

    inv_a, inv_b = _inv_sd(za), _inv_sd(zb)
    cross = (za * inv_a).T @ (zb * inv_b) / (len(za) - 1)
    u, rho, vt = svd(cross, full_matrices=False)
    return u * inv_a[:, None], vt.T * inv_b[:, None], rho


def _inv_sd(z: np.ndarray) -> np.ndarray:
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
    """Fit one map (``procrustes``, ``ridge``, ``cca`` or ``none``) from ``x_a [n, d_a]`` to
    ``x_b [n, d_b]`` (rows paired); ``perm`` permutes B's rows first (shuffled baseline).
    ``reductions`` (the PCA of each side) and ``factor`` (A's ridge factor) reuse work."""
    if method not in (*METHODS, NO_MAP):
        raise ValueError(f"unknown alignment method {method!r}; choose from {[*METHODS, NO_MAP]}")
    config = config or AlignmentConfig()
    if method == "ridge":
        return fit_ridge(x_a, x_b, config.ridge_alpha, perm, factor)
    if reductions is None:
        r = common_rank(len(x_a), x_a.shape[1], x_b.shape[1], config.r_max)
        reductions = (pca_reduce(x_a, r), pca_reduce(x_b, r))
    ra, rb = reductions
    if method == "procrustes":
        return fit_procrustes(ra, rb, perm)
    if method == "cca":
        return fit_cca(ra, rb, config.cca_components, perm)
    return identity_map(ra, rb)


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


# ---------------------------------------------------------------- one hook pair
@dataclass
class Side:
    """One model at one hook and position: neutral activations (train rows paired with the
    other model's by sample id) and emotion subspaces ``{condition: [K, d]}`` (rows orthonormal,
    zero rows where fewer components exist)."""

    train: np.ndarray
    test: np.ndarray
    subspaces: Mapping[str, np.ndarray]
    _cache: dict = field(default_factory=dict, repr=False)

    def reduction(self, r: int) -> Reduction:
        if ("pca", r) not in self._cache:
            self._cache["pca", r] = pca_reduce(self.train, r)
        return self._cache["pca", r]

    def ridge_factor(self, alpha: float) -> RidgeFactor:
        if ("ridge", alpha) not in self._cache:
            self._cache["ridge", alpha] = ridge_factor(self.train, alpha)
        return self._cache["ridge", alpha]

    def stacked(self, conditions: Sequence[str], k_max: int) -> np.ndarray:
        """The subspaces of ``conditions`` stacked: [C, k_max, d]."""
        return np.stack([np.asarray(self.subspaces[c][:k_max], np.float64) for c in conditions])

    def target_bases(self, conditions: Sequence[str], k_max: int) -> np.ndarray:
        """Nested orthonormal bases of the subspaces: [C, d, k_max]."""
        key = ("target", tuple(conditions), k_max)
        if key not in self._cache:
            self._cache[key] = nested_basis(self.stacked(conditions, k_max))
        return self._cache[key]

    def random_overlaps(
        self, bases: np.ndarray, conditions: Sequence[str], k_max: int
    ) -> np.ndarray:
        """Overlaps of random nested bases ``[n_random, d, >=k_max]`` with the subspaces:
        [C, n_random, k_max] (computed once per ``bases`` object)."""
        key = ("random", tuple(conditions), k_max)
        cached = self._cache.get(key)
        if cached is None or cached[0] is not bases:
            targets = self.target_bases(conditions, k_max)[:, None]  # [C, 1, d, K]
            cached = self._cache[key] = (bases, _sweep(bases[None, ..., :k_max], targets))
        return cached[1]


def _n_components(basis: np.ndarray) -> int:
    """Leading non-zero rows of a zero-padded subspace."""
    nonzero = np.abs(basis).max(axis=1) > 0
    return int(np.argmin(nonzero)) if not nonzero.all() else len(basis)


def align_pair(
    a: Side,
    b: Side,
    config: AlignmentConfig,
    perms: Sequence[np.ndarray] | None = None,
    bases: np.ndarray | None = None,
) -> list[dict]:
    """Fit every map for one (hook_a, hook_b, position) and score every emotion and k.

    Rows: condition, method (``none`` + config.methods), k, overlap_before, overlap_after,
    overlap_random_mean/sd, overlap_shuffled, map_r2_test, n_train_neutral; k runs up to
    ``config.k_max`` or the number of components both subspaces have. ``perms`` and ``bases``
    (shuffles; random nested bases of R^d_b ``[n_random, d_b, >= k_max]``) default to the
    seeded ones of ``config``; pass them to share them across pairs.
    """
    n, d_a, d_b = len(a.train), a.train.shape[1], b.train.shape[1]
    if len(b.train) != n:
        raise ValueError(f"unpaired neutral rows: {n} in model A vs {len(b.train)} in model B")
    conditions = [c for c in a.subspaces if c in b.subspaces]
    if not conditions:
        raise ValueError("the two models share no emotion condition")
    k_max = min(config.k_max, *(len(a.subspaces[c]) for c in conditions))
    k_max = min(k_max, d_a, d_b, *(len(b.subspaces[c]) for c in conditions))
    if perms is None:
        perms = shuffle_permutations(n, config.n_shuffles, config.seed)
    if bases is None:
        bases = random_bases(d_b, k_max, config.n_random, config.seed)
    r = common_rank(n, d_a, d_b, config.r_max)
    ra, rb = a.reduction(r), b.reduction(r)
    # Data of lower rank (e.g. the same last token in every neutral prompt) leaves PCA axes
    # beyond its rank arbitrary: keep only the axes both sides actually vary along.
    r_eff = max(1, min(ra.rank, rb.rank))
    reductions = (ra.truncate(r_eff), rb.truncate(r_eff)) if r_eff < r else (ra, rb)
    factor = a.ridge_factor(config.ridge_alpha) if "ridge" in config.methods else None

    stack_a = a.stacked(conditions, k_max)  # [C, K, d_a]
    targets = b.target_bases(conditions, k_max)  # [C, d_b, K]
    valid = [
        min(_n_components(stack_a[i]), _n_components(b.stacked(conditions, k_max)[i]))
        for i in range(len(conditions))
    ]
    rand = b.random_overlaps(bases, conditions, k_max)  # [C, n_random, K]
    rand_mean = rand.mean(axis=1) if rand.shape[1] else np.full((len(conditions), k_max), np.nan)
    rand_sd = rand.std(axis=1, ddof=1) if rand.shape[1] > 1 else np.full_like(rand_mean, np.nan)

    def sweep(fitted: LinearMap) -> np.ndarray:  # [C, K]
        return _sweep(nested_basis(fitted.apply(stack_a)), targets)

    def fit(method, perm=None):
        return fit_map(method, a.train, b.train, config, perm, reductions, factor)

    none = fit(NO_MAP)
    before = sweep(none)
    rows = []
    for method in (NO_MAP, *config.methods):
        fitted = none if method == NO_MAP else fit(method)
        after = before if method == NO_MAP else sweep(fitted)
        shuffled_sd = np.full_like(before, np.nan)
        if method == NO_MAP or not perms:
            shuffled = np.full_like(before, np.nan)
        else:
            draws = np.stack([sweep(fit(method, perm)) for perm in perms])
            shuffled = draws.mean(axis=0)
            if len(perms) > 1:
                shuffled_sd = draws.std(axis=0, ddof=1)
        r2 = map_r2(fitted, a.test, b.test)
        for i, c in enumerate(conditions):
            for k in range(1, valid[i] + 1):
                rows.append(
                    {
                        "condition": c,
                        "method": method,
                        "k": k,
                        "overlap_before": before[i, k - 1],
                        "overlap_after": after[i, k - 1],
                        "overlap_random_mean": rand_mean[i, k - 1],
                        "overlap_random_sd": rand_sd[i, k - 1],
                        "overlap_shuffled": shuffled[i, k - 1],
                        "overlap_shuffled_sd": shuffled_sd[i, k - 1],
                        "map_r2_test": r2,
                        "n_train_neutral": n,
                    }
                )
    return rows


# ---------------------------------------------------------------- depths
def relative_depth(layer: int, site: str, n_layers: int) -> Fraction:
    """Fraction of the blocks a hook has passed: resid_pre L -> L/n, resid_post L -> (L+1)/n."""
    return Fraction(layer + (site == "hook_resid_post"), n_layers)


def matched_pairs(
    layers_a: Sequence[int], layers_b: Sequence[int], site: str, n_layers_a: int, n_layers_b: int
) -> set[tuple[int, int]]:
    """Layer pairs at matched relative depth: every layer of A with B's nearest in relative
    depth, and every layer of B with A's nearest (ties: the shallower); symmetric in A and B."""
    rel_a = {la: relative_depth(la, site, n_layers_a) for la in layers_a}
    rel_b = {lb: relative_depth(lb, site, n_layers_b) for lb in layers_b}
    pairs = set()
    for la, ra in rel_a.items():
        pairs.add((la, min(layers_b, key=lambda lb: (abs(rel_b[lb] - ra), lb))))
    for lb, rb in rel_b.items():
        pairs.add((min(layers_a, key=lambda la: (abs(rel_a[la] - rb), la)), lb))
    return pairs


# ---------------------------------------------------------------- whole table
@dataclass
class ModelInputs:
    """Everything the table needs from one model: neutral train/test rows (in a common sample
    order) and emotion subspaces per (hook, position).

    neutral_train / neutral_test: {(hook, position): [n, d]};
    subspaces: {(hook, position): {condition: [K, d]}}.
    """

    name: str
    n_layers: int
    neutral_train: dict[tuple[str, str], np.ndarray]
    neutral_test: dict[tuple[str, str], np.ndarray]
    subspaces: dict[tuple[str, str], dict[str, np.ndarray]]

    def layers(self, site: str, position: str) -> list[int]:
        from circuitflow.store import parse_hook_name

        return sorted(
            parse_hook_name(h)[0]
            for h, p in self.neutral_train
            if p == position and parse_hook_name(h)[1] == site and (h, p) in self.subspaces
        )

    def side(self, hook: str, position: str, cache: dict) -> Side:
        key = (self.name, hook, position)
        if key not in cache:
            cache[key] = Side(
                self.neutral_train[hook, position],
                self.neutral_test[hook, position],
                self.subspaces[hook, position],
            )
        return cache[key]


def read_model_inputs(
    activations: str | Path,
    vectors: str | Path,
    baseline: str,
    positions: Iterable[str],
    sites: Iterable[str],
    sample_order: np.ndarray | None = None,
    model: str | None = None,
) -> tuple[ModelInputs, np.ndarray]:
    """Load one model's neutral activations (float64) and emotion subspaces from its stores.

    Rows are sorted by sample id, or put in ``sample_order`` (the other model's ids, to pair
    rows); returns the inputs and the neutral sample ids in that order. ``model`` names the
    model (default: the activation store's ``model`` attribute).
    """
    import warnings

    from circuitflow import store

    with warnings.catch_warnings():
        # manifest.json and Snakemake's timestamp sit beside the Zarr nodes of a store.
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        return _read_model_inputs(
            store, activations, vectors, baseline, positions, sites, sample_order, model
        )


def _read_model_inputs(store, activations, vectors, baseline, positions, sites, order, model):
    sample_order = order
    positions, sites = list(positions), list(sites)
    coords = store.read_sample_coords(activations)
    ids, labels, split = coords["sample"].astype(str), coords["label"], coords["split"]
    neutral = labels == baseline
    if not neutral.any():
        raise ValueError(f"{activations}: no samples with the baseline label {baseline!r}")
    if sample_order is None:
        sample_order = np.sort(ids[neutral])
    index = {sid: i for i, sid in enumerate(ids)}
    missing = [sid for sid in sample_order if sid not in index]
    if missing:
        raise ValueError(
            f"{activations}: {len(missing)} neutral samples of the other model are missing "
            f"(e.g. {missing[0]!r}); both activation stores must come from the same dataset"
        )
    rows = np.array([index[sid] for sid in sample_order])
    if not (neutral[rows].all() and len(rows) == neutral.sum()):
        raise ValueError(f"{activations}: neutral samples differ from the other model's")
    train_rows, test_rows = rows[split[rows] == "train"], rows[split[rows] == "test"]

    store_positions = list(store.read_array(activations, "position"))
    vec_hooks = [str(h) for h in store.read_array(vectors, "hook")]
    vec_positions = [str(p) for p in store.read_array(vectors, "position")]
    conditions = [str(c) for c in store.read_array(vectors, "condition")]
    subspace = store.read_array(vectors, "subspace").astype(np.float64)  # [h, p, c, K, d]
    hooks = [h for h in store.activation_hooks(activations, sites) if h in vec_hooks]
    train, test, subs = {}, {}, {}
    for hook in hooks:
        acts = store.read_array(activations, hook)  # [sample, position, d]
        for pos in positions:
            if pos not in store_positions or pos not in vec_positions:
                raise ValueError(f"{activations}: no position {pos!r} (have {store_positions})")
            x = acts[:, store_positions.index(pos)].astype(np.float64)
            train[hook, pos], test[hook, pos] = x[train_rows], x[test_rows]
            h, p = vec_hooks.index(hook), vec_positions.index(pos)
            subs[hook, pos] = {c: subspace[h, p, j] for j, c in enumerate(conditions)}
    attrs = store.open_dataset(activations).attrs
    n_layers = int(attrs.get("n_layers", 0)) or 1 + max(store.parse_hook_name(h)[0] for h in hooks)
    model = model or str(attrs.get("model", Path(activations).stem))
    return ModelInputs(model, n_layers, train, test, subs), np.asarray(sample_order)


def alignment_table(
    a: ModelInputs,
    b: ModelInputs,
    config: AlignmentConfig,
    dataset: str,
    log=None,
):
    """The tidy table (:data:`COLUMNS`) for one model pair.

    For every site in ``config.sites`` and position in ``config.positions``: the layer pairs at
    matched relative depth, plus the full layer x layer grid where the site is in
    ``grid_sites`` and the position in ``grid_positions``. Each map is fit once per
    (layer_a, layer_b, site, position) and reused across emotions and k.
    """
    import pandas as pd

    rows = []
    cache: dict = {}
    perms_by_n: dict[int, list[np.ndarray]] = {}
    bases = None
    for site in config.sites:
        for position in config.positions:
            layers_a, layers_b = a.layers(site, position), b.layers(site, position)
            if not layers_a or not layers_b:
                raise ValueError(f"no {site} arrays at position {position!r} in one of the models")
            matched = matched_pairs(layers_a, layers_b, site, a.n_layers, b.n_layers)
            if site in config.grid_sites and position in config.grid_positions:
                pairs = [(la, lb) for la in layers_a for lb in layers_b]
            else:
                pairs = sorted(matched)
            start = time.perf_counter()
            for la, lb in pairs:
                hook_a, hook_b = f"blocks.{la}.{site}", f"blocks.{lb}.{site}"
                side_a = a.side(hook_a, position, cache)
                side_b = b.side(hook_b, position, cache)
                n, d_b = len(side_a.train), side_b.train.shape[1]
                if n not in perms_by_n:
                    perms_by_n[n] = shuffle_permutations(n, config.n_shuffles, config.seed)
                if bases is None or bases.shape[1] != d_b:
                    bases = random_bases(d_b, config.k_max, config.n_random, config.seed)
                common = {
                    "dataset": dataset,
                    "model_a": a.name,
                    "model_b": b.name,
                    "layer_a": la,
                    "layer_b": lb,
                    "relative_depth_a": float(relative_depth(la, site, a.n_layers)),
                    "relative_depth_b": float(relative_depth(lb, site, b.n_layers)),
                    "matched_depth": (la, lb) in matched,
                    "site": site,
                    "position": position,
                }
                for row in align_pair(side_a, side_b, config, perms_by_n[n], bases):
                    rows.append({**common, **row})
            if log is not None:
                log(
                    f"{site} {position}: {len(pairs)} layer pairs "
                    f"({len(matched)} matched) in {time.perf_counter() - start:.1f}s"
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def config_dict(config: AlignmentConfig) -> dict:
    """The config as plain JSON-ready values (for manifests)."""
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


# ---------------------------------------------------------------- bootstrap over samples
BOOTSTRAP_COLUMNS = (
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "site",
    "position",
    "condition",
    "method",
    "replicate",
    "k",
    "overlap_before",
    "overlap_after",
    "overlap_random_mean",
    "overlap_random_sd",
)
BOOTSTRAP_PAIRS = ("best", "matched")
_BOOTSTRAP_STREAM = 3


@dataclass(frozen=True)
class BootstrapConfig:
    """Settings of the alignment bootstrap (config keys ``alignment.n_bootstrap`` and
    ``alignment.bootstrap_*``); the maps use the table's :class:`AlignmentConfig`."""

    n_bootstrap: int = 100
    sites: tuple[str, ...] = ("hook_resid_post",)
    positions: tuple[str, ...] = ("mean",)
    pairs: str = "best"

    def __post_init__(self):
        for key in ("sites", "positions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.n_bootstrap < 0:
            raise ValueError(f"alignment.n_bootstrap: {self.n_bootstrap} must be >= 0")
        for key, allowed in (("sites", SITES), ("positions", POSITIONS)):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad:
                raise ValueError(f"alignment.bootstrap_{key}: {bad} not among {list(allowed)}")
        if self.pairs not in BOOTSTRAP_PAIRS:
            raise ValueError(
                f"alignment.bootstrap_pairs: {self.pairs!r} not among {list(BOOTSTRAP_PAIRS)}"
            )

    @classmethod
    def from_config(cls, alignment: Mapping) -> BootstrapConfig:
        return cls(
            n_bootstrap=alignment.get("n_bootstrap", 100),
            sites=alignment.get("bootstrap_sites", ("hook_resid_post",)),
            positions=alignment.get("bootstrap_positions", ("mean",)),
            pairs=alignment.get("bootstrap_pairs", "best"),
        )


def bootstrap_indices(labels: np.ndarray, n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """``n_bootstrap`` resamples (with replacement, stratified by label) of row indices."""
    rng = _rng(seed, _BOOTSTRAP_STREAM)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return [
        np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for _ in range(n_bootstrap)
    ]


def replicate_side(
    x: np.ndarray, labels: np.ndarray, baseline: str, conditions: Sequence[str], k_max: int
) -> Side:
    """A :class:`Side` from (resampled) train rows of every label: neutral rows for the maps,
    emotion subspaces recomputed as the vectors phase does (uncentred PCA of each condition
    sample minus the mean baseline sample, sign-fixed)."""
    from circuitflow import vectors

    mask = np.ones(len(x), dtype=bool)
    subspaces = {}
    for c in conditions:
        comps, _, _ = vectors.pca_subspace(
            vectors.difference_vectors(x, labels, c, baseline, mask), k_max
        )
        padded = np.zeros((k_max, x.shape[1]))
        padded[: len(comps)] = comps
        subspaces[c] = padded
    neutral = x[labels == baseline]
    return Side(neutral, neutral[:0], subspaces)


def bootstrap_pair(
    x_a: np.ndarray,
    x_b: np.ndarray,
    labels: np.ndarray,
    baseline: str,
    config: AlignmentConfig,
    n_bootstrap: int,
) -> list[dict]:
    """Bootstrap replicates for one (hook_a, hook_b, position): x_a [n, d_a] and x_b [n, d_b]
    are the train rows of every label, paired by sample; rows as :func:`align_pair` gives
    (no shuffled maps) plus ``replicate``."""
    conditions = [c for c in dict.fromkeys(labels.tolist()) if c != baseline]
    no_shuffles = AlignmentConfig(**{**config_dict(config), "n_shuffles": 0})
    bases = random_bases(x_b.shape[1], config.k_max, config.n_random, config.seed)
    rows = []
    for b, idx in enumerate(bootstrap_indices(labels, n_bootstrap, config.seed)):
        side_a = replicate_side(x_a[idx], labels[idx], baseline, conditions, config.k_max)
        side_b = replicate_side(x_b[idx], labels[idx], baseline, conditions, config.k_max)
        for row in align_pair(side_a, side_b, no_shuffles, perms=[], bases=bases):
            rows.append({**row, "replicate": b})
    return rows


def bootstrap_layer_pairs(table, site: str, position: str, pairs: str) -> list[tuple[int, int]]:
    """Layer pairs to bootstrap from the alignment table: every matched-depth pair, or the one
    with the largest mean overlap_after over conditions, learned maps and k."""
    t = table[(table["site"] == site) & (table["position"] == position) & table["matched_depth"]]
    if t.empty:
        return []
    if pairs == "matched":
        return sorted({(int(a), int(b)) for a, b in zip(t.layer_a, t.layer_b, strict=True)})
    learned = t[t["method"] != NO_MAP]
    means = learned.groupby(["layer_a", "layer_b"])["overlap_after"].mean()
    best = means.sort_index().idxmax()
    return [(int(best[0]), int(best[1]))]


def read_train_rows(
    activations: str | Path, hooks: Iterable[str], position: str, sample_order=None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Train-split rows of every label at ``position`` for ``hooks`` ({hook: [n, d]} float64),
    their labels and sample ids, sorted by id or put in ``sample_order``."""
    import warnings

    from circuitflow import store

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        coords = store.read_sample_coords(activations)
        ids = coords["sample"].astype(str)
        train = coords["split"] == "train"
        order = np.sort(ids[train]) if sample_order is None else np.asarray(sample_order)
        index = {sid: i for i, sid in enumerate(ids)}
        missing = [sid for sid in order if sid not in index or not train[index[sid]]]
        if missing:
            raise ValueError(
                f"{activations}: train sample {missing[0]!r} of the other model is missing; "
                "both activation stores must come from the same dataset"
            )
        rows = np.array([index[sid] for sid in order])
        positions = list(store.read_array(activations, "position"))
        p = positions.index(position)
        x = {h: store.read_array(activations, h)[rows, p].astype(np.float64) for h in hooks}
    return x, coords["label"][rows], order


def bootstrap_table(
    table,
    activations_a: str | Path,
    activations_b: str | Path,
    baseline: str,
    config: AlignmentConfig,
    boot: BootstrapConfig,
    log=None,
):
    """The tidy bootstrap table (:data:`BOOTSTRAP_COLUMNS`) for one model pair."""
    import pandas as pd

    rows = []
    if boot.n_bootstrap == 0 or table.empty:
        return pd.DataFrame(rows, columns=list(BOOTSTRAP_COLUMNS))
    common = {k: table[k].iloc[0] for k in ("dataset", "model_a", "model_b")}
    for site in boot.sites:
        for position in boot.positions:
            pairs = bootstrap_layer_pairs(table, site, position, boot.pairs)
            if not pairs:
                continue
            hooks_a = sorted({f"blocks.{a}.{site}" for a, _ in pairs})
            hooks_b = sorted({f"blocks.{b}.{site}" for _, b in pairs})
            xa, labels, order = read_train_rows(activations_a, hooks_a, position)
            xb, labels_b, _ = read_train_rows(activations_b, hooks_b, position, order)
            if not np.array_equal(labels, labels_b):
                raise ValueError(f"{activations_b}: labels differ from {activations_a}'s")
            start = time.perf_counter()
            for la, lb in pairs:
                reps = bootstrap_pair(
                    xa[f"blocks.{la}.{site}"],
                    xb[f"blocks.{lb}.{site}"],
                    labels,
                    baseline,
                    config,
                    boot.n_bootstrap,
                )
                head = {**common, "layer_a": la, "layer_b": lb, "site": site, "position": position}
                rows += [{**head, **r} for r in reps]
            if log is not None:
                log(
                    f"bootstrap {site} {position}: {len(pairs)} layer pairs x "
                    f"{boot.n_bootstrap} replicates in {time.perf_counter() - start:.1f}s"
                )
    return pd.DataFrame(rows, columns=list(BOOTSTRAP_COLUMNS))
