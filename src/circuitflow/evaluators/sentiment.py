"""Sentiment: VADER compound [-1, 1], TextBlob (pattern) polarity [-1, 1], AFINN sum score.

All three are lexicon/rule based and read only the word lists shipped in their wheels (no
NLTK corpora are downloaded: TextBlob's polarity uses its bundled pattern lexicon).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuitflow.evaluators.base import Item, register


@register
class SentimentEvaluator:
    name = "sentiment"
    columns = ["vader_compound", "textblob_polarity", "afinn"]

    def __init__(self):
        # optional lexicon packages (requirements.txt, not the package deps): loaded on use
        from afinn import Afinn
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()
        self._afinn = Afinn(language="en")

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        from textblob import TextBlob

        texts = [it.text for it in items]
        return {
            "vader_compound": np.array(
                [self._vader.polarity_scores(t)["compound"] for t in texts], dtype=float
            ),
            "textblob_polarity": np.array(
                [TextBlob(t).sentiment.polarity for t in texts], dtype=float
            ),
            "afinn": np.array([self._afinn.score(t) for t in texts], dtype=float),
        }
