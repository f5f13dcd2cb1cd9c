"""Evaluating an assembled VLM's projector: caption likelihood, caption retrieval against
one-attribute distractors, greedy descriptions and the attribute words they name, and an
optional SigLIP/CLIP image-text score. Every function is batched and runs without gradients;
the encoder's tokens are computed once per image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

from circuitflow.core.errors import ConfigError
from circuitflow.models.assembled_vlm import AssembledVLM


@torch.no_grad()
def score_captions(
    vlm: AssembledVLM,
    vision_tokens: Float[torch.Tensor, "m n_in d_vision"],
    captions: Sequence[str],
    batch_size: int = 16,
    max_caption_tokens: int | None = None,
) -> tuple[Float[np.ndarray, " m"], Int[np.ndarray, " m"]]:
    """Total log-likelihood (natural log) of each caption (+ EOS) after its image's tokens,
    and the number of tokens scored."""
    if len(vision_tokens) != len(captions):
        raise ConfigError(f"{len(vision_tokens)} images for {len(captions)} captions")
    vlm.eval()
    total, count = [], []
    for i in range(0, len(captions), batch_size):
        batch = vlm.caption_batch(captions[i : i + batch_size], max_caption_tokens)
        nll, scored = vlm.token_nll(vision_tokens[i : i + batch_size], batch)
        total.append(-(nll.double() * scored).sum(1).cpu().numpy())
        count.append(scored.sum(1).cpu().numpy())
    return np.concatenate(total), np.concatenate(count)


def caption_nll(
    vlm: AssembledVLM,
    images: UInt8[np.ndarray, "n h w 3"],
    captions: Sequence[str],
    batch_size: int = 16,
    max_caption_tokens: int | None = None,
) -> Float[np.ndarray, " n"]:
    """Mean NLL per caption token (caption + EOS) of each image's caption, in nats."""
    tokens = vlm.encode_images(images, batch_size)
    total, count = score_captions(vlm, tokens, captions, batch_size, max_caption_tokens)
    return -total / count


@dataclass(frozen=True)
class RetrievalResult:
    """Per image: ``correct`` (1 when the true caption is strictly more likely than every
    distractor; ties count as wrong) and ``rank`` (1 + distractors at least as likely), the
    log-likelihoods, and the chance accuracy ``1 / (1 + n_distractors)``."""

    correct: Int[np.ndarray, " n"]
    rank: Int[np.ndarray, " n"]
    logprob_true: Float[np.ndarray, " n"]
    logprob_distractors: Float[np.ndarray, "n k"]
    chance: float

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def rank_truth(
    true: Float[np.ndarray, " n"], distractors: Float[np.ndarray, "n k"]
) -> tuple[Int[np.ndarray, " n"], Int[np.ndarray, " n"]]:
    """(correct, rank) of true scores among distractor scores; a tie ranks below (wrong)."""
    rank = 1 + (np.asarray(distractors) >= np.asarray(true)[:, None]).sum(1)
    return (rank == 1).astype(np.int64), rank.astype(np.int64)


def retrieval(
    vlm: AssembledVLM,
    images: UInt8[np.ndarray, "n h w 3"],
    true_captions: Sequence[str],
    distractors: Sequence[Sequence[str]],
    batch_size: int = 16,
    max_caption_tokens: int | None = None,
) -> RetrievalResult:
    """Whether each image's true caption has a higher total log-likelihood than each of its
    distractors (captions differing in one attribute; the same number for every image)."""
    n = len(images)
    k = {len(d) for d in distractors}
    if len(true_captions) != n or len(distractors) != n or len(k) != 1 or min(k) < 1:
        raise ConfigError(
            f"retrieval: {n} images, {len(true_captions)} true captions, distractor counts "
            f"{sorted(k)}; expected one caption and the same number (>= 1) of distractors each"
        )
    k = k.pop()
    tokens = vlm.encode_images(images, batch_size)
    texts = [c for t, d in zip(true_captions, distractors, strict=True) for c in (t, *d)]
    reps = tokens.repeat_interleave(k + 1, dim=0)
    total, _ = score_captions(vlm, reps, texts, batch_size, max_caption_tokens)
    total = total.reshape(n, k + 1)
    correct, rank = rank_truth(total[:, 0], total[:, 1:])
    return RetrievalResult(correct, rank, total[:, 0], total[:, 1:], 1.0 / (1 + k))


@torch.no_grad()
def greedy_descriptions(
    vlm: AssembledVLM,
    images: UInt8[np.ndarray, "n h w 3"],
    prompt: str = "",
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuation of BOS + image tokens + ``prompt`` for each image (special
    tokens dropped, whitespace stripped)."""
    vlm.eval()
    param = next(vlm.projector.parameters())
    prompt_ids = vlm.tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    out = []
    for i in range(0, len(images), batch_size):
        pixels = vlm.preprocess(images[i : i + batch_size]).to(param.device, param.dtype)
        ids = vlm.lm_inputs(len(pixels))["input_ids"]
        ids = torch.cat([ids, torch.tensor(prompt_ids, dtype=torch.long).expand(len(ids), -1)], 1)
        ids = ids.to(param.device)
        seq = vlm.generate(ids, pixel_values=pixels, max_new_tokens=max_new_tokens)
        new = seq[:, ids.shape[1] :].cpu().tolist()
        out += [s.strip() for s in vlm.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def attribute_word_accuracy(
    descriptions: Sequence[str], levels: Sequence[str], vocabulary: Sequence[str]
) -> Float[np.ndarray, " n"]:
    """Per description 1.0 when it names its true level's word and no other word of
    ``vocabulary`` (the attribute's levels; whole words, case-insensitive), else 0.0."""
    missing = sorted(set(levels) - set(vocabulary))
    if missing or len(descriptions) != len(levels):
        raise ConfigError(
            f"attribute_word_accuracy: levels {missing[:3]} are not in the vocabulary "
            f"{list(vocabulary)}, or {len(descriptions)} descriptions for {len(levels)} levels"
        )
    patterns = {w: re.compile(rf"\b{re.escape(w.lower())}\b") for w in vocabulary}
    out = []
    for text, level in zip(descriptions, levels, strict=True):
        named = {w for w, pat in patterns.items() if pat.search(text.lower())}
        out.append(1.0 if named == {level} else 0.0)
    return np.asarray(out, dtype=np.float64)


@torch.no_grad()
def siglip_score(
    model,
    tokenizer: Callable[[Sequence[str]], torch.Tensor] | None,
    pixels: Float[torch.Tensor, "n 3 size size"],
    texts: Sequence[str],
    batch_size: int = 32,
) -> Float[np.ndarray, " n"] | None:
    """sigmoid(logit_scale * cos(image, text) + logit_bias) of each (image, its text) pair
    under an open_clip model (SigLIP has a bias; CLIP's is 0); ``None`` without a model.
    ``pixels`` are preprocessed for that model; ``tokenizer`` is its open_clip tokenizer."""
    if model is None:
        return None
    if len(pixels) != len(texts):
        raise ConfigError(f"siglip_score: {len(pixels)} images for {len(texts)} texts")
    param = next(model.parameters())
    out = []
    for i in range(0, len(texts), batch_size):
        img = model.encode_image(pixels[i : i + batch_size].to(param.device, param.dtype))
        txt = model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(param.device))
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        bias = getattr(model, "logit_bias", None)
        logit = model.logit_scale.exp().float() * cos + (0.0 if bias is None else bias.float())
        out.append(torch.sigmoid(logit).double().cpu().numpy())
    return np.concatenate(out)
