"""Tokenization, BOS and padding: the one place text becomes token ids.

``prepend_bos`` is decided per model (config ``models.<name>.prepend_bos``) and applied here
only: the TransformerLens bridge would prepend its own, so every caller tokenizes with
``add_special_tokens=False`` and adds BOS itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int

from circuitflow.core.errors import TokenizationError


@dataclass
class Tokenized:
    """One sample's token ids and the token positions of its trigger span."""

    ids: Int[np.ndarray, " seq"]  # int64, BOS included when prepended
    span: Int[np.ndarray, " n_span"]  # token positions overlapping the character span (or none)
    first: int  # first non-BOS position


def bos_ids(tokenizer, prepend_bos: bool) -> list[int]:
    """``[bos_token_id]`` when BOS is prepended, else ``[]``."""
    if not prepend_bos:
        return []
    if tokenizer.bos_token_id is None:
        raise TokenizationError(
            "prepend_bos is true but the tokenizer has no bos_token; set "
            "models.<name>.prepend_bos: false"
        )
    return [tokenizer.bos_token_id]


def tokenize(tokenizer, rows: Sequence[Mapping], prepend_bos: bool) -> list[Tokenized]:
    """Tokenize ``row["text"]``, prepend BOS if asked, map ``row["span"]`` to token positions
    (``span`` None: an empty span)."""
    bos = bos_ids(tokenizer, prepend_bos)
    enc = tokenizer(
        [r["text"] for r in rows], add_special_tokens=False, return_offsets_mapping=True
    )
    out = []
    for row, ids, offsets in zip(rows, enc["input_ids"], enc["offset_mapping"], strict=True):
        if not ids:
            raise TokenizationError(f"sample {row['sample_id']}: text tokenizes to nothing")
        span = []
        if row.get("span") is not None:  # None: the row has no trigger (span left empty)
            start, end = row["span"]
            span = [i + len(bos) for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if not span and row.get("span") is not None:
            raise TokenizationError(
                f"sample {row['sample_id']}: span {row['span']} covers no token"
            )
        out.append(
            Tokenized(
                np.asarray(bos + list(ids), dtype=np.int64),
                np.asarray(span, dtype=np.int64),
                len(bos),
            )
        )
    return out


def encode_texts(
    tokenizer, texts: Sequence[str], ids: Sequence[str], prepend_bos: bool
) -> list[list[int]]:
    """Token ids of each text (BOS prepended if asked); ``ids`` name the texts in errors."""
    bos = bos_ids(tokenizer, prepend_bos)
    out = []
    for name, text in zip(ids, texts, strict=True):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise TokenizationError(f"prompt {name}: text tokenizes to nothing")
        out.append(bos + list(tokens))
    return out


def right_pad(
    seqs: Sequence[Sequence[int] | np.ndarray], pad_id: int
) -> tuple[Int[torch.Tensor, "batch seq"], list[int]]:
    """Right-padded ids and each row's length (causal attention: tokens never see the pad)."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s)
    return out, [len(s) for s in seqs]


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[torch.Tensor, "batch seq"], Int[torch.Tensor, "batch seq"]]:
    """(input_ids, attention_mask) with the sequences aligned at the end (for generation)."""
    P = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), P), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise TokenizationError(f"row {i}: empty token sequence")
        ids[i, P - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, P - len(seq) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Absolute positions of a left-padded batch: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
