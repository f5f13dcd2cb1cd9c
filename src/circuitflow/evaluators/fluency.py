"""Fluency: perplexity of the generation under the unsteered model, repetition, distinct-2.

- ``perplexity``: exp(mean negative log-likelihood of the generated tokens given the prompt)
  under the unsteered model (no hooks attached), one batched forward per group of rows;
  NaN for an empty generation.
- ``repetition_rate``: share of word tokens that repeat an earlier word of the same text,
  1 - unique / total (NaN without words).
- ``distinct_2``: unique word bigrams / word bigrams (NaN with fewer than two words).

Words are :func:`circuitflow.evaluators.base.words` (lower-cased), so the last two do not depend
on the model's tokenizer.
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
    w = words(text)
    return 1.0 - len(set(w)) / len(w) if w else float("nan")


def distinct_n(text: str, n: int = 2) -> float:
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


@torch.no_grad()
def perplexities(bridge, items: Sequence[Item], batch_size: int = 32) -> np.ndarray:
    """Per-item perplexity of ``tokens`` given ``prompt_ids`` under ``bridge`` (unsteered).

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
    columns = ["perplexity", "repetition_rate", "distinct_2"]

    def __init__(self, bridge, batch_size: int = 32):
        self.bridge = bridge
        self.batch_size = batch_size

    def score(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        return {
            "perplexity": perplexities(self.bridge, items, self.batch_size),
            "repetition_rate": np.array([repetition_rate(it.text) for it in items]),
            "distinct_2": np.array([distinct_n(it.text, 2) for it in items]),
        }
