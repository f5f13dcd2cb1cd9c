"""Politeness strategies and gratitude / apology / anger markers: a documented rule set.

Strategies follow the features of Danescu-Niculescu-Mizil, Sudhof, Jurafsky, Leskovec &
Potts (2013), "A computational approach to politeness with application to social factors"
(ACL), Table 3, re-implemented as word/phrase rules on lower-cased text (no parser): each
``polite_<strategy>`` column is 1 when the strategy occurs in the text, else 0, as the
published binary features. "Sentence start" means the first word of a sentence (sentences
split at ``.!?`` and newlines). The positive/negative-lexicon strategies are left to the
``sentiment`` evaluator.

``polite_score`` = (number of strategies the paper found in polite requests) - (number
found in impolite ones), with the signs below; it is a transparent heuristic, not the
paper's trained classifier. Strategies whose published association was weak (1st/2nd person
outside sentence start, 1st person plural, indicative modal) are reported but not scored.

The ``marker_*`` columns count occurrences: gratitude and apology markers reuse the
strategy phrases; anger markers are a short list of explicit anger words and phrases written
for this project (``ANGER``), since the 2013 feature set has no anger feature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from circuitflow.evaluators.base import Item, register


def _any(*phrases: str) -> str:
    return r"\b(?:" + "|".join(phrases) + r")\b"


WH = _any("what", "why", "who", "how", "where", "when", "which", "whose", "whom")
DEFERENCE = _any("great", "good", "nice", "interesting", "cool", "excellent", "awesome")
GREETING = _any("hi", "hello", "hey", "dear", "good morning", "good afternoon")


GRATITUDE = _any(r"thanks?", "thank you", "thx", r"appreciate[ds]?", "appreciation", "grateful")
APOLOGY = _any(
    "sorry",
    r"apolog(?:y|ies|i[sz]e[sd]?|i[sz]ing)",
    "oops",
    "excuse me",
    "my bad",
    "forgive me",
    "pardon me",
    "regret",
)
ANGER = _any(
    "angry",
    "anger",
    "furious",
    "fury",
    "mad at",
    "outraged?",
    "outrageous",
    "livid",
    "infuriat(?:ed|ing)",
    r"hate[sd]?",
    "unacceptable",
    "ridiculous",
    "annoy(?:ed|ing)",
    "irritat(?:ed|ing)",
    "fed up",
    "sick of",
    "sick and tired",
    "how dare",
    "damn",
    "disgust(?:ed|ing)",
    "pissed",
    "enraged?",
)
HEDGES = _any(
    "think",
    "thought",
    "believe",
    "suggest",
    "perhaps",
    "maybe",
    "possibly",
    "probably",
    "might",
    "somewhat",
    r"seems?",
    "apparently",
    "guess",
    "suppose",
    "likely",
    "presumably",
    "sort of",
    "kind of",
    "wonder",
    "assume",
)
FACTUALITY = _any(
    "really",
    "actually",
    "honestly",
    "surely",
    "in fact",
    "the point",
    "the reality",
    "the truth",
    "obviously",
    "clearly",
    "of course",
)

# (strategy, pattern, where, sign in polite_score): where = "any" | "start" | "not_start".
STRATEGIES: tuple[tuple[str, str, str, int], ...] = (
    ("gratitude", GRATITUDE, "any", 1),
    ("deference", DEFERENCE, "start", 1),
    ("greeting", GREETING, "start", 1),
    ("apologizing", APOLOGY, "any", 1),
    ("please", _any("please"), "not_start", 1),
    ("please_start", _any("please"), "start", -1),
    ("indirect_btw", _any("by the way", "btw"), "any", 1),
    ("direct_question", WH, "start", -1),
    ("direct_start", _any("so", "then", "and", "but", "or"), "start", -1),
    ("counterfactual_modal", _any("could you", "would you"), "any", 1),
    ("indicative_modal", _any("can you", "will you"), "any", 0),
    ("first_person_start", _any("i", "my", "mine", "myself"), "start", 0),
    ("first_person_plural", _any("we", "our", "us", "ours", "ourselves"), "any", 0),
    ("first_person", _any("i", "me", "my", "mine", "myself"), "not_start", 0),
    ("second_person", _any("you", "your", "yours", "yourself", "yourselves"), "not_start", 0),
    ("second_person_start", _any("you", "your", "yours"), "start", -1),
    ("hedges", HEDGES, "any", 1),
    ("factuality", FACTUALITY, "any", -1),
)
MARKERS = (("gratitude", GRATITUDE), ("apology", APOLOGY), ("anger", ANGER))

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_LEAD = re.compile(r"^[\s\"'“”‘’(\[*_-]+")
_COMPILED = [(name, re.compile(pat), where, sign) for name, pat, where, sign in STRATEGIES]
_MARKERS = [(name, re.compile(pat)) for name, pat in MARKERS]


def sentences(text: str) -> list[str]:
    """Lower-cased sentences with leading quotes/brackets stripped; curly apostrophes unified."""
    text = text.lower().replace("’", "'")
    return [s for s in (_LEAD.sub("", p) for p in _SENTENCE.split(text)) if s]


def strategies(text: str) -> dict[str, int]:
    """1/0 per strategy of :data:`STRATEGIES` for one text."""
    sents = sentences(text)
    out = {}
    for name, pat, where, _ in _COMPILED:
        hit = False
        for s in sents:
            for m in pat.finditer(s):
                at_start = m.start() == 0
                if where == "any" or (where == "start") == at_start:
                    hit = True
                    break
            if hit:
                break
        out[name] = int(hit)
    return out


def markers(text: str) -> dict[str, int]:
    """Occurrence counts of the gratitude, apology and anger markers."""
    low = text.lower().replace("’", "'")
    return {name: len(pat.findall(low)) for name, pat in _MARKERS}


def politeness_score(found: dict[str, int]) -> int:
    return sum(sign * found[name] for name, _, _, sign in STRATEGIES)


@register
class PolitenessEvaluator:
    name = "politeness"
    columns = (
        [f"polite_{name}" for name, *_ in STRATEGIES]
        + ["polite_score"]
        + [f"marker_{name}" for name, _ in MARKERS]
    )

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        found = [strategies(it.text) for it in items]
        marks = [markers(it.text) for it in items]
        out = {
            f"polite_{name}": np.array([f[name] for f in found], dtype=float)
            for name, *_ in STRATEGIES
        }
        out["polite_score"] = np.array([politeness_score(f) for f in found], dtype=float)
        for name, _ in MARKERS:
            out[f"marker_{name}"] = np.array([m[name] for m in marks], dtype=float)
        return out
