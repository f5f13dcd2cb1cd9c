"""Evaluators: score generated texts, one interface for every metric.

Each evaluator (:mod:`.base` has the interface) is a registered variant selected by name in
config (``steering.evaluators``); a hub classifier (a local HF sequence-classification folder,
e.g. a RoBERTa sentiment or GoEmotions model) plugs into the same interface through
``steering.hub_classifiers: {name: folder}``.

- ``sentiment``  (:mod:`.sentiment`): VADER compound, TextBlob polarity, AFINN score;
- ``emotion``    (:mod:`.emotion`): NRC emotion-lexicon counts per emotion (bundled word list);
- ``politeness`` (:mod:`.politeness`): politeness strategies after Danescu-Niculescu-Mizil et
  al. (2013) plus gratitude / apology / anger marker counts;
- ``fluency``    (:mod:`.fluency`): perplexity under the unsteered model, repetition rate,
  distinct-2, empty generations (never NaN: an empty generation scores as the worst case);
- hub classifiers (:mod:`.hub`): class probabilities of a local classifier folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from circuitflow.evaluators import emotion, fluency, hub, politeness, sentiment
from circuitflow.evaluators.base import REGISTRY, Evaluator, EvaluatorError, Item, register, words
from circuitflow.evaluators.hub import HubClassifier

NAMES = tuple(REGISTRY)
NEEDS_MODEL = frozenset(
    name for name, cls in REGISTRY.items() if getattr(cls, "needs_model", False)
)

__all__ = [
    "NAMES",
    "NEEDS_MODEL",
    "REGISTRY",
    "Evaluator",
    "EvaluatorError",
    "HubClassifier",
    "Item",
    "build_evaluators",
    "emotion",
    "fluency",
    "hub",
    "politeness",
    "register",
    "score_all",
    "sentiment",
    "words",
]


def build_evaluators(
    names: Sequence[str],
    *,
    bridge=None,
    hub_classifiers: Mapping[str, str] | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    options: Mapping[str, Mapping] | None = None,
) -> list[Evaluator]:
    """Instantiate evaluators by name (``fluency`` needs the unsteered ``bridge``), then one
    hub classifier per ``{name: folder}`` entry. ``options``: extra keyword arguments per
    evaluator name, e.g. ``{"fluency": {"perplexity_cap": 1000.0}}``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise EvaluatorError(f"evaluator options for {unknown}, which are not in {list(names)}")
    out: list[Evaluator] = []
    for name in names:
        if name not in REGISTRY:
            raise EvaluatorError(
                f"steering.evaluators: unknown evaluator {name!r}; "
                f"choose from {', '.join(REGISTRY)} (hub models: steering.hub_classifiers)"
            )
        if name in NEEDS_MODEL:
            if bridge is None:
                raise EvaluatorError(f"evaluator {name!r} needs the unsteered model (bridge=...)")
            out.append(REGISTRY[name](bridge, batch_size=batch_size, **options.get(name, {})))
        else:
            out.append(REGISTRY[name](**options.get(name, {})))
    for name, folder in (hub_classifiers or {}).items():
        out.append(HubClassifier(name, folder, batch_size=batch_size, device=device))
    columns = [c for e in out for c in e.columns]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise EvaluatorError(f"steering.evaluators: two evaluators write column(s) {dupes}")
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
