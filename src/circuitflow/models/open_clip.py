"""The ``open_clip`` backend: a CLIP ViT image tower.

Sources: ``open_clip:<arch>@<pretrained tag>``, ``hf-hub:<repo>`` or a local folder with
``open_clip_config.json`` + weights. Hook points: ``blocks.{i}.hook_resid_post`` = output of
residual block i of the image tower, ``[batch, 1 + patches, width]``.
"""

from __future__ import annotations

import json
from pathlib import Path

from circuitflow import store
from circuitflow.models.registry import ModelSpec, register_backend
from circuitflow.models.vision import HookPoint, VisionBackend, VisionModelError


def _prepare_open_clip(spec: ModelSpec, out: Path) -> dict:
    import open_clip
    from safetensors.torch import save_file

    source = spec.source
    try:
        if source.startswith("open_clip:"):
            arch, _, tag = source.removeprefix("open_clip:").partition("@")
            model = open_clip.create_model(arch, pretrained=tag or None)
            model_cfg = open_clip.get_model_config(arch)
        elif source.startswith("hf-hub:"):
            model = open_clip.create_model(source)
            model_cfg = open_clip.get_model_config(source)
        elif (Path(source).expanduser() / "open_clip_config.json").exists():
            where = "local-dir:" + str(Path(source).expanduser())
            model = open_clip.create_model(where)
            model_cfg = open_clip.get_model_config(where)
        else:
            raise VisionModelError(
                f"model {spec.name!r}: source {source!r} is not open_clip:<arch>@<tag>, "
                "hf-hub:<repo> or a folder with open_clip_config.json"
            )
    except VisionModelError:
        raise
    except Exception as err:  # noqa: BLE001 - open_clip raises many kinds when offline
        raise VisionModelError(
            f"model {spec.name!r}: cannot load {source!r} ({type(err).__name__}); offline, put "
            "open_clip_config.json + open_clip_model.safetensors in a folder and set "
            f"models.{spec.name}.source to it"
        ) from None
    visual = model.visual
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    preprocess = {
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n"
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    return {
        "architecture": f"open_clip {type(visual).__name__}",
        "image_size": int(size),
        **preprocess,
        "n_blocks": len(visual.transformer.resblocks),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def is_open_clip_source(source: str) -> bool:
    """``open_clip:<arch>@<tag>``, ``hf-hub:<repo>`` or a folder with open_clip_config.json."""
    return (
        source.startswith(("open_clip:", "hf-hub:"))
        or (Path(source).expanduser() / "open_clip_config.json").exists()
    )


class OpenClipBackend(VisionBackend):
    """A CLIP ViT through open_clip; the image tower's residual blocks are the hook points."""

    name = "open_clip"
    families = ("vision-encoder",)

    def claims(self, spec: ModelSpec) -> bool:
        return is_open_clip_source(spec.source)

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        return _prepare_open_clip(spec, out)

    def build(self, model_dir: Path, facts: dict) -> dict:
        import open_clip

        module = open_clip.create_model("local-dir:" + str(model_dir))
        hooks = [
            HookPoint(
                store.hook_name(i, "hook_resid_post"),
                block,
                "vit",
                f"visual.transformer.resblocks[{i}] output (CLS + patches)",
            )
            for i, block in enumerate(module.visual.transformer.resblocks)
        ]
        return {"module": module, "hooks": hooks, "forward_fn": _visual}


def _visual(model, pixels):
    return model.visual(pixels)


register_backend(OpenClipBackend())
