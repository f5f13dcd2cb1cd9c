"""The ``hf`` backend: a LLaVA-style VLM folder (transformers ``AutoModelForImageTextToText``).

Hook points: ``vision.blocks.{i}.hook_resid_post`` (vision tower layer i),
``projector.hook_out`` (the projector's image tokens) and ``blocks.{i}.hook_resid_post``
(language-model layer i, at the image-token positions).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from circuitflow import store
from circuitflow.models.registry import ModelSpec, hub_offline, register_backend
from circuitflow.models.vision import HookPoint, VisionBackend, VisionModelError


def _prepare_hf_vlm(spec: ModelSpec, out: Path) -> dict:
    from transformers import AutoModelForImageTextToText

    where = Path(spec.source).expanduser()
    if not where.is_dir():
        offline = hub_offline()
        if offline or spec.source.startswith((".", "/", "~")):
            raise VisionModelError(
                f"model {spec.name!r}: {spec.source!r} is not a local folder"
                + (" (offline: HF_HUB_OFFLINE=1)" if offline else "")
                + "; download it (huggingface-cli download REPO --local-dir DIR) and set "
                f"models.{spec.name}.source: DIR"
            )
        where = spec.source
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(where))
    except (OSError, ValueError) as err:
        raise VisionModelError(
            f"model {spec.name!r}: cannot load {spec.source!r} as a VLM ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]})"
        ) from None
    model.save_pretrained(out)
    for extra in (
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "chat_template.json",
        "processor_config.json",
    ):
        if isinstance(where, Path) and (where / extra).exists():
            shutil.copy(where / extra, out / extra)
    vcfg = model.config.vision_config
    return {
        "architecture": model.config.architectures[0] if model.config.architectures else "vlm",
        "image_size": int(vcfg.image_size),
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "n_blocks": model.config.get_text_config().num_hidden_layers,
        "n_vision_blocks": vcfg.num_hidden_layers,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _load_hf_vlm(model_dir: Path):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    cfg = model.config
    inner = model.model
    tower = inner.vision_tower
    encoder = getattr(tower, "vision_model", tower).encoder  # CLIPVisionModel or its inner model
    vision_layers = encoder.layers
    lm_layers = inner.language_model.layers
    hooks = [
        HookPoint(
            store.hook_name(i, "vision.hook_resid_post"),
            layer,
            "vit",
            f"vision_tower encoder layer {i} output (CLS + patches)",
        )
        for i, layer in enumerate(vision_layers)
    ]
    hooks.append(
        HookPoint(
            "projector.hook_out",
            inner.multi_modal_projector,
            "projector",
            "multi_modal_projector output (image tokens in the LM's space)",
        )
    )
    hooks += [
        HookPoint(
            store.hook_name(i, "hook_resid_post"),
            layer,
            "lm",
            f"language_model layer {i} output at the image-token positions",
        )
        for i, layer in enumerate(lm_layers)
    ]
    n_patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    strategy = getattr(cfg, "vision_feature_select_strategy", "default")
    n_image_tokens = n_patches if strategy == "default" else n_patches + 1
    image_token = cfg.image_token_id
    bos = cfg.get_text_config().bos_token_id
    prefix = [bos] if bos is not None else []

    def lm_inputs(batch: int):
        ids = torch.tensor(prefix + [image_token] * n_image_tokens)
        ids = ids.unsqueeze(0).expand(batch, -1).contiguous()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return {
        "module": model,
        "hooks": hooks,
        "forward_fn": _forward_fn(lm_inputs),
        "lm_inputs": lm_inputs,
        "image_token_id": image_token,
    }


def _forward_fn(lm_inputs):
    def forward(model, pixels):
        return model(pixel_values=pixels, **lm_inputs(pixels.shape[0]))

    return forward


class HFVLMBackend(VisionBackend):
    """LLaVA-style VLMs (vision tower -> projector -> LM) through transformers."""

    name = "hf"
    fallback = True

    def claims(self, spec: ModelSpec) -> bool:
        return True  # any other vision source: a transformers VLM folder or hub id

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        return _prepare_hf_vlm(spec, out)

    def build(self, model_dir: Path, facts: dict) -> dict:
        return _load_hf_vlm(model_dir)


register_backend(HFVLMBackend())
