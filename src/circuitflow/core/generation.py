"""Cached greedy decoding of a TransformerLens bridge, with optional hook state per phase.

One implementation serves steering (vectors added while generating), the fluency evaluator
(perplexity under the KV cache) and VLM descriptions. Hooks that edit the pass implement
:class:`GenerationHooks`; their functions stay attached for the whole run (entering
``bridge.hooks`` costs ~0.4 s) and are told which phase of generation is running.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol

import torch
from jaxtyping import Int

from circuitflow.core.errors import CircuitflowError
from circuitflow.core.tokens import position_ids


class GenerationError(CircuitflowError, RuntimeError):
    """The model cannot generate with a KV cache (the message names its class)."""


class GenerationHooks(Protocol):
    """State of hooks that edit generation: where the prompt pass edits, then decode steps."""

    def prefill(self, mask: torch.Tensor) -> None:
        """The prompt pass begins; ``mask [rows, columns of this pass]`` marks edited tokens."""

    def decode(self) -> None:
        """A decoding step begins (one new position per row)."""

    def reset(self) -> None:
        """Generation is over; the hooks become no-ops."""


def _accepts(bridge, name: str) -> bool:
    """Whether the wrapped HF model's forward takes keyword ``name``."""
    return name in inspect.signature(bridge.original_model.forward).parameters


class CachedForward:
    """``bridge.forward`` with the HF KV cache, an explicit mask and explicit positions.

    ``attention_mask`` always spans cache + new tokens; ``positions`` the new tokens only.
    Returns (logits of the last ``keep`` positions, or all when ``keep`` is None; the cache).
    """

    def __init__(self, bridge):
        self.bridge = bridge
        self.keep_kw = _accepts(bridge, "logits_to_keep")
        # Models that derive positions themselves (mRoPE) must not get ours (TL #1626).
        derive = getattr(bridge, "_accepts_derived_position_ids", lambda: True)
        self.positions_kw = _accepts(bridge, "position_ids") and derive()

    def __call__(self, ids, attention_mask, positions, cache=None, keep: int | None = 1):
        kwargs = {}
        if self.positions_kw:
            kwargs["position_ids"] = positions
        if self.keep_kw and keep is not None:
            kwargs["logits_to_keep"] = keep
        if cache is not None:
            kwargs["past_key_values"] = cache
        logits, cache = self.bridge(
            ids,
            return_type="logits_and_cache",
            attention_mask=attention_mask,
            use_cache=True,
            **kwargs,
        )
        if cache is None:
            raise GenerationError(
                f"{type(self.bridge.original_model).__name__}: the forward pass returned no KV "
                "cache; generation needs an HF model with past_key_values"
            )
        return (logits if keep is None else logits[:, -keep:]), cache


def unique_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct row [U], index of each row's distinct row [rows]) over the
    columns of ``tensors`` side by side."""
    joint = torch.cat([t.long() for t in tensors], dim=1)
    uniq, inverse = torch.unique(joint, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), joint.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(joint.shape[0]), reduce="amin")
    return first, inverse


def window_mask(attention_mask: torch.Tensor, window: int, bos: bool) -> torch.Tensor:
    """[rows, P] 0/1: the last ``window`` real prompt tokens of each left-padded row (no BOS)."""
    rows, P = attention_mask.shape
    lengths = attention_mask.sum(1)
    first = P - lengths + (1 if bos else 0)  # first editable column per row
    start = torch.maximum(first, torch.full_like(first, P - window))
    cols = torch.arange(P, device=attention_mask.device)
    return (cols[None, :] >= start[:, None]).to(attention_mask.dtype) * attention_mask


@torch.no_grad()
def greedy_generate(
    bridge,
    input_ids: Int[torch.Tensor, "rows prompt"],
    attention_mask: Int[torch.Tensor, "rows prompt"],
    max_new_tokens: int,
    hooks: GenerationHooks | None = None,
    window: int = 0,
    bos: bool = True,
    share_prefix: bool = True,
) -> Int[torch.Tensor, "rows new"]:
    """Greedy continuation of a left-padded batch with the KV cache.

    ``hooks`` (attached by the caller) are told the prompt pass, with the last ``window``
    prompt tokens of each row marked, and each decoding step.

    ``share_prefix``: rows that repeat a prompt (one prompt under many configurations) share
    the prompt pass up to the edit window: the first ``P - max(window, 1)`` columns run once
    per distinct prompt, unedited (edits later in the sequence cannot reach them under causal
    attention), their KV cache is copied to every row, and only the last ``max(window, 1)``
    columns run per row.
    """
    device = next(bridge.parameters()).device
    input_ids = input_ids.to(device)
    mask = attention_mask.to(device)
    fwd = CachedForward(bridge)
    pos = position_ids(mask)
    rows, P = input_ids.shape
    split = P - max(window, 1)
    first = inverse = None
    if share_prefix and split > 0:
        first, inverse = unique_rows(input_ids.cpu(), mask.cpu())
        if len(first) == rows:
            first = inverse = None
    out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)
    try:
        if first is not None:
            first, inverse = first.to(device), inverse.to(device)
            _, cache = fwd(input_ids[first, :split], mask[first, :split], pos[first, :split])
            cache.reorder_cache(inverse)
            if hooks is not None:
                hooks.prefill(window_mask(mask, window, bos)[:, split:])
            logits, cache = fwd(input_ids[:, split:], mask, pos[:, split:], cache)
        else:
            if hooks is not None:
                hooks.prefill(window_mask(mask, window, bos))
            logits, cache = fwd(input_ids, mask, pos)
        for t in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            out[:, t] = nxt
            if t == max_new_tokens - 1:
                break
            if hooks is not None:
                hooks.decode()
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            pos = pos[:, -1:] + 1
            logits, cache = fwd(nxt[:, None], mask, pos, cache)
    finally:
        if hooks is not None:
            hooks.reset()
    return out.cpu()


def eos_ids(bridge) -> set[int]:
    """Every token id that ends a generation (tokenizer EOS and generation_config EOS)."""
    ids = set()
    tok = bridge.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(bridge.original_model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is not None:
        ids |= {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}
    return ids


def truncate_at_eos(tokens: Sequence[int], stop: set[int]) -> list[int]:
    """Tokens before the first stop token."""
    out = []
    for t in tokens:
        if int(t) in stop:
            break
        out.append(int(t))
    return out
