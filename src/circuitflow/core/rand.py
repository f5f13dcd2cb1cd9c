"""Seeded random directions and bases: every random control draws from here.

Each draw takes its seed parts explicitly (config seed, control seed, layer or hook index),
so a rerun gives identical bytes and two controls never share a stream by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Decomposition:
    """Centred activations and their SVD: what :func:`matched_unit` draws from. Decompose
    once (:func:`decompose`) when many controls are drawn on the same activations."""

    xc: Float[np.ndarray, "n d"]  # centred activations
    s: Float[np.ndarray, " r"]  # nonzero singular values
    vt: Float[np.ndarray, "r d"]  # their right singular vectors


def decompose(x: Float[np.ndarray, "n d"]) -> Decomposition:
    """:class:`Decomposition` of activations ``x`` [n, d] (centred here)."""
    xc = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    keep = s > s.max() * 1e-10
    return Decomposition(xc, s[keep], vt[keep])


def matched_unit(
    x: Float[np.ndarray, "n d"] | Decomposition,
    target: Float[np.ndarray, " d"],
    generator: np.random.Generator,
    max_power: float = 32.0,
) -> Float[np.ndarray, " d"]:
    """A random unit direction that carries the same variance of ``x`` as ``target`` does.

    The control for a direction that lives on high-variance axes: a uniform direction of R^d
    carries about 1/d of the variance, so beating it is guaranteed. The draw is a Gaussian
    ``z`` weighted on the principal axes of ``x`` by ``s**p`` (``s`` the singular values:
    ``p = 1`` is a draw from the activation covariance, ``p = 0`` an isotropic draw within
    the data's span, larger ``p`` leans on the top axes), with ``p`` found by bisection so
    that its projected variance equals ``target``'s. The direction keeps the covariance's
    smooth profile over the axes instead of mixing in an isotropic tail that would carry it
    off the activation distribution. A target below every such draw (possible only when
    ``x`` spans fewer than ``d`` dimensions) is met by mixing in the data's null space.
    ``x`` [n, d] are the activations the variance is measured on (centred here), or their
    :func:`decompose`; ``target`` need not be unit.
    """
    dec = x if isinstance(x, Decomposition) else decompose(x)
    xc, s, vt = dec.xc, dec.s, dec.vt
    want = _variance(xc, np.asarray(target, np.float64) / np.linalg.norm(target))
    z = generator.standard_normal(xc.shape[1])
    c = vt @ z
    denom = max(len(xc) - 1, 1)

    def direction(p: float) -> np.ndarray:
        u = vt.T @ ((s / s.max()) ** p * c)
        return u / np.linalg.norm(u)

    lo, hi = -max_power, max_power
    if _variance(xc, direction(hi)) < want:  # at the top axis already
        return direction(hi)
    if _variance(xc, direction(lo)) > want:  # below the span's floor: mix in the null space
        u = direction(lo)
        null = z - vt.T @ c
        if np.linalg.norm(null) < 1e-12:
            return u
        null /= np.linalg.norm(null)
        theta = np.arccos(np.sqrt(want / (_variance(xc, u) or 1.0)))
        w = np.cos(theta) * u + np.sin(theta) * null
        return w / np.linalg.norm(w)
    for _ in range(80):
        mid = (lo + hi) / 2
        if ((xc @ direction(mid)) ** 2).sum() / denom > want:
            hi = mid
        else:
            lo = mid
    return direction((lo + hi) / 2)


def matched_basis(
    x: Float[np.ndarray, "n d"] | Decomposition,
    basis: Float[np.ndarray, "k d"],
    generator: np.random.Generator,
) -> Float[np.ndarray, "k d"]:
    """Orthonormal random rows, each drawn by :func:`matched_unit` against one row of
    ``basis`` (orthogonalised in order, so the total variance matches approximately)."""
    dec = x if isinstance(x, Decomposition) else decompose(x)
    rows = [matched_unit(dec, b, generator) for b in np.asarray(basis, np.float64)]
    return orthonormal_rows(np.stack(rows), len(rows))
