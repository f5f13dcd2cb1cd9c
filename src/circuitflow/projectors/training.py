"""Training an assembled VLM's projector on image captions (next-token cross-entropy).

The encoder and LM stay frozen; only the projector (and a LoRA adapter, when on) trains. The
frozen encoder's tokens are computed once per image and reused by every step. The caption
order comes from a generator seeded with ``cfg.seed`` (with the VLM's own init seed, reruns
on the same machine and thread count give identical bytes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import UInt8

from circuitflow.core.errors import ConfigError
from circuitflow.models.assembled_vlm import AssembledVLM
from circuitflow.workflow import schema_backed

WORKFLOW_KEYS = (
    "dataset",
    "encoder",
    "lm",
    "circuit_model",
    "eval_batch_size",
    "eval_views",
    "describe_tokens",
    "score_model",
    "architectures",
    "encoder_hook",
    "image_size",
    "n_out",
    "n_out_sweep",
    "hidden",
    "depth",
    "seeds",
)  # config keys that build the VLM or the set of runs, not training settings


@dataclass(frozen=True)
@schema_backed("projectors")
class ProjectorTrainConfig:
    """One projector's training settings (defaults: the schema's ``projectors`` section).

    ``steps`` AdamW steps of ``batch_size`` captions; the learning rate warms up linearly over
    ``warmup_steps`` then decays to 0 on a cosine; weight decay applies to matrices only.
    Captions keep ``max_caption_tokens`` tokens (then EOS). ``lora``: also train a rank
    ``lora_rank`` LoRA adapter on the LM.
    """

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_caption_tokens: int
    lora: bool
    lora_rank: int
    seed: int = 0
    grad_clip: float = 1.0  # not a config key
    encode_batch_size: int = 32  # not a config key

    def __post_init__(self):
        for key in ("steps", "batch_size", "max_caption_tokens", "lora_rank"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"projectors.{key}: {value!r} is invalid; expected >= 1")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps:
            raise ConfigError(f"projectors.warmup_steps: {self.warmup_steps!r}; expected >= 0")
        for key in ("lr", "weight_decay"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"projectors.{key}: {value!r} is invalid; expected >= 0")
        if self.lr == 0:
            raise ConfigError("projectors.lr: 0 trains nothing; expected > 0")

    @classmethod
    def from_config(cls, section: Mapping, seed: int = 0) -> ProjectorTrainConfig:
        """From the validated ``projectors`` section (schema defaults filled) and one seed."""
        keys = {k: v for k, v in section.items() if k not in WORKFLOW_KEYS}
        return cls(**keys, seed=seed)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): linear warmup, then cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Index batches for ``steps`` steps: reshuffled epochs of ``range(n)`` from ``seed``,
    concatenated and cut into ``batch_size`` pieces (a batch may span two epochs)."""
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-need // n))])
    return [order[i * batch_size : (i + 1) * batch_size].numpy() for i in range(steps)]


def caption_loss(
    vlm: AssembledVLM, vision_tokens: torch.Tensor, captions: Sequence[str], max_tokens: int
) -> tuple[torch.Tensor, int]:
    """Mean next-token NLL over the caption (+ EOS) tokens of a batch, and their count."""
    batch = vlm.caption_batch(captions, max_tokens)
    nll, scored = vlm.token_nll(vision_tokens, batch)
    n = int(scored.sum())
    return (nll * scored).sum() / n, n


def train_projector(
    vlm: AssembledVLM,
    images: UInt8[np.ndarray, "n h w 3"],
    captions: Sequence[str],
    cfg: ProjectorTrainConfig,
) -> tuple[AssembledVLM, list[dict]]:
    """Train ``vlm``'s projector (in place) on (image, caption) pairs; returns the VLM in
    eval mode and one curve row per step: step, loss (mean over the batch's caption
    tokens), lr, tokens (caption tokens seen so far), seconds (since the start)."""
    if len(images) != len(captions) or len(captions) == 0:
        raise ConfigError(
            f"train_projector: {len(images)} images and {len(captions)} captions; expected the "
            "same number, at least one"
        )
    start = time.perf_counter()
    if cfg.lora and not vlm.config["lora"]:
        vlm.enable_lora(cfg.lora_rank, cfg.seed)
    tokens = vlm.encode_images(images, cfg.encode_batch_size)  # frozen: once per image
    params = [p for p in vlm.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps)
    )
    vlm.train()
    rows, seen = [], 0
    for step, idx in enumerate(epoch_order(len(captions), cfg.steps, cfg.batch_size, cfg.seed)):
        batch = [captions[i] for i in idx]
        loss, n = caption_loss(vlm, tokens[torch.as_tensor(idx)], batch, cfg.max_caption_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        seen += n
        rows.append(
            {
                "step": step + 1,
                "loss": float(loss.detach()),
                "lr": lr,
                "tokens": seen,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    vlm.eval()
    return vlm, rows
