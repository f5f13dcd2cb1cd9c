"""Cross-model similarity of paired activations, with no map and no subspace: debiased linear
CKA and mutual k-NN alignment, each against a null of shuffled pairings.

Both compare two models' activations of the same held-out samples, rows paired by sample
(``x_a [n, d_a]``, ``x_b [n, d_b]``):

- ``cka_debiased``: linear CKA with the unbiased HSIC estimator (Song et al. 2012, as
  Kornblith et al. 2019's ``cka(..., debiased=True)``): both Gram matrices U-centred (diagonal
  zeroed, row / column means removed with the unbiased correction), then
  ``<K~, L~> / (||K~|| ||L~||)``. Close to 0 for independent representations at any n (the
  plain estimator is biased upwards when n is small against d); it can be slightly negative.
- ``mutual_knn``: the mean over samples of |N_a(i) ∩ N_b(i)| / k, N(i) the k nearest
  neighbours of sample i among the others by cosine similarity (Huh et al. 2024, "The
  Platonic Representation Hypothesis"). Rows are centred on their mean before the cosine:
  residual streams carry large constant dimensions that would otherwise dominate every cosine.
  k / (n - 1) in expectation for unrelated representations.

The null (:func:`similarity_null`) permutes the pairing (B's row ``p[i]`` paired with A's row
``i``) and recomputes the measure: the centred Grams and neighbour sets are permuted, not
recomputed, so a draw costs O(n²) (CKA) or O(n k) (k-NN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuitflow.alignment.config import SIMILARITY_MEASURES


def _gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)  # CKA does not depend on it; the Gram stays well conditioned
    return x @ x.T


def unbiased_centred_gram(gram: np.ndarray) -> np.ndarray:
    """U-centring of a Gram matrix ``[n, n]`` (n >= 4): the matrix whose inner product with
    another U-centred Gram is (n (n - 3)) times the unbiased HSIC estimate."""
    n = len(gram)
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 paired samples, got {n}")
    g = np.array(gram, dtype=np.float64)
    np.fill_diagonal(g, 0.0)
    means = g.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    g -= means[:, None]
    g -= means[None, :]
    np.fill_diagonal(g, 0.0)
    return g


def cka_debiased(x_a: np.ndarray, x_b: np.ndarray) -> float:
    """Debiased linear CKA of paired rows ``x_a [n, d_a]``, ``x_b [n, d_b]``."""
    return float(_cka_draws(x_a, x_b, [np.arange(len(x_a))])[0])


def _cka_draws(x_a, x_b, perms) -> np.ndarray:
    ka, kb = unbiased_centred_gram(_gram(x_a)), unbiased_centred_gram(_gram(x_b))
    norm = np.linalg.norm(ka) * np.linalg.norm(kb)
    if norm == 0:
        return np.full(len(perms), np.nan)
    return np.array([(ka * kb[np.ix_(p, p)]).sum() / norm for p in perms])


def neighbour_sets(x: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, k]`` of each row's k nearest other rows by cosine similarity of the
    centred rows (ties: the lower index)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"mutual k-NN needs 1 <= k < n samples (k={k}, n={n})")
    x = x - x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def mutual_knn(x_a: np.ndarray, x_b: np.ndarray, k: int = 10) -> float:
    """Mutual k-NN alignment of paired rows (Huh et al. 2024): mean |N_a(i) ∩ N_b(i)| / k."""
    return float(_knn_draws(x_a, x_b, k, [np.arange(len(x_a))])[0])


def _knn_draws(x_a, x_b, k, perms) -> np.ndarray:
    na, nb = neighbour_sets(x_a, k), neighbour_sets(x_b, k)
    n = len(na)
    in_b = np.zeros((n, n), dtype=bool)
    in_b[np.arange(n)[:, None], nb] = True
    # pairing p: A's row i with B's row p[i]; A's neighbour j counts if p[j] is among p[i]'s
    return np.array([in_b[p[:, None], p[na]].sum() / (n * k) for p in perms])


def similarity_null(
    measure: str, x_a: np.ndarray, x_b: np.ndarray, perms: Sequence[np.ndarray], k: int = 10
) -> tuple[float, np.ndarray]:
    """Observed ``measure`` of the paired rows and its value under each pairing in ``perms``
    (B's rows permuted): ``(value, draws [len(perms)])``."""
    if measure not in SIMILARITY_MEASURES:
        raise ValueError(
            f"unknown similarity measure {measure!r}; choose from {list(SIMILARITY_MEASURES)}"
        )
    if len(x_a) != len(x_b):
        raise ValueError(f"unpaired samples: {len(x_a)} rows in model A vs {len(x_b)} in B")
    identity = np.arange(len(x_a))
    every = [identity, *perms]
    if measure == "cka_debiased":
        draws = _cka_draws(x_a, x_b, every)
    else:
        draws = _knn_draws(x_a, x_b, k, every)
    return float(draws[0]), draws[1:]
