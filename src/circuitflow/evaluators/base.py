"""The evaluator interface and registry: what every evaluator module implements and registers.

An evaluator has a ``name``, the ``columns`` it writes, and ``score(items)`` returning one
array per column, aligned with ``items``. Each module registers its class with
:func:`register`; ``steering.evaluators`` in config selects them by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from circuitflow.core.errors import CircuitflowError


class EvaluatorError(CircuitflowError, ValueError):
    """An evaluator cannot be built as configured (the message names the config key)."""


@dataclass
class Item:
    """One text to score; token ids are needed by model-based evaluators only."""

    text: str
    prompt_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class Evaluator(Protocol):
    name: str
    columns: list[str]

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]: ...


# name -> evaluator class; a class with ``needs_model = True`` is built with the bridge


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` selectable as ``steering.evaluators: [cls.name]``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"evaluator name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes): the shared tokenizer of
    the lexicon and rule evaluators."""
    return re.findall(r"[a-z0-9]+(?:['’][a-z]+)?", text.lower().replace("’", "'"))
