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


def _variance(x_centered: np.ndarray, unit: np.ndarray) -> float:
    return float(((x_centered @ unit) ** 2).sum() / max(len(x_centered) - 1, 1))


def matched_unit(
    x: Float[np.ndarray, "n d"],
    target: Float[np.ndarray, " d"],
    generator: np.random.Generator,
    max_power: int = 8,
) -> Float[np.ndarray, " d"]:
    """A random unit direction that carries the same variance of ``x`` as ``target`` does.

    The control for a direction that lives on high-variance axes: a uniform direction of R^d
    carries about 1/d of the variance, so beating it is guaranteed. Draw ``g`` from the
    activation covariance (``x.T @ z``, ``z`` Gaussian; raised to higher powers of the
    covariance while ``g`` carries less variance than ``target``), then rotate it towards an
    isotropic direction orthogonal to it until its projected variance equals ``target``'s
    (bisection on the angle). ``x`` [n, d] are the activations the variance is measured on
    (centred here); ``target`` need not be unit.
    """
    xc = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    want = _variance(xc, np.asarray(target, np.float64) / np.linalg.norm(target))
    z = generator.standard_normal(len(xc))
    g = xc.T @ z
    for _ in range(max_power):
        u = g / np.linalg.norm(g)
        if _variance(xc, u) >= want:
            break
        g = xc.T @ (xc @ u)  # one more power of the covariance
    else:
        u = np.linalg.svd(xc, full_matrices=False)[2][0]
    r = generator.standard_normal(xc.shape[1])
    r -= (r @ u) * u
    r /= np.linalg.norm(r)
    if _variance(xc, r) > want:  # ``target`` carries less than an isotropic direction
        _, s, vt = np.linalg.svd(xc, full_matrices=True)
        low = vt[(s > s.max() * 1e-10).sum() :] if len(vt) > len(s) else vt[-1:]
        r = low.T @ generator.standard_normal(len(low))  # (near) null space of the data
        r -= (r @ u) * u
        r /= np.linalg.norm(r)
    lo, hi = 0.0, np.pi / 2  # variance(lo) >= want >= variance(hi): bisect on the angle
    for _ in range(60):
        mid = (lo + hi) / 2
        w = np.cos(mid) * u + np.sin(mid) * r
        if _variance(xc, w) > want:
            lo = mid
        else:
            hi = mid
    w = np.cos(lo) * u + np.sin(lo) * r
    return w / np.linalg.norm(w)


def matched_basis(
    x: Float[np.ndarray, "n d"],
    basis: Float[np.ndarray, "k d"],
    generator: np.random.Generator,
) -> Float[np.ndarray, "k d"]:
    """Orthonormal random rows, each drawn by :func:`matched_unit` against one row of
    ``basis`` (orthogonalised in order, so the total variance matches approximately)."""
    rows = [matched_unit(x, b, generator) for b in np.asarray(basis, np.float64)]
    return orthonormal_rows(np.stack(rows), len(rows))
