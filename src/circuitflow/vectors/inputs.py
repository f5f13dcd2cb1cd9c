"""What the vectors phase refuses before it computes: non-finite activations (one NaN makes
every mean, direction and projection of its hook NaN, and the separation rows of that hook
are then left out) and a ``vectors.k_max`` no PCA subspace of the data can fill."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from circuitflow.core.errors import CircuitflowError


class VectorsError(CircuitflowError, ValueError):
    """Activations or config the vectors phase cannot use; the message names the store or key."""


def finite_activations(
    values: np.ndarray, store_path: str, array: str, samples: Sequence[str]
) -> np.ndarray:
    """``values`` ([sample, ...]) unchanged if every entry is finite; else a
    :class:`VectorsError` naming the store, the array and the first bad sample ids."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        ids = [str(s) for s in np.asarray(samples)[bad]]
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        raise VectorsError(
            f"{store_path}: array {array} has NaN/inf in {len(ids)} of {len(values)} samples "
            f"({shown}); extract it again (snakemake {store_path} --forcerun "
            "extract_activations)"
        )
    return values


def kept_components(
    k_max: int, widths: Sequence[int], n_train: Mapping[str, int], model: str
) -> int:
    """Components the vectors store keeps per subspace: ``k_max``, at most the most train
    samples of a condition (the difference vectors' rank cannot exceed it; conditions with
    fewer get NaN singular values beyond their rank).

    A ``k_max`` above d_model (the widest hook) can never be filled: a
    :class:`VectorsError` naming the key, the value, d_model and n, raised before anything
    is allocated.
    """
    d_model, n = max(widths), max(n_train.values())
    if k_max > d_model:
        raise VectorsError(
            f"config key vectors.k_max: {k_max} exceeds d_model {d_model} of model {model!r} "
            f"(train samples per condition: n <= {n}); a subspace has at most min(d_model, n) "
            f"components: set vectors.k_max to at most {min(d_model, n)}"
        )
    return min(k_max, n)
