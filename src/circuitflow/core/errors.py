"""One base for every error a user can act on.

Each message is one line: it names the file, config key or model, the bad value, and what to
do. Phase errors derive from :class:`CircuitflowError` (and from the builtin kind they are,
so ``except ValueError`` keeps working); workflow scripts catch the base and print the line.
"""

from __future__ import annotations


class CircuitflowError(Exception):
    """Bad input or config: a one-line message naming the file, key or model and the fix."""


class ConfigError(CircuitflowError, ValueError):
    """A config key has a value the code cannot use (the message names the key)."""


class TokenizationError(CircuitflowError, RuntimeError):
    """A prompt cannot be tokenized as configured (the message names the sample)."""


class HookError(CircuitflowError, RuntimeError):
    """A hook point is missing or never fired (the message names the model and the hook)."""
