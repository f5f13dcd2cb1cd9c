"""Vision models at run time: hook points, preprocessing, spatial tokens, capture and edits.

Every hook point of a vision encoder or VLM is read out as spatial tokens ``[batch,
n_tokens, d]`` (CNN: the y-x grid; ViT: the patches, CLS left out; projector: all; LM: the
image-token positions) and pooled into the positions of ``store.VISION_POSITIONS``: ``mean``
over tokens, ``center`` token, per-channel ``max``. The backends (``torch_cnn``,
``open_clip``, ``hf_vlm``) build a :class:`VisionModel`; everything here is shared by them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from circuitflow import store
from circuitflow.core.hooks import (
    StopForward,
    attach_modules,
    main_output,
    replace_main,
    run_to_stop,
)
from circuitflow.models.registry import FACTS_FILE, Backend, ModelSourceError


class VisionModelError(ModelSourceError):
    """A vision model cannot be prepared, loaded or hooked; the message says what to do."""


@dataclass
class HookPoint:
    """A module whose output is read as spatial tokens."""

    name: str
    module: torch.nn.Module
    kind: str  # cnn | cnn_head | vit | projector | lm
    description: str


@dataclass
class VisionModel:
    """A loaded vision encoder or VLM: its module, preprocessing and hook points."""

    name: str
    backend: str
    module: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hooks: list[HookPoint]
    forward_fn: Callable = field(repr=False)  # (module, pixels) -> output; runs every hook
    facts: dict = field(default_factory=dict)
    lm_inputs: Callable | None = None  # VLMs: batch -> {input_ids, attention_mask}
    image_token_id: int | None = None

    def hook_names(self) -> list[str]:
        return [h.name for h in self.hooks]

    def points(self) -> dict[str, torch.nn.Module]:
        return {h.name: h.module for h in self.hooks}

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float tensor [B, 3, S, S] (resized, normalized)."""
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

    def forward(self, pixels: torch.Tensor):
        """Run far enough for every hook (hooks may stop the pass early)."""
        return self.forward_fn(self.module, pixels)

    def image_mask(self, batch: int, device=None) -> torch.Tensor | None:
        """VLMs: [batch, seq] True at the image-token positions; None for encoders."""
        if self.lm_inputs is None:
            return None
        ids = self.lm_inputs(batch)["input_ids"]
        return (ids if device is None else ids.to(device)) == self.image_token_id


class VisionBackend(Backend):
    """Shared loading of a prepared vision folder: facts, module, hook points."""

    families = ("vision-encoder", "vlm")

    def build(self, model_dir: Path, facts: dict) -> dict:
        """{module, hooks, forward_fn[, lm_inputs, image_token_id]} of the folder."""
        raise NotImplementedError

    def load(self, model_dir: Path, name: str, dtype: str, device: str) -> VisionModel:
        facts = json.loads((Path(model_dir) / FACTS_FILE).read_text())
        parts = self.build(Path(model_dir), facts)
        parts["module"] = parts["module"].to(device=device, dtype=getattr(torch, dtype)).eval()
        return VisionModel(
            name=name,
            backend=self.name,
            image_size=int(facts["image_size"]),
            mean=tuple(facts["mean"]),
            std=tuple(facts["std"]),
            facts=facts,
            **parts,
        )

    def describe(self, model: VisionModel) -> list[dict]:
        return describe(model)


def load_vision_model(
    model_dir, name: str = "model", dtype: str = "float32", device: str = "cpu"
) -> VisionModel:
    """A prepared vision folder as a :class:`VisionModel` (through the registry)."""
    from circuitflow.models.registry import load_model

    vm = load_model(model_dir, name, dtype, device)
    if not isinstance(vm, VisionModel):
        raise VisionModelError(f"{model_dir}: model {name!r} is not a vision model")
    return vm


# ---------------------------------------------------------------- spatial tokens
def tokens_of(kind: str, x: torch.Tensor, image_mask=None) -> torch.Tensor:
    """Spatial tokens [B, N, d] of a raw hook output tensor (the layout :func:`edit_tokens`
    edits): CNN grid, ViT patches (CLS left out), projector tokens, LM image tokens."""
    if kind in ("cnn", "cnn_head"):
        return x.flatten(2).transpose(1, 2)
    if kind == "vit":
        return x[:, 1:]
    if kind == "projector":
        return x
    B, _, D = x.shape
    return x[image_mask].view(B, -1, D)


def grid_of(kind: str, x: torch.Tensor, n_tokens: int) -> tuple[int, int]:
    """(h, w) of the token grid: the CNN's own; a square of the tokens when they make one."""
    if kind in ("cnn", "cnn_head"):
        return tuple(x.shape[-2:])
    side = int(round(math.sqrt(n_tokens)))
    return (side, side) if side * side == n_tokens else (1, n_tokens)


def pool(tokens: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """[B, N, d] -> [B, position, d] over store.VISION_POSITIONS (mean, center, max)."""
    h, w = grid
    center = (h // 2) * w + (w // 2)
    pooled = [tokens.mean(1), tokens[:, center], tokens.amax(1)]
    return np.stack([p.float().cpu().numpy() for p in pooled], axis=1)


def edit_tokens(kind: str, out, fn: Callable, image_mask=None):
    """Apply ``fn`` (tokens [B, N, d] -> [B, N, d]) to the spatial tokens of a hook output
    and return the output in its own layout. EfficientNet's head hook (``cnn_head``) is edited
    before its ReLU6, which the extraction applies after the hook."""
    x = main_output(out)
    if kind in ("cnn", "cnn_head"):
        B, C, H, W = x.shape
        t = fn(x.flatten(2).transpose(1, 2))
        new = t.transpose(1, 2).reshape(B, C, H, W)
    elif kind == "vit":
        new = x.clone()
        new[:, 1:] = fn(x[:, 1:])
    elif kind == "projector":
        new = fn(x)
    else:
        B, _, D = x.shape
        new = x.clone()
        new[image_mask] = fn(x[image_mask].view(B, -1, D)).reshape(-1, D)
    return replace_main(out, new.to(x.dtype))


# ---------------------------------------------------------------- capture and edits
class Capture:
    """Pooled (and per-token) readouts of the wanted hook points; stops after the last one."""

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
        self.image_mask = None
        self.pooled, self.tokens, self.shapes = {}, {}, {}

    def _record(self, point: HookPoint, out):
        x = main_output(out)
        if point.kind == "cnn_head":
            x = F.relu6(x)  # EfficientNet-Lite applies the head activation after BN
        tokens = tokens_of(point.kind, x, self.image_mask)
        grid = grid_of(point.kind, x, tokens.shape[1])
        self.shapes[point.name] = (tuple(tokens.shape), grid)
        if point.name in self.wanted:
            self.pooled[point.name] = pool(tokens, grid)
        if point.name in self.per_token:
            self.tokens[point.name] = tokens.float().cpu().numpy()
        if point.name == self.last:
            raise StopForward

    def fwd_hooks(self):
        return [(p.name, lambda out, p=p: self._record(p, out)) for p in self.points]

    def run(self, pixels, edits: Mapping[str, Callable] | None = None):
        """({hook: pooled [B, position, d]}, {hook: tokens [B, N, d]}) of one pass, with
        ``edits`` {hook: fn(raw output) -> new output} applied before the readouts."""
        self.pooled, self.tokens, self.shapes = {}, {}, {}
        self.image_mask = self.vm.image_mask(pixels.shape[0], pixels.device)
        points = self.vm.points()
        with (
            attach_modules(points, list((edits or {}).items()), prepend=True),
            attach_modules(points, self.fwd_hooks()),
        ):
            run_to_stop(self.vm.forward, pixels)
        return self.pooled, self.tokens


def describe(vm: VisionModel) -> list[dict]:
    """One row per hook point: name, layer, site, kind, token grid, d_model, module."""
    images = np.zeros((1, vm.image_size, vm.image_size, 3), dtype=np.uint8)
    param = next(vm.module.parameters())
    cap = Capture(vm, vm.hook_names())
    cap.run(vm.preprocess(images).to(param.device, param.dtype))
    rows = []
    for h in vm.hooks:
        if h.name not in cap.shapes:
            raise VisionModelError(f"model {vm.name!r}: hook {h.name} never fired")
        (_, n, d), grid = cap.shapes[h.name]
        layer, site = store.layer_and_site(h.name)
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


class Runner:
    """Forward passes of a :class:`VisionModel` with hook edits, read at one pooled readout
    hook (the forward stops there)."""

    def __init__(self, vm: VisionModel, readout: str, position: str = "mean"):
        self.vm = vm
        self.points = {h.name: h for h in vm.hooks}
        if readout not in self.points:
            raise VisionModelError(f"model {vm.name!r}: no hook point {readout!r}")
        self.readout = readout
        self.p = store.VISION_POSITIONS.index(position)
        param = next(vm.module.parameters())
        self.device, self.dtype = param.device, param.dtype

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        return self.vm.preprocess(images).to(self.device, self.dtype)

    def image_mask(self, batch: int):
        return self.vm.image_mask(batch, self.device)

    def capture(self, pixels, hooks: Sequence[str]) -> dict:
        """Raw outputs (detached clones) of ``hooks`` in one unedited pass."""
        outs = {}

        def keep(name, out):
            outs[name] = main_output(out).detach().clone()

        grab = [(name, lambda out, name=name: keep(name, out)) for name in hooks]
        with attach_modules(self.vm.points(), grab):
            Capture(self.vm, hooks).run(pixels)
        return outs

    def read(self, pixels, edits: Mapping[str, Callable] | None = None) -> np.ndarray:
        """Pooled readout [B, d] with ``edits`` {hook: fn(raw output) -> new output}."""
        pooled, _ = Capture(self.vm, [self.readout]).run(pixels, edits)
        return pooled[self.readout][:, self.p]

    def embed(self, pixels, edits: Mapping[str, Callable] | None = None) -> np.ndarray:
        """open_clip image embedding [B, d] (unnormalized) with ``edits`` {hook: fn}."""
        with torch.no_grad(), attach_modules(self.vm.points(), list((edits or {}).items()), True):
            return self.vm.module.encode_image(pixels).double().cpu().numpy()


def take_images(images, idx) -> np.ndarray:
    """Rows ``idx`` of an in-memory array or a Zarr array (orthogonal selection)."""
    if isinstance(images, np.ndarray):
        return images[idx]
    return images.get_orthogonal_selection(np.asarray(idx))
