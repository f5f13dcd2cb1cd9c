"""Which blocks a config entry means: one resolver, one rounding rule.

A layer entry is ``"all"``, a count of evenly spaced blocks (first and last included), or a
list whose integers are block indices and whose floats are relative depths in [0, 1]
(0 = first block, 1.0 = last block). A depth ``f`` is block ``f * (n_layers - 1)`` rounded
half up (``floor(x + 0.5)``), so depth 0.5 of 30 blocks is block 15 wherever it is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from circuitflow.core.errors import ConfigError

LayerSpec = str | int | Sequence[int | float]


def round_half_up(x: float) -> int:
    """The one rounding rule for positions on a grid of blocks: 14.5 -> 15, 14.49 -> 14."""
    return math.floor(x + 0.5)


def depth_to_block(depth: float, n_layers: int) -> int:
    """Block index of relative depth ``depth`` in [0, 1] in a model of ``n_layers`` blocks."""
    return round_half_up(depth * (n_layers - 1))


def resolve_layers(
    spec: LayerSpec, n_layers: int, key: str = "layers", model: str = "model"
) -> tuple[int, ...]:
    """Sorted distinct block indices for ``spec`` (see the module docstring).

    Two depths that round to one block give it once. A block index outside
    ``0..n_layers-1`` or a depth outside [0, 1] is a :class:`ConfigError` naming ``key``.
    """
    bad = f"config key {key}: {spec!r} is not 'all', a count or a list of blocks / depths"
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(bad)
        return tuple(range(n_layers))
    if isinstance(spec, bool):
        raise ConfigError(bad)
    if isinstance(spec, int):
        if spec < 1:
            raise ConfigError(f"config key {key}: count {spec} must be >= 1")
        if spec >= n_layers:
            return tuple(range(n_layers))
        return tuple(sorted({round_half_up(x) for x in np.linspace(0, n_layers - 1, spec)}))
    entries = list(spec)
    if not entries:
        raise ConfigError(bad)
    out = set()
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, int | float):
            raise ConfigError(bad)
        if isinstance(entry, float):
            if not 0.0 <= entry <= 1.0:
                raise ConfigError(
                    f"config key {key}: relative depth {entry} must lie in [0, 1], got {entries}"
                )
            out.add(depth_to_block(entry, n_layers))
        elif not 0 <= entry < n_layers:
            raise ConfigError(
                f"config key {key}: block {entry} out of range for model {model!r} with "
                f"{n_layers} layers (0..{n_layers - 1}); use a relative depth in [0, 1]"
            )
        else:
            out.add(int(entry))
    return tuple(sorted(out))


def select_names(names: Sequence[str], spec: LayerSpec, key: str = "layers") -> list[str]:
    """The entries of an ordered list of hook names that ``spec`` picks (as blocks of it)."""
    return [names[i] for i in resolve_layers(spec, len(names), key)]
