"""Evaluators: score generated texts, one interface for every metric.

An evaluator has a ``name``, the ``columns`` it writes, and ``score(items)`` returning one
array per column, aligned with ``items`` (each an :class:`Item`: the generated text, the
prompt token ids and the generated token ids). Select them by name in config
(``steering.evaluators``); a hub classifier (a local HF sequence-classification folder, e.g. a
RoBERTa sentiment or GoEmotions model) plugs into the same interface through
``steering.hub_classifiers: {name: folder}``.

- ``sentiment``  (:mod:`.sentiment`): VADER compound, TextBlob polarity, AFINN score;
- ``emotion``    (:mod:`.emotion`): NRC emotion-lexicon counts per emotion (bundled word list);
- ``politeness`` (:mod:`.politeness`): politeness strategies after Danescu-Niculescu-Mizil et
  al. (2013) plus gratitude / apology / anger marker counts;
- ``fluency``    (:mod:`.fluency`): perplexity under the unsteered model, repetition rate,
  distinct-2;
- hub classifiers (:mod:`.hub`): class probabilities of a local classifier folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


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


def _registry():
    from circuitflow.evaluators.emotion import EmotionEvaluator
    from circuitflow.evaluators.fluency import FluencyEvaluator
    from circuitflow.evaluators.politeness import PolitenessEvaluator
    from circuitflow.evaluators.sentiment import SentimentEvaluator

    return {
        "sentiment": SentimentEvaluator,
        "emotion": EmotionEvaluator,
        "politeness": PolitenessEvaluator,
        "fluency": FluencyEvaluator,
    }


NAMES = ("sentiment", "emotion", "politeness", "fluency")
NEEDS_MODEL = {"fluency"}


def build_evaluators(
    names: Sequence[str],
    *,
    bridge=None,
    hub_classifiers: Mapping[str, str] | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[Evaluator]:
    """Instantiate evaluators by name (``fluency`` needs the unsteered ``bridge``), then one
    hub classifier per ``{name: folder}`` entry."""
    registry = _registry()
    out: list[Evaluator] = []
    for name in names:
        if name not in registry:
            raise ValueError(
                f"steering.evaluators: unknown evaluator {name!r}; "
                f"choose from {', '.join(registry)} (hub models: steering.hub_classifiers)"
            )
        if name in NEEDS_MODEL:
            if bridge is None:
                raise ValueError(f"evaluator {name!r} needs the unsteered model (bridge=...)")
            out.append(registry[name](bridge, batch_size=batch_size))
        else:
            out.append(registry[name]())
    if hub_classifiers:
        from circuitflow.evaluators.hub import HubClassifier

        for name, folder in hub_classifiers.items():
            out.append(HubClassifier(name, folder, batch_size=batch_size, device=device))
    columns = [c for e in out for c in e.columns]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ValueError(f"steering.evaluators: two evaluators write column(s) {dupes}")
    return out


def score_all(evaluators: Sequence[Evaluator], items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Every evaluator's columns for ``items`` (checked: one value per item, known columns)."""
    out: dict[str, np.ndarray] = {}
    for ev in evaluators:
        scores = ev.score(items)
        if set(scores) != set(ev.columns):
            raise RuntimeError(
                f"evaluator {ev.name!r} returned columns {sorted(scores)}, "
                f"declared {sorted(ev.columns)}"
            )
        for col in ev.columns:
            values = np.asarray(scores[col], dtype=np.float64)
            if values.shape != (len(items),):
                raise RuntimeError(
                    f"evaluator {ev.name!r}: column {col!r} has shape {values.shape}, "
                    f"expected ({len(items)},)"
                )
            out[col] = values
    return out


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes): the shared tokenizer of
    the lexicon and rule evaluators."""
    return re.findall(r"[a-z0-9]+(?:['’][a-z]+)?", text.lower().replace("’", "'"))
