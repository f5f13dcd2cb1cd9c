"""The ``hf`` backend: transformers vision encoders and VLMs, one registered family per
``architectures`` entry (:mod:`circuitflow.models.hf_families`), and the LLaVA families.

Hook points of every VLM family: ``vision.blocks.{i}.hook_resid_post`` (vision tower layer i),
``projector.hook_out`` (the image tokens in the LM's space) and ``blocks.{i}.hook_resid_post``
(language-model layer i, at the image-token positions). LLaVA-1.5: one image of
``(S / patch)^2`` tokens after BOS. LLaVA-NeXT / OneVision (anyres): the stimulus is resized to
the smallest square of ``image_grid_pinpoints`` larger than one tile (672 px = 2 x 2 tiles of
336 for LLaVA-NeXT, 768 = 2 x 2 x 384 for OneVision), cut into tiles of the tower's size plus a
downscaled base tile; tower hooks hold every tile's whole layer output ``[B, tiles x (CLS +
patches), d]`` (base tile first; SigLIP towers have no CLS), so that patching a tower site
replaces all the later layers attend to; the projector hook holds every tile's image tokens,
and the LM's image tokens are the packed features (base, then the tile grid row by row with a
newline token after each row).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitflow.models.hf_families import (
    HFFamily,
    PixelInputs,
    add_view,
    architecture_of,
    block_hooks,
    family_for,
    fixed_inputs,
    image_stats,
    lm_forward,
    lm_hooks,
    register_hf_family,
)
from circuitflow.models.registry import ModelSpec, hub_offline, register_backend
from circuitflow.models.vision import HookPoint, VisionBackend, VisionModelError

EXTRA_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
)


def _source(spec: ModelSpec) -> str | Path:
    where = Path(spec.source).expanduser()
    if where.is_dir():
        return where
    offline = hub_offline()
    if offline or spec.source.startswith((".", "/", "~")):
        raise VisionModelError(
            f"model {spec.name!r}: {spec.source!r} is not a local folder"
            + (" (offline: HF_HUB_OFFLINE=1)" if offline else "")
            + "; download it (huggingface-cli download REPO --local-dir DIR) and set "
            f"models.{spec.name}.source: DIR"
        )
    return spec.source


def _prepare_hf(spec: ModelSpec, out: Path) -> dict:
    where = _source(spec)
    try:
        arch = architecture_of(where)
    except (OSError, ValueError) as err:
        raise VisionModelError(
            f"model {spec.name!r}: cannot load {spec.source!r} as a transformers model "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    fam = family_for(arch, spec.name, spec.family)
    try:
        model = fam.load(where)
    except (OSError, ValueError) as err:
        raise VisionModelError(
            f"model {spec.name!r}: cannot load {spec.source!r} as {fam.name} ({arch}): "
            f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        ) from None
    try:
        facts = fam.facts(model, where)
    except VisionModelError as err:
        raise VisionModelError(f"model {spec.name!r}: {err}") from None
    model.save_pretrained(out)
    if isinstance(where, Path):
        for extra in EXTRA_FILES:
            if (where / extra).exists():
                shutil.copy(where / extra, out / extra)
        if (where / "qformer_tokenizer").is_dir():
            shutil.copytree(where / "qformer_tokenizer", out / "qformer_tokenizer")
    else:
        _save_processor(where, out)
    return {
        "architecture": model.config.architectures[0] if model.config.architectures else arch,
        "hf_family": fam.name,
        **image_stats(out, fam),
        **facts,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _save_processor(source: str, out: Path) -> None:
    """A hub model's processor files (tokenizer, image statistics) beside its weights; a
    tower without a processor keeps its family's mean and std."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return
    processor.save_pretrained(out)


class HFBackend(VisionBackend):
    """transformers vision encoders and VLMs; the family comes from config.json."""

    name = "hf"
    fallback = True

    def claims(self, spec: ModelSpec) -> bool:
        return True  # any other vision source: a transformers folder or hub id

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        return _prepare_hf(spec, out)

    def build(self, model_dir: Path, facts: dict) -> dict:
        fam = family_for(facts["architecture"], model_dir.name)
        return fam.build(fam.load(model_dir), facts)


# ---------------------------------------------------------------- shared by the LLaVA families
def _vision_layers(tower) -> torch.nn.ModuleList:
    return getattr(tower, "vision_model", tower).encoder.layers  # CLIPVisionModel / Siglip


def _prefix(cfg) -> list[int]:
    bos = cfg.get_text_config().bos_token_id
    return [bos] if bos is not None else []


def _image_hooks(inner, description: str) -> list[HookPoint]:
    return block_hooks(
        _vision_layers(inner.vision_tower), "vision.hook_resid_post", "vit", description
    )


class Llava(HFFamily):
    """LLaVA-1.5: CLIP tower -> 2-layer MLP -> LM; image tokens after BOS."""

    name = "LLaVA-1.5"
    architectures = ("LlavaForConditionalGeneration",)

    def facts(self, model, where) -> dict:
        vcfg = model.config.vision_config
        return {
            "image_size": int(vcfg.image_size),
            "n_blocks": model.config.get_text_config().num_hidden_layers,
            "n_vision_blocks": vcfg.num_hidden_layers,
        }

    def build(self, model, facts: dict) -> dict:
        cfg, inner = model.config, model.model
        hooks = _image_hooks(inner, "vision_tower encoder layer {i} output (CLS + patches)")
        hooks.append(
            HookPoint(
                "projector.hook_out",
                inner.multi_modal_projector,
                "projector",
                "multi_modal_projector output (image tokens in the LM's space)",
            )
        )
        hooks += lm_hooks(inner.language_model)
        n_patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
        strategy = getattr(cfg, "vision_feature_select_strategy", "default")
        n_image_tokens = n_patches if strategy == "default" else n_patches + 1
        lm_inputs = fixed_inputs(_prefix(cfg) + [cfg.image_token_id] * n_image_tokens)
        return {
            "module": model,
            "hooks": hooks,
            "forward_fn": lm_forward(lm_inputs),
            "lm_inputs": lm_inputs,
            "image_token_id": cfg.image_token_id,
        }


class LlavaNext(HFFamily):
    """LLaVA-NeXT (anyres tiles, spatial unpad, row newlines) and LLaVA-OneVision."""

    name = "LLaVA-NeXT"
    architectures = ("LlavaNextForConditionalGeneration",)

    def facts(self, model, where) -> dict:
        cfg = model.config
        base = int(cfg.vision_config.image_size)
        squares = [h for h, w in cfg.image_grid_pinpoints if h == w and h > base]
        side = min(squares) if squares else base
        return {
            "image_size": side,  # the stimuli are resized to this side, then tiled
            "tile_size": base,
            "n_tiles": 1 + (side // base) ** 2,
            "n_blocks": cfg.get_text_config().num_hidden_layers,
            "n_vision_blocks": cfg.vision_config.num_hidden_layers,
        }

    def build(self, model, facts: dict) -> dict:
        cfg, inner = model.config, model.model
        side, tile, n_tiles = int(facts["image_size"]), int(facts["tile_size"]), facts["n_tiles"]

        def tiles(pixels):
            """[B, 3, side, side] -> {pixel_values [B, tiles, 3, tile, tile], image_sizes}."""
            B = pixels.shape[0]
            base = F.interpolate(pixels, size=(tile, tile), mode="bicubic", align_corners=False)
            k = side // tile
            grid = pixels.unfold(2, tile, tile).unfold(3, tile, tile)  # [B, 3, k, k, t, t]
            grid = grid.permute(0, 2, 3, 1, 4, 5).reshape(B, k * k, 3, tile, tile)
            return {
                "pixel_values": torch.cat([base[:, None], grid], dim=1),
                "image_sizes": torch.tensor([[side, side]] * B, device=pixels.device),
            }

        def to_tokens(x):  # [B*tiles, seq, d] -> [B, tiles*seq, d]
            return x.reshape(-1, n_tiles * x.shape[1], x.shape[-1])

        def from_tokens(t, x):
            return t.reshape(x.shape).to(x.dtype)

        hooks = [
            HookPoint(
                h.name, add_view(h.module, to_tokens, from_tokens), "projector", h.description
            )
            for h in _image_hooks(
                inner, "vision_tower layer {i} output, CLS (CLIP) + patches of every tile"
            )
        ]
        hooks.append(
            HookPoint(
                "projector.hook_out",
                add_view(inner.multi_modal_projector, to_tokens, from_tokens),
                "projector",
                "multi_modal_projector output: every tile's image tokens (base tile first)",
            )
        )
        hooks += lm_hooks(inner.language_model)
        with torch.no_grad():
            param = next(model.parameters())
            probe = tiles(torch.zeros(1, 3, side, side, dtype=param.dtype))
            feats = inner.get_image_features(**probe, return_dict=True).pooler_output
        n_image_tokens = int(feats[0].shape[0])
        lm_inputs = fixed_inputs(_prefix(cfg) + [cfg.image_token_id] * n_image_tokens)
        return {
            "module": PixelInputs(model, tiles),
            "hooks": hooks,
            "forward_fn": lm_forward(lm_inputs),
            "lm_inputs": lm_inputs,
            "image_token_id": cfg.image_token_id,
        }


class LlavaOnevision(LlavaNext):
    name = "LLaVA-OneVision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)


register_hf_family(Llava())
register_hf_family(LlavaNext())
register_hf_family(LlavaOnevision())
register_backend(HFBackend())
