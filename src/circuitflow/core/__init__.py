"""The shared core every phase uses and none re-implements.

``hooks`` (attach once, stop-forward), ``layers`` (depth -> block, one rounding rule),
``rand`` (seeded directions and bases), ``subspaces`` (difference vectors, PCA bases),
``tokens`` (tokenize, BOS, padding), ``generation`` (cached greedy decoding) and ``errors``
(the :class:`CircuitflowError` base). Import the submodule you need: ``hooks``, ``tokens``
and ``generation`` load torch, the rest only numpy.
"""

from circuitflow.core.errors import CircuitflowError, ConfigError, HookError, TokenizationError
from circuitflow.core.layers import depth_to_block, resolve_layers, round_half_up

__all__ = [
    "CircuitflowError",
    "ConfigError",
    "HookError",
    "TokenizationError",
    "depth_to_block",
    "resolve_layers",
    "round_half_up",
]
