"""Seeded random directions and bases: every random control draws from here.

Each draw takes its seed parts explicitly (config seed, control seed, layer or hook index),
so a rerun gives identical bytes and two controls never share a stream by accident.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float


def rng(*seed_parts: int) -> np.random.Generator:
    """A generator for the seed sequence ``seed_parts`` (e.g. base seed, control seed, layer)."""
    return np.random.default_rng([int(s) for s in seed_parts])


def random_unit(d: int, *seed_parts: int) -> Float[np.ndarray, " d"]:
    """A seeded Gaussian direction of unit norm in R^d."""
    v = rng(*seed_parts).standard_normal(d)
    return v / np.linalg.norm(v)


def orthonormal_rows(vectors: np.ndarray, k: int) -> Float[np.ndarray, "k d"]:
    """``[k, d]`` orthonormal basis of the span of ``vectors`` (zero rows pad rank < k)."""
    v = np.asarray(vectors, dtype=np.float64).reshape(-1, vectors.shape[-1])
    v = v[np.linalg.norm(v, axis=1) > 1e-12]
    out = np.zeros((k, vectors.shape[-1]))
    if len(v):
        q, r = np.linalg.qr(v.T)
        keep = np.abs(np.diag(r)) > 1e-8 * np.abs(np.diag(r)).max()
        q = q[:, keep][:, :k].T
        out[: len(q)] = q
    return out


def random_bases(
    generator: np.random.Generator, n: int, d: int, k: int
) -> Float[np.ndarray, "n d k"]:
    """``n`` uniformly random nested orthonormal bases of R^d, ``[n, d, k]`` (k at most d).

    Columns ``[:, :j]`` span a uniformly random j-dim subspace for every j (QR of a Gaussian
    matrix, signs fixed by the diagonal of R so the draw is unique).
    """
    k = min(k, d)
    out = np.empty((n, d, k))
    for i in range(n):
        q, r = np.linalg.qr(generator.standard_normal((d, k)))
        out[i] = q * np.sign(np.diag(r))
    return out
