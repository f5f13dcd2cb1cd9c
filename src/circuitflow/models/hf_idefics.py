"""Flamingo-style VLMs (transformers' Idefics) as a family of the ``hf`` backend.

The image reaches the LM only through gated cross-attention blocks before every
``cross_layer_interval``-th decoder layer. Forward order and hook points:
- ``vision.blocks.{i}.hook_resid_post``: vision encoder layer i ``[B, 1 + patches, d_vision]``;
- ``perceiver.blocks.{i}.hook_attn_out`` / ``perceiver.blocks.{i}.hook_mlp_out``: the
  perceiver resampler block i's attention and MLP outputs over its latents, before their
  residual adds ``[B, n_latents, d_vision]`` (with ``use_resampler``);
- ``projector.hook_out``: the resampler's output latents ``[B, n_latents, d_vision]`` (the
  vision features themselves without a resampler): what the LM cross-attends to;
- ``blocks.{i}.hook_cross_attn_out``: the cross-attention output before its tanh gate, and
  ``blocks.{i}.hook_gated_xattn_out``: the residual stream after the gated cross-attention
  block (the input of decoder layer i), for the layers that have one;
- ``blocks.{i}.hook_resid_post``: decoder layer i.
LM hooks are read at the ``<image>`` token (the first position that attends to the image).
LM inputs: BOS, ``<fake_token_around_image>``, ``<image>``, ``<fake_token_around_image>``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuitflow.models.hf_families import (
    HFFamily,
    block_hooks,
    fixed_inputs,
    lm_forward,
    register_hf_family,
)
from circuitflow.models.vision import HookPoint, VisionModelError

FAKE_TOKEN, IMAGE_TOKEN = "<fake_token_around_image>", "<image>"


def _image_tokens(model, where) -> tuple[int, int]:
    """(fake_token_around_image id, image id): from the folder's tokenizer, else the ids
    Idefics appends after its vocabulary (``additional_vocab_size`` >= 2)."""
    folder = Path(str(where))
    if (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        ids = tok.convert_tokens_to_ids([FAKE_TOKEN, IMAGE_TOKEN])
        if tok.unk_token_id not in ids and None not in ids:
            return int(ids[0]), int(ids[1])
    cfg = model.config
    if cfg.additional_vocab_size >= 2:
        return int(cfg.vocab_size), int(cfg.vocab_size) + 1
    raise VisionModelError(
        f"IdeficsForVisionText2Text: no {IMAGE_TOKEN} / {FAKE_TOKEN} tokens (no tokenizer with "
        f"them in {where}, additional_vocab_size < 2); save the IdeficsProcessor's tokenizer "
        "into the folder"
    )


class IdeficsPixels(torch.nn.Module):
    """Idefics with ``forward`` / ``generate`` on stimulus pixels ``[B, 3, S, S]``: one image
    per row, attended to from the ``<image>`` token on."""

    def __init__(self, model, image_token_id: int):
        super().__init__()
        self.model = model
        self.image_token_id = image_token_id

    @property
    def generation_config(self):
        return self.model.generation_config

    def image_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict:
        seen = (input_ids == self.image_token_id).long().cumsum(1) > 0
        return {"pixel_values": pixels[:, None], "image_attention_mask": seen[..., None].long()}

    def forward(self, pixel_values, input_ids, **kwargs):
        return self.model(
            input_ids=input_ids, **self.image_inputs(pixel_values, input_ids), **kwargs
        )

    def generate(self, pixel_values, input_ids, **kwargs):
        extra = self.image_inputs(pixel_values, input_ids)
        return self.model.generate(input_ids=input_ids, **extra, **kwargs)


class Idefics(HFFamily):
    name = "Idefics"
    architectures = ("IdeficsForVisionText2Text",)
    model_class = "IdeficsForVisionText2Text"

    def facts(self, model, where) -> dict:
        cfg = model.config
        fake, image = _image_tokens(model, where)
        return {
            "image_size": int(cfg.vision_config.image_size),
            "n_blocks": int(cfg.num_hidden_layers),
            "n_vision_blocks": int(cfg.vision_config.num_hidden_layers),
            "cross_layer_interval": int(cfg.cross_layer_interval),
            "use_resampler": bool(cfg.use_resampler),
            "fake_image_token_id": fake,
            "image_token_id": image,
        }

    def build(self, model, facts: dict) -> dict:
        inner = model.model
        hooks = block_hooks(
            inner.vision_model.encoder.layers,
            "vision.hook_resid_post",
            "vit",
            "vision_model encoder layer {i} output (CLS + patches)",
        )
        if inner.config.use_resampler:
            resampler = inner.perceiver_resampler
            for i, (attn, ff) in enumerate(resampler.blocks):
                for site, module, what in (
                    ("hook_attn_out", attn, "attention"),
                    ("hook_mlp_out", ff, "MLP"),
                ):
                    hooks.append(
                        HookPoint(
                            f"perceiver.blocks.{i}.{site}",
                            module,
                            "projector",
                            f"perceiver_resampler block {i} {what} output (before the residual)",
                        )
                    )
            hooks.append(
                HookPoint(
                    "projector.hook_out",
                    resampler,
                    "projector",
                    "perceiver_resampler output latents (what the LM cross-attends to)",
                )
            )
        else:
            last = inner.vision_model.encoder.layers[-1]
            what = "last vision encoder layer output (what the LM cross-attends to)"
            hooks.append(HookPoint("projector.hook_out", last, "vit", what))
        interval = int(inner.cross_layer_interval)
        for i, layer in enumerate(inner.layers):
            if i % interval == 0:
                gated = inner.gated_cross_attn_layers[i // interval]
                hooks += [
                    HookPoint(
                        f"blocks.{i}.hook_cross_attn_out",
                        gated.cross_attn,
                        "lm",
                        f"gated cross-attention before layer {i}: output before its tanh gate",
                    ),
                    HookPoint(
                        f"blocks.{i}.hook_gated_xattn_out",
                        gated,
                        "lm",
                        f"residual stream after the gated cross-attention block before layer {i}",
                    ),
                ]
            hooks.append(
                HookPoint(
                    f"blocks.{i}.hook_resid_post",
                    layer,
                    "lm",
                    f"decoder layer {i} output at the {IMAGE_TOKEN} token",
                )
            )
        image, fake = int(facts["image_token_id"]), int(facts["fake_image_token_id"])
        bos = model.config.bos_token_id
        lm_inputs = fixed_inputs([*([bos] if bos is not None else []), fake, image, fake])
        return {
            "module": IdeficsPixels(model, image),
            "hooks": hooks,
            "forward_fn": lm_forward(lm_inputs),
            "lm_inputs": lm_inputs,
            "image_token_id": image,
        }


register_hf_family(Idefics())
