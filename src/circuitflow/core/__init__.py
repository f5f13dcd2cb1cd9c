"""The shared core every phase uses and none re-implements: hooks, layers, seeded random
directions, tokens, generation and the error base."""

from circuitflow.core.errors import CircuitflowError, ConfigError, HookError, TokenizationError
from circuitflow.core.hooks import HookRunner, StopForward, attach_bridge, attach_modules
from circuitflow.core.layers import depth_to_block, resolve_layers, round_half_up
from circuitflow.core.rand import orthonormal_rows, random_bases, random_unit, rng
from circuitflow.core.tokens import Tokenized, left_pad, position_ids, right_pad, tokenize

__all__ = [
    "CircuitflowError",
    "ConfigError",
    "HookError",
    "HookRunner",
    "StopForward",
    "TokenizationError",
    "Tokenized",
    "attach_bridge",
    "attach_modules",
    "depth_to_block",
    "left_pad",
    "orthonormal_rows",
    "position_ids",
    "random_bases",
    "random_unit",
    "resolve_layers",
    "right_pad",
    "rng",
    "round_half_up",
    "tokenize",
]
