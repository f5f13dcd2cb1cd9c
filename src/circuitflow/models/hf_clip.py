"""HF CLIP vision encoders (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, and the
image tower of a full ``CLIPModel``) as a family of the ``hf`` backend.

Hook points, as for open_clip: ``blocks.{i}.hook_resid_post`` = output of encoder layer i,
``[batch, 1 + patches, width]`` (CLS first, read as the patches). A ``CLIPModel`` folder (e.g.
``openai/clip-vit-large-patch14``) is prepared as its ``CLIPVisionModel``.
"""

from __future__ import annotations

from circuitflow.models.hf_families import HFFamily, block_hooks, register_hf_family


def _visual(model, pixels):
    return model(pixel_values=pixels)


class HFClipVision(HFFamily):
    """The image tower of transformers' CLIP."""

    name = "CLIP vision"
    architectures = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel")
    family = "vision-encoder"
    model_class = "CLIPVisionModel"

    def facts(self, model, where) -> dict:
        cfg = model.config
        return {
            "image_size": int(cfg.image_size),
            "patch_size": int(cfg.patch_size),
            "n_blocks": int(cfg.num_hidden_layers),
            "d_model": int(cfg.hidden_size),
        }

    def build(self, model, facts: dict) -> dict:
        tower = getattr(model, "vision_model", model)
        hooks = block_hooks(
            tower.encoder.layers,
            "hook_resid_post",
            "vit",
            "encoder.layers[{i}] output (CLS + patches)",
        )
        return {"module": model, "hooks": hooks, "forward_fn": _visual}


register_hf_family(HFClipVision())
