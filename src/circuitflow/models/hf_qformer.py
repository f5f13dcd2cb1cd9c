"""Q-Former VLMs (BLIP-2, InstructBLIP) as families of the ``hf`` backend.

Forward order and hook points (Q = ``num_query_tokens``):
- ``vision.blocks.{i}.hook_resid_post``: vision encoder layer i ``[B, 1 + patches, d_vision]``
  (CLS first, read as the patches);
- ``qformer.blocks.{i}.hook_cross_attn_out`` (layers with cross-attention, every
  ``cross_attention_frequency``): the cross-attention's output projection over the image
  features, before its residual add and LayerNorm ``[B, Q, d_qformer]``;
- ``qformer.blocks.{i}.hook_resid_post``: Q-Former layer i's query tokens ``[B, Q, d_qformer]``
  (InstructBLIP's instruction tokens, which follow the queries, are left out);
- ``projector.hook_out``: ``language_projection`` output ``[B, Q, d_lm]``;
- ``blocks.{i}.hook_resid_post``: LM decoder layer i at the Q image positions.
LM inputs: Q image tokens, then BOS (the processors' layout: the queries before the text).
MiniGPT-4 (BLIP-2's ViT-g and Q-Former, one linear layer into Vicuna) is this family: a
``Blip2ForConditionalGeneration`` folder with a Llama ``text_config``, the linear layer as
``language_projection`` and an image token in the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from circuitflow.models.hf_families import (
    HFFamily,
    PixelInputs,
    add_view,
    block_hooks,
    fixed_inputs,
    lm_forward,
    lm_hooks,
    register_hf_family,
    token_slice,
)
from circuitflow.models.vision import HookPoint, VisionModelError


class Blip2(HFFamily):
    name = "BLIP-2"
    architectures = ("Blip2ForConditionalGeneration",)
    model_class = "Blip2ForConditionalGeneration"

    def facts(self, model, where) -> dict:
        cfg = model.config
        if not cfg.use_decoder_only_language_model:
            raise VisionModelError(
                f"{self.architectures[0]}: an encoder-decoder language model"
                f" ({cfg.text_config.model_type}) is not supported; use a "
                "decoder-only variant (OPT, Llama/Vicuna)"
            )
        if cfg.image_token_id is None:
            raise VisionModelError(
                f"{self.architectures[0]}: config.json has no image_token_id (a checkpoint "
                "from before transformers put the query tokens in the text); download the "
                "current revision or set image_token_id to the tokenizer's <image> id"
            )
        return {
            "image_size": int(cfg.vision_config.image_size),
            "n_blocks": cfg.text_config.num_hidden_layers,
            "n_vision_blocks": cfg.vision_config.num_hidden_layers,
            "n_qformer_blocks": cfg.qformer_config.num_hidden_layers,
            "num_query_tokens": int(cfg.num_query_tokens),
            "image_token_id": int(cfg.image_token_id),
        }

    def module(self, model, facts: dict) -> torch.nn.Module:
        """The module the workflow runs (``forward`` / ``generate`` on pixels)."""
        return model

    def build(self, model, facts: dict) -> dict:
        cfg = model.config
        Q = int(cfg.num_query_tokens)
        hooks = block_hooks(
            model.vision_model.encoder.layers,
            "vision.hook_resid_post",
            "vit",
            "vision_model encoder layer {i} output (CLS + patches)",
        )
        for i, layer in enumerate(model.qformer.encoder.layer):
            if layer.has_cross_attention:
                hooks.append(
                    HookPoint(
                        f"qformer.blocks.{i}.hook_cross_attn_out",
                        layer.crossattention.output.dense,
                        "projector",
                        f"qformer layer {i} cross-attention output (queries over image features)",
                    )
                )
            hooks.append(
                HookPoint(
                    f"qformer.blocks.{i}.hook_resid_post",
                    add_view(layer, *token_slice(0, Q)),
                    "projector",
                    f"qformer layer {i} output at the {Q} query tokens",
                )
            )
        hooks.append(
            HookPoint(
                "projector.hook_out",
                model.language_projection,
                "projector",
                "language_projection output (query tokens in the LM's space)",
            )
        )
        hooks += lm_hooks(model.language_model)
        bos = cfg.text_config.bos_token_id
        image = int(cfg.image_token_id)
        lm_inputs = fixed_inputs([image] * Q + ([bos] if bos is not None else []))
        return {
            "module": self.module(model, facts),
            "hooks": hooks,
            "forward_fn": lm_forward(lm_inputs),
            "lm_inputs": lm_inputs,
            "image_token_id": image,
        }


class InstructBlip(Blip2):
    """InstructBLIP: the Q-Former also reads the instruction (``qformer_input_ids``)."""

    name = "InstructBLIP"
    architectures = ("InstructBlipForConditionalGeneration",)
    model_class = "InstructBlipForConditionalGeneration"

    def facts(self, model, where) -> dict:
        return {**super().facts(model, where), "qformer_input_ids": _qformer_ids(model, where)}

    def module(self, model, facts: dict) -> torch.nn.Module:
        ids = [int(i) for i in facts["qformer_input_ids"]]

        def inputs(pixels: torch.Tensor) -> dict:
            q = torch.tensor(ids, device=pixels.device).expand(pixels.shape[0], -1)
            return {
                "pixel_values": pixels,
                "qformer_input_ids": q,
                "qformer_attention_mask": torch.ones_like(q),
            }

        return PixelInputs(model, inputs)


def _qformer_ids(model, where) -> list[int]:
    """The Q-Former's text for image-only inputs: the empty instruction as its tokenizer
    (``qformer_tokenizer/``) encodes it, else [CLS] [SEP] of BERT's vocabulary, else the pad
    id."""
    folder = Path(str(where)) / "qformer_tokenizer"
    if folder.is_dir():
        from transformers import AutoTokenizer

        return [int(i) for i in AutoTokenizer.from_pretrained(str(folder))("")["input_ids"]]
    qcfg = model.config.qformer_config
    if qcfg.vocab_size >= 30522:  # BERT's vocabulary: [CLS] = 101, [SEP] = 102
        return [101, 102]
    return [int(qcfg.pad_token_id or 0)]


register_hf_family(Blip2())
register_hf_family(InstructBlip())
