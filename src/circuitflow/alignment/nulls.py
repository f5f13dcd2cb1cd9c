"""Seeded null draws of the alignment table: shuffled pairings and random subspaces.

Both baselines are drawn once per seed and shared by every layer pair, so two rows of a table
are compared against the same draws; each kind has its own seed stream
(:data:`~circuitflow.alignment.config.SHUFFLE_STREAM`, ``RANDOM_STREAM``).
"""

from __future__ import annotations

import numpy as np

from circuitflow.alignment.config import RANDOM_STREAM, SHUFFLE_STREAM
from circuitflow.core import rand


def shuffle_permutations(n: int, n_shuffles: int, seed: int) -> list[np.ndarray]:
    """``n_shuffles`` seeded permutations of ``n`` rows (the same for every layer pair)."""
    rng = rand.rng(seed, SHUFFLE_STREAM)
    return [rng.permutation(n) for _ in range(n_shuffles)]


def random_bases(d: int, k_max: int, n_random: int, seed: int) -> np.ndarray:
    """``n_random`` uniformly random nested orthonormal bases of R^d: ``[n_random, d, k_max]``
    (k_max at most d); columns ``[:, :k]`` span a uniformly random k-dim subspace for every k."""
    return rand.random_bases(rand.rng(seed, RANDOM_STREAM), n_random, d, k_max)
