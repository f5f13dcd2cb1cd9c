"""Activation patching on image counterfactuals (patching phase, vision models).

For each source photograph and graded attribute, the poor variant (e.g. exposure -2 EV) and the
well-lit / well-composed one (the unchanged ``original`` of the same photo) run through the
model; at each hook point before a fixed readout hook the poor run's output is edited towards
the good run's and the change of the aesthetic readout (:mod:`circuitflow.models.readout`: the
attribute probe, and the CLIP prompt readout of open_clip models) is measured as

    recovery = (r_patched - r_poor) / (r_good - r_poor)

Modes (``vision.patching.modes``), each on every spatial token (CNN grid, ViT patches, LM
image tokens):

- ``full``: the good run's whole hook output. In a sequential network every later layer then
  sees the good run, so recovery is exactly 1 at every hook: a check of the machinery, not a
  finding; its control replaces the difference by a random one of the same norm per image.
- ``direction``: only the component along the attribute's mean-difference direction at that
  hook (vectors store): ``t + ((t_good - t) . u) u`` per token. Recovery by hook says where
  one direction carries the attribute; the control patches the component along seeded random
  directions that carry the same variance of the train-split pooled activations at the hook
  as the attribute's direction (:func:`circuitflow.models.readout.matched_controls`), not
  isotropic ones, which carry about 1/d of it.

Per-pair rows go to ``recovery.csv`` and, in the ``store.MEASUREMENTS_FILE`` layout, to
``measurements.csv`` per source photo (treatment = patched, baseline = unpatched: recovery 0
by definition, control = matched random direction / random difference; a photo's variants and seeds
are averaged per unit by the stats phase).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from circuitflow import store
from circuitflow.core.hooks import replace_main
from circuitflow.core.layers import LayerSpec, select_names
from circuitflow.models import VisionModel, edit_tokens, take_images, tokens_of
from circuitflow.models import readout as ro
from circuitflow.patching.engine import chunks
from circuitflow.workflow import schema_backed

MODES = ("direction", "full")


class VisionPatchingError(ro.ReadoutError):
    """Vision patching cannot run as configured; the message names key and fix."""


@dataclass(frozen=True)
@schema_backed("vision", "patching")
class VisionPatchConfig(ro.ReadoutConfig):
    """``config['vision']['patching']`` plus the shared readout keys of ``config['vision']``."""

    layers: LayerSpec
    modes: tuple[str, ...]
    random_seeds: int
    min_gap: float
    batch_size: int = 64
    clip_min_gap: float  # cosine units

    def __post_init__(self):
        super().__post_init__()
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise VisionPatchingError(
                f"vision.patching.modes: {bad[0]!r} is not one of {', '.join(MODES)}"
            )

    @classmethod
    def from_config(cls, section: Mapping) -> VisionPatchConfig:
        """From the ``vision`` config section (schema defaults already filled)."""
        patching = dict(section.get("patching", {}))
        return cls(
            **ro.ReadoutConfig.section_kwargs(section),
            layers=patching.get("layers", cls.layers),
            modes=tuple(patching.get("modes", cls.modes)),
            random_seeds=patching.get("random_seeds", cls.random_seeds),
            min_gap=patching.get("min_gap", cls.min_gap),
            batch_size=section.get("batch_size", cls.batch_size),
            clip_min_gap=patching.get("clip_min_gap", cls.clip_min_gap),
        )


def select_hooks(
    hooks: Sequence[str], spec: LayerSpec, key: str = "vision.patching.layers"
) -> list[str]:
    """Hooks from ``'all'``, a count of evenly spaced ones (first and last included) or a list
    of indices / relative depths in [0, 1] over ``hooks`` (forward order)."""
    return select_names(hooks, spec, key)


def image_recovery(patched, poor, good) -> Float[np.ndarray, " n"]:
    """(patched - poor) / (good - poor), elementwise (NaN where good == poor)."""
    patched, poor, good = (np.asarray(v, np.float64) for v in (patched, poor, good))
    gap = good - poor
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (patched - poor) / np.where(gap != 0, gap, 1.0), np.nan)


# ---------------------------------------------------------------- edits
def full_patch(good: torch.Tensor) -> Callable:
    """Edit: the whole hook output of the good run."""
    return lambda out: replace_main(out, good)


def direction_patch(kind: str, good: torch.Tensor, units, image_mask=None) -> Callable:
    """Edit: each token's component along its image's unit direction (``units`` [B, d]) set
    to the good run's: ``t + ((t_good - t) . u) u``."""
    gt = tokens_of(kind, good, image_mask)
    U = torch.as_tensor(np.array(units, dtype=np.float64), dtype=gt.dtype, device=gt.device)

    def move(t):
        return t + torch.einsum("bn,bd->bnd", torch.einsum("bnd,bd->bn", gt - t, U), U)

    return lambda out: edit_tokens(kind, out, move, image_mask)


def random_difference_patch(kind: str, good: torch.Tensor, seed: int, image_mask=None) -> Callable:
    """Control edit of ``full``: add a seeded random difference with the Frobenius norm of
    (good - poor) of each image's tokens."""

    def fn(out):
        gt = tokens_of(kind, good, image_mask)

        def move(t):
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t)
            scale = (gt - t).flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
            return t + noise * scale[:, None, None]

        return edit_tokens(kind, out, move, image_mask)

    return fn


# ---------------------------------------------------------------- the run
def run_image_patching(
    vm: VisionModel,
    images,
    pairs: Sequence[ro.ImagePair],
    readouts: Mapping[str, ro.Readout],
    directions: Mapping[tuple[str, str], np.ndarray],
    hooks: Sequence[str],
    cfg: VisionPatchConfig,
    base_seed: int = 0,
    clip: ro.ClipPromptReadout | None = None,
    control_x: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """One row per pair x hook x mode x arm (patched, control seeds) x readout kind: readouts
    r_poor, r_good, r_patched and the recovery. ``images``: uint8 [N, y, x, 3] (or a Zarr
    array) indexed by ``image_index``; ``readouts``: {attribute: Readout} at one hook (may be
    empty with ``clip``); ``clip``: the CLIP prompt readout (open_clip); ``directions``:
    {(hook, attribute): unit vector} for mode ``direction``; ``control_x``: {hook: train-split
    pooled activations [n, d]} the direction controls are matched on
    (:func:`circuitflow.models.readout.train_pooled`)."""
    runner = ro.runner_for(vm, readouts, clip, cfg.position)
    controls = {}
    if "direction" in cfg.modes and cfg.random_seeds:
        if control_x is None:
            raise VisionPatchingError(
                "vision.patching.random_seeds: the matched direction controls need the "
                "train-split pooled activations per hook (control_x); pass them or set "
                "random_seeds: 0"
            )
        used = {k: v for k, v in directions.items() if k[0] in hooks}
        seeds = range(cfg.random_seeds)
        key = "vision.patching.random_seeds"
        controls = ro.matched_controls(control_x, used, seeds, hooks, base_seed, key)
    order = [h.name for h in vm.hooks]
    bad = [h for h in hooks if order.index(h) > order.index(runner.readout)]
    if bad:
        raise VisionPatchingError(f"patching hook {bad[0]} comes after readout {runner.readout}")
    rows = []
    for chunk in chunks(list(pairs), cfg.batch_size):
        poor_px = runner.pixels(take_images(images, np.array([p.poor for p in chunk])))
        good_px = runner.pixels(take_images(images, np.array([p.good for p in chunk])))
        mask = runner.image_mask(len(chunk))
        r_poor = ro.measure(runner, readouts, clip, chunk, poor_px)
        r_good = ro.measure(runner, readouts, clip, chunk, good_px)
        good_out = runner.capture(good_px, hooks)
        for hook in hooks:
            kind, good = runner.points[hook].kind, good_out[hook]
            passes = []
            if "full" in cfg.modes:
                passes.append(("full", "treatment", "", full_patch(good)))
                for s in range(cfg.random_seeds):
                    edit = random_difference_patch(kind, good, base_seed * 1000 + s, mask)
                    passes.append(("full", "control", s, edit))
            if "direction" in cfg.modes:
                units = np.stack([directions[hook, p.attribute] for p in chunk])  # [B, d]
                passes.append(
                    ("direction", "treatment", "", direction_patch(kind, good, units, mask))
                )
                for s in range(cfg.random_seeds):
                    u = np.stack([controls[hook, p.attribute, s] for p in chunk])
                    passes.append(("direction", "control", s, direction_patch(kind, good, u, mask)))
            for mode, arm, seed, edit in passes:
                measured = ro.measure(runner, readouts, clip, chunk, poor_px, {hook: edit})
                for rk, r in measured.items():
                    gap = cfg.min_gap if rk == "probe" else cfg.clip_min_gap
                    rows += _pair_rows(
                        chunk, hook, mode, arm, seed, r, r_poor[rk], r_good[rk], gap, rk
                    )
    return rows


def _pair_rows(
    chunk, hook, mode, arm, seed, r, r_poor, r_good, min_gap, kind="probe"
) -> list[dict]:
    """Rows of one pass; probe: valid when |r_good - r_poor| >= min_gap x |level|, other
    readouts: >= min_gap (their own units)."""
    layer, site = store.parse_hook_name(hook)
    rec = image_recovery(r, r_poor, r_good)
    return [
        {
            "readout_kind": kind,
            "hook": hook,
            "layer": layer,
            "site": site,
            "mode": mode,
            "arm": arm,
            "seed": seed,
            "unit": p.unit,
            "source": p.source,
            "attribute": p.attribute,
            "level": p.level,
            "r_poor": r_poor[i],
            "r_good": r_good[i],
            "r_patched": r[i],
            "recovery": rec[i],
            # readouts that barely separate good from poor make recovery a ratio of noise
            "valid": bool(
                np.isfinite(rec[i])
                and abs(r_good[i] - r_poor[i]) >= min_gap * (abs(p.level) if kind == "probe" else 1)
            ),
        }
        for i, p in enumerate(chunk)
    ]


def image_measurement_rows(
    table, dataset: str, model: str, position: str, readout: str
) -> list[dict]:
    """recovery.csv rows -> store.MEASUREMENTS_FILE rows (valid pairs only): treatment =
    patched, control = random (seeds), baseline = unpatched (recovery 0). The unit is the
    source photo (``unit_kind`` photo: the image dataset's ``frame_id``): its poor variants
    (both signs of a level, every level) share the photo, and the statistics phase averages
    a unit's values."""
    t = pd.DataFrame(table)
    if t.empty:
        return []
    t = t[t["valid"]]
    out = []
    for r in t.itertuples(index=False):
        kind = getattr(r, "readout_kind", "probe")
        common = {
            "phase": "patching",
            "dataset": dataset,
            "model": model,
            "layer": r.layer,
            "site": r.site,
            "position": position,
            "condition": r.attribute,
            "setting": f"mode={r.mode} readout={readout if kind == 'probe' else kind}",
            "metric": "recovery" if kind == "probe" else f"recovery_{kind}",
            "unit": r.source,
            "unit_kind": "photo",
        }
        out.append({**common, "arm": r.arm, "value": float(r.recovery)})
        if r.arm == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out
