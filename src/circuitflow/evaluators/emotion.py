"""Emotion: NRC Emotion Lexicon counts per emotion (Mohammad & Turney 2013).

The word list is the one bundled in the ``nrclex`` wheel (``nrclex/data/nrc_en.json``), fed a
token list (``NRCLex.load_token_list``) so no TextBlob/NLTK corpora are needed. Words are
matched as written (lower-cased, not lemmatised): "thanks" counts only if listed. Research use
only (NRC terms); cite the paper above.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuitflow.evaluators.base import Item, register, words

NRC_EMOTIONS = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "sadness",
    "surprise",
    "trust",
    "positive",
    "negative",
)


@register
class EmotionEvaluator:
    name = "emotion"
    columns = [f"nrc_{e}" for e in NRC_EMOTIONS]

    def __init__(self):
        # optional lexicon packages (requirements.txt, not the package deps): loaded on use
        from nrclex import NRCLex

        self._nrc = NRCLex()

    def counts(self, text: str) -> dict[str, int]:
        self._nrc.load_token_list(words(text))
        raw = self._nrc.raw_emotion_scores
        return {e: int(raw.get(e, 0)) for e in NRC_EMOTIONS}

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        rows = [self.counts(it.text) for it in items]
        return {f"nrc_{e}": np.array([r[e] for r in rows], dtype=float) for e in NRC_EMOTIONS}
