"""Fluency: perplexity under the unsteered model, repetition, distinct-2, empty generations.

- ``empty_generation``: 1 if the continuation is empty after EOS truncation (no tokens, or
  only tokens that decode to nothing / whitespace), else 0.
- ``perplexity``: exp(mean negative log-likelihood of the generated tokens given the prompt)
  under the unsteered model (no hooks attached), one batched forward per group of rows. An
  empty generation is the worst case: ``perplexity_cap`` when configured (which then also caps
  every other value), else the largest perplexity of the run (the vocabulary size, a uniform
  guess, when every generation of the run is empty).
- ``repetition_rate``: share of word tokens that repeat an earlier word of the same text,
  1 - unique / total; 1 (worst case) without words.
- ``distinct_2``: unique word bigrams / word bigrams; 0 (worst case) with fewer than two
  words, so a one-"word" run such as "1111111111111111" does not read as diverse.

No fluency value is NaN: an empty or degenerate generation scores as the least fluent one, so
it stays in the comparison instead of dropping out of it. Words are
:func:`circuitflow.evaluators.base.words` (lower-cased), so the last two do not depend on the
model's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from circuitflow.core.generation import CachedForward
from circuitflow.core.tokens import left_pad, pad_id, position_ids
from circuitflow.evaluators.base import Item, register, words

LOGITS_BUDGET = 64_000_000  # floats of logits per forward (256 MB in float32)


def repetition_rate(text: str) -> float:
    """1 - unique words / words; 1 (worst case) for a text without words."""
    w = words(text)
    return 1.0 - len(set(w)) / len(w) if w else 1.0


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams / word n-grams; 0 (worst case) for fewer than ``n`` words."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def is_empty(item: Item) -> bool:
    """An empty continuation: no tokens after EOS truncation, or nothing visible decoded."""
    return not item.tokens or not item.text.strip()


def worst_case_perplexity(
    values: np.ndarray, empty: np.ndarray, cap: float | None, vocab: int
) -> np.ndarray:
    """``values`` with empty generations set to the worst case: ``cap`` (which also clips
    every value) or else the largest finite perplexity of the non-empty ones (``vocab``, the
    perplexity of a uniform guess, when there is none)."""
    out = np.asarray(values, dtype=np.float64).copy()
    empty = np.asarray(empty, dtype=bool)
    if cap is not None:
        out = np.minimum(out, cap)
        worst = float(cap)
    else:
        finite = out[~empty & np.isfinite(out)]
        worst = float(finite.max()) if len(finite) else float(vocab)
    out[empty | ~np.isfinite(out)] = worst
    return out


@torch.no_grad()
def perplexities(bridge, items: Sequence[Item], batch_size: int = 32) -> np.ndarray:
    """Per-item perplexity of ``tokens`` given ``prompt_ids`` under ``bridge`` (unsteered);
    NaN for an item without tokens (:class:`FluencyEvaluator` gives those the worst case).

    Items that share a prompt share its forward pass: each distinct prompt runs once
    (left-padded), its KV cache is copied to every item, then the generated tokens run
    (right-padded) on top. The last prompt position's logits predict the first token.
    """
    out = np.full(len(items), np.nan)
    todo = sorted(
        (i for i, it in enumerate(items) if it.tokens),
        key=lambda i: (len(items[i].prompt_ids), items[i].prompt_ids),
    )
    if not todo:
        return out
    device = next(bridge.parameters()).device
    fwd = CachedForward(bridge)
    vocab = bridge.cfg.d_vocab
    pad = pad_id(bridge.tokenizer)
    i0 = 0
    while i0 < len(todo):
        t_max = max(len(items[i].tokens) for i in todo[i0 : i0 + batch_size])
        rows = max(1, min(batch_size, LOGITS_BUDGET // (t_max * vocab)))
        sel = todo[i0 : i0 + rows]
        i0 += len(sel)
        t_max = max(len(items[i].tokens) for i in sel)
        keys = [tuple(items[i].prompt_ids) for i in sel]
        distinct = list(dict.fromkeys(keys))
        inverse = torch.tensor([distinct.index(k) for k in keys], device=device)
        p_ids, p_mask = left_pad(distinct, pad)
        p_ids, p_mask = p_ids.to(device), p_mask.to(device)
        first, cache = fwd(p_ids, p_mask, position_ids(p_mask))  # [U, 1, vocab]
        cache.reorder_cache(inverse)
        n = torch.tensor([len(items[i].tokens) for i in sel], device=device)
        gen = torch.full((len(sel), t_max), pad, dtype=torch.long, device=device)
        for r, i in enumerate(sel):
            gen[r, : n[r]] = torch.as_tensor(items[i].tokens, device=device)
        g_mask = (torch.arange(t_max, device=device)[None, :] < n[:, None]).long()
        mask = torch.cat([p_mask[inverse], g_mask], dim=1)
        start = p_mask.sum(1)[inverse]
        pos = start[:, None] + torch.arange(t_max, device=device)[None, :]
        rest, _ = fwd(gen, mask, pos, cache, keep=None)  # [rows, t_max, vocab]
        logits = torch.cat([first[inverse], rest[:, :-1]], dim=1).float()
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, gen[..., None])[..., 0]
        nll = (nll * g_mask).sum(1) / n
        out[sel] = torch.exp(nll).cpu().numpy()
    return out


@register
class FluencyEvaluator:
    name = "fluency"
    needs_model = True
    columns = ["perplexity", "repetition_rate", "distinct_2", "empty_generation"]

    def __init__(self, bridge, batch_size: int = 32, perplexity_cap: float | None = None):
        if perplexity_cap is not None and not perplexity_cap > 1:
            raise ValueError(
                f"steering.perplexity_cap: must be > 1 (a perplexity), got {perplexity_cap}"
            )
        self.bridge = bridge
        self.batch_size = batch_size
        self.perplexity_cap = perplexity_cap

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        """Scores of one run: the worst-case perplexity of empty generations is taken over
        ``items``, so score every generation of a run in one call."""
        empty = np.array([is_empty(it) for it in items], dtype=bool)
        ppl = perplexities(self.bridge, items, self.batch_size)
        return {
            "perplexity": worst_case_perplexity(
                ppl, empty, self.perplexity_cap, self.bridge.cfg.d_vocab
            ),
            # an empty text has no words: worst case 1 and 0
            "repetition_rate": np.array([repetition_rate(it.text) for it in items]),
            "distinct_2": np.array([distinct_n(it.text, 2) for it in items]),
            "empty_generation": empty.astype(np.float64),
        }
