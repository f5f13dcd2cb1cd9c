"""Qwen2-VL and Qwen2.5-VL as families of the ``hf`` backend.

The stimulus is resized to ``image_size = patch_size x spatial_merge_size x TOKENS_PER_SIDE``
(448 px for the released models) and packed the way the Qwen2-VL image processor packs it
(one temporal patch pair, 2 x 2 merge windows). Hook points, tokens in raster order of the
patch grid (the tower's own packing and Qwen2.5's window attention order are undone):
- ``vision.blocks.{i}.hook_resid_post``: vision block i ``[B, g x g, d_vision]`` (g = side /
  patch_size; no CLS token);
- ``projector.hook_out``: the patch merger's output ``[B, (g / merge)^2, d_lm]``;
- ``blocks.{i}.hook_resid_post``: LM layer i at the image-pad positions.
LM inputs: ``<|vision_start|>``, one ``<|image_pad|>`` per merged token, ``<|vision_end|>``.
Every forward pass gets its M-RoPE position ids computed from those ids and the grid
(``get_rope_index``), so patched and clean passes share the same 3-D positions.
"""

from __future__ import annotations

import torch

from circuitflow.models.hf_families import (
    HFFamily,
    add_view,
    block_hooks,
    fixed_inputs,
    lm_forward,
    lm_hooks,
    register_hf_family,
)
from circuitflow.models.vision import HookPoint

TOKENS_PER_SIDE = 16  # merged image tokens along each side of the resized stimulus


def _vision_sizes(vcfg) -> tuple[int, int, int]:
    """(patch_size, spatial_merge_size, temporal_patch_size) of a vision config."""
    return int(vcfg.patch_size), int(vcfg.spatial_merge_size), int(vcfg.temporal_patch_size)


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B * g * g, 3 * temporal * patch * patch] in the processor's order
    (merge windows row by row, the merge x merge patches of each window, then channels)."""
    B, C, H, W = pixels.shape
    gh, gw = H // patch, W // patch
    x = pixels.reshape(B, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7).unsqueeze(6)
    x = x.expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    return x.reshape(B * gh * gw, C * temporal * patch * patch)


def raster_order(g: int, merge: int) -> torch.Tensor:
    """perm with ``packed[:, perm]`` = patches in raster order, for the processor's packing
    (window rows, window columns, then the merge x merge patches of each window)."""
    rows = torch.arange(g).view(g // merge, merge, 1, 1).expand(-1, -1, g // merge, merge)
    cols = torch.arange(g).view(1, 1, g // merge, merge).expand(g // merge, merge, -1, -1)
    # packed index of the patch at (row, col)
    packed = (rows // merge * (g // merge) + cols // merge) * merge * merge
    packed = packed + rows % merge * merge + cols % merge
    return packed.reshape(-1)


class Qwen2VL(HFFamily):
    name = "Qwen2-VL"
    architectures = ("Qwen2VLForConditionalGeneration",)
    model_class = "Qwen2VLForConditionalGeneration"

    def facts(self, model, where) -> dict:
        cfg = model.config
        patch, merge, temporal = _vision_sizes(cfg.vision_config)
        return {
            "image_size": patch * merge * TOKENS_PER_SIDE,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": temporal,
            "n_image_tokens": TOKENS_PER_SIDE**2,
            "n_blocks": cfg.get_text_config().num_hidden_layers,
            "n_vision_blocks": int(cfg.vision_config.depth),
        }

    def window_order(self, visual, grid: torch.Tensor) -> torch.Tensor | None:
        """Order of the merged units inside the vision blocks (None: the processor's)."""
        return None

    def build(self, model, facts: dict) -> dict:
        cfg, inner = model.config, model.model
        patch, merge = int(facts["patch_size"]), int(facts["spatial_merge_size"])
        g = int(facts["image_size"]) // patch
        unit, n_units = merge * merge, (g // merge) ** 2
        grid1 = torch.tensor([[1, g, g]])
        win = self.window_order(inner.visual, grid1)
        unwin = None if win is None else torch.argsort(win)
        perm = raster_order(g, merge)
        back = torch.argsort(perm)

        def vision_view():
            def to_tokens(x):  # [B*g*g, d] (window order) -> [B, g*g, d] (raster)
                t = x.view(-1, n_units, unit, x.shape[-1])
                if unwin is not None:
                    t = t[:, unwin.to(x.device)]
                return t.reshape(t.shape[0], n_units * unit, -1)[:, perm.to(x.device)]

            def from_tokens(t, x):
                t = t[:, back.to(t.device)].reshape(t.shape[0], n_units, unit, -1)
                if win is not None:
                    t = t[:, win.to(t.device)]
                return t.reshape(x.shape).to(x.dtype)

            return to_tokens, from_tokens

        def merger_view():
            def to_tokens(x):  # [B*n_units, d] -> [B, n_units, d] raster
                t = x.view(-1, n_units, x.shape[-1])
                return t if unwin is None else t[:, unwin.to(x.device)]

            def from_tokens(t, x):
                t = t if win is None else t[:, win.to(t.device)]
                return t.reshape(x.shape).to(x.dtype)

            return to_tokens, from_tokens

        hooks = [
            HookPoint(h.name, add_view(h.module, *vision_view()), "projector", h.description)
            for h in block_hooks(
                inner.visual.blocks,
                "vision.hook_resid_post",
                "projector",
                "visual.blocks[{i}] output, patches in raster order",
            )
        ]
        hooks.append(
            HookPoint(
                "projector.hook_out",
                add_view(inner.visual.merger, *merger_view()),
                "projector",
                "visual.merger output (merged image tokens in the LM's space)",
            )
        )
        hooks += lm_hooks(inner.language_model)
        image = int(cfg.image_token_id)
        ids = [int(cfg.vision_start_token_id), *[image] * n_units, int(cfg.vision_end_token_id)]
        lm_inputs = fixed_inputs(ids)
        return {
            "module": QwenVLPixels(model, facts),
            "hooks": hooks,
            "forward_fn": lm_forward(lm_inputs),
            "lm_inputs": lm_inputs,
            "image_token_id": image,
        }


class QwenVLPixels(torch.nn.Module):
    """A Qwen2(.5)-VL whose ``forward`` and ``generate`` take stimulus pixels ``[B, 3, S, S]``;
    ``forward`` passes the M-RoPE position ids of its ``input_ids`` explicitly."""

    def __init__(self, model, facts: dict):
        super().__init__()
        self.model = model
        self.sizes = (
            int(facts["patch_size"]),
            int(facts["spatial_merge_size"]),
            int(facts["temporal_patch_size"]),
        )
        self.g = int(facts["image_size"]) // self.sizes[0]

    @property
    def generation_config(self):
        return self.model.generation_config

    def image_inputs(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict:
        B = pixels.shape[0]
        return {
            "pixel_values": patchify(pixels, *self.sizes),
            "image_grid_thw": torch.tensor([[1, self.g, self.g]] * B, device=pixels.device),
            "mm_token_type_ids": (input_ids == self.model.config.image_token_id).int(),
        }

    def position_ids(self, input_ids, image_inputs: dict, attention_mask=None) -> torch.Tensor:
        """M-RoPE position ids ``[3, B, seq]`` of ``input_ids``."""
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=image_inputs["mm_token_type_ids"],
            image_grid_thw=image_inputs["image_grid_thw"],
            attention_mask=attention_mask,
        )
        return positions

    def forward(self, pixel_values, input_ids, attention_mask=None, **kwargs):
        extra = self.image_inputs(pixel_values, input_ids)
        positions = self.position_ids(input_ids, extra, attention_mask)
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            **extra,
            **kwargs,
        )

    def generate(self, pixel_values, input_ids, **kwargs):
        extra = self.image_inputs(pixel_values, input_ids)
        return self.model.generate(input_ids=input_ids, **extra, **kwargs)


class Qwen25VL(Qwen2VL):
    """Qwen2.5-VL: Qwen2-VL with window attention in the vision tower."""

    name = "Qwen2.5-VL"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    model_class = "Qwen2_5_VLForConditionalGeneration"

    def window_order(self, visual, grid: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(
            grid,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        return index.long()


register_hf_family(Qwen2VL())
register_hf_family(Qwen25VL())
