"""Steering vision models along attribute directions (steering phase, image datasets).

For each poor variant (a photo's extreme exposure, contrast, ... level; the pairs of
:func:`circuitflow.models.readout.select_pairs`) add ``sign * scale * u`` to every spatial
token at a hook before the readout, where ``u`` is the attribute's unit mean-difference
direction at that hook (vectors store), ``sign = -sign(level)`` points back towards the good
(unchanged) image and ``scale = alpha * mean ||x||`` (pooled-mean activation norm at that hook,
train split of the activation store; ``alphas_relative``). The same signed scale along seeded
random directions matched in the variance they carry is the control
(:func:`circuitflow.core.rand.matched_unit` on the train-split pooled activations at the hook,
target the attribute's direction; :func:`circuitflow.models.readout.matched_controls`). The
readout is the attribute
probe at the later readout hook (as in patching), and the measured value is its shift
towards the good level:

    readout_shift = sign * (r_steered - r_poor)          (level units; > 0 = towards good)
    gap_closed    = readout_shift / |r_good - r_poor|

For open_clip models the CLIP prompt readout (cosine-similarity units) is measured too: rows
with ``readout_kind`` ``clip_prompts``, metric ``readout_shift_clip_prompts``. For VLMs the
greedy description of the image can be steered as well (:func:`run_descriptions`).

Units: a photo's variants are not independent, so ``measurements.csv`` names the source
photo as the unit (``unit_kind`` photo); the statistics average a photo's variants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int

from circuitflow import store
from circuitflow.core.errors import CircuitflowError
from circuitflow.core.hooks import attach_modules, main_output
from circuitflow.core.layers import depth_to_block
from circuitflow.models import Runner, VisionModel, edit_tokens, take_images
from circuitflow.models import readout as ro
from circuitflow.models.readout import ClipPromptReadout, ImagePair, Readout, measure, runner_for
from circuitflow.workflow import schema_backed

Directions = Mapping[tuple[str, str], Float[np.ndarray, " d"]]  # (hook, attribute) -> unit


class VisionSteeringError(CircuitflowError, ValueError):
    """Vision steering cannot run as configured; the message names the key and the fix."""


@dataclass(frozen=True)
@schema_backed("vision", "steering")
class VisionSteerConfig:
    """``config['vision']['steering']`` plus the shared keys of ``config['vision']``."""

    layers: tuple[float | int, ...]
    alphas_relative: tuple[float, ...]
    random_seeds: tuple[int, ...]
    position: str = "mean"
    batch_size: int = 64
    describe_tokens: int  # VLMs: length of the generated description (0: off)
    describe_prompt: str

    @classmethod
    def from_config(cls, section: Mapping) -> VisionSteerConfig:
        steering = dict(section.get("steering", {}))
        return cls(
            layers=tuple(steering.get("layers", cls.layers)),
            alphas_relative=tuple(steering.get("alphas_relative", cls.alphas_relative)),
            random_seeds=tuple(steering.get("random_seeds", cls.random_seeds)),
            describe_tokens=steering.get("describe_tokens", cls.describe_tokens),
            describe_prompt=steering.get("describe_prompt", cls.describe_prompt),
            position=section.get("position", cls.position),
            batch_size=section.get("batch_size", cls.batch_size),
        )


def steer_hooks(hooks: Sequence[str], readout: str, layers: Sequence[float | int]) -> list[str]:
    """Hooks strictly before ``readout``: relative depths (floats in [0, 1], rounded half up)
    over them or indices into them (ints)."""
    before = list(hooks[: list(hooks).index(readout)])
    if not before:
        raise VisionSteeringError(
            f"vision.readout: {readout} is the first hook; nothing before it to steer"
        )
    out = []
    for x in layers:
        if isinstance(x, float):
            if not 0.0 <= x <= 1.0:
                raise VisionSteeringError(f"vision.steering.layers: depth {x} is not in [0, 1]")
            out.append(before[depth_to_block(x, len(before))])
        elif not 0 <= x < len(before):
            raise VisionSteeringError(
                f"vision.steering.layers: index {x} out of range; {len(before)} hooks come "
                f"before the readout {readout} (0..{len(before) - 1}), or use depths in [0, 1]"
            )
        else:
            out.append(before[x])
    return sorted(set(out), key=list(hooks).index)


def mean_pooled_norm(pooled: Float[np.ndarray, "n d"]) -> float:
    """Mean ||x|| of train-split pooled activations at one hook
    (:func:`circuitflow.models.readout.train_pooled`)."""
    a = np.asarray(pooled, np.float64)
    if not len(a):
        raise VisionSteeringError("no train samples for the mean activation norm")
    return float(np.linalg.norm(a, axis=-1).mean())


def add_vectors(
    kind: str, vectors: Float[np.ndarray, "batch d"], image_mask: torch.Tensor | None = None
) -> Callable:
    """Edit: add ``vectors`` (one per image) to every spatial token of a hook output."""

    def fn(out):
        x = main_output(out)
        v = torch.as_tensor(np.array(vectors, dtype=np.float64), dtype=x.dtype, device=x.device)
        return edit_tokens(kind, out, lambda t: t + v[:, None, :], image_mask)

    return fn


Controls = Mapping[tuple[str, str, int], Float[np.ndarray, " d"]]  # (hook, attribute, seed)


def _directions(
    units: Float[np.ndarray, "batch d"],
    attributes: Sequence[str],
    hook: str,
    seeds: Sequence[int],
    controls: Controls,
) -> list[tuple[str, str, int | str, np.ndarray]]:
    """(direction, arm, seed, units [batch, d]): the attribute, then per seed each image's
    matched control for its attribute."""
    dirs = [("attribute", "treatment", "", units)]
    for s in seeds:
        u = np.stack([controls[hook, a, int(s)] for a in attributes])
        dirs.append((f"random:{s}", "control", s, u))
    return dirs


def _controls(
    control_x, directions: Directions, hooks, cfg: VisionSteerConfig, all_hooks, base_seed: int
) -> dict:
    if not cfg.random_seeds:
        return {}
    if control_x is None:
        raise VisionSteeringError(
            "vision.steering.random_seeds: the matched controls need the train-split pooled "
            "activations per steered hook (control_x); pass them or set random_seeds: []"
        )
    used = {k: v for k, v in directions.items() if k[0] in hooks}
    return ro.matched_controls(
        control_x, used, cfg.random_seeds, all_hooks, base_seed, "vision.steering.random_seeds"
    )


def run_steering(
    vm: VisionModel,
    images,
    pairs: Sequence[ImagePair],
    readouts: Mapping[str, Readout],
    directions: Directions,
    hooks: Sequence[str],
    norms: Mapping[str, float],
    cfg: VisionSteerConfig,
    base_seed: int = 0,
    all_hooks: Sequence[str] | None = None,
    clip: ClipPromptReadout | None = None,
    control_x: Mapping[str, Float[np.ndarray, "n d"]] | None = None,
) -> list[dict]:
    """One row per pair x hook x alpha x direction (attribute, random seeds) x readout kind
    (probe; clip_prompts with ``clip``): r_poor, r_good, r_steered, readout_shift, gap_closed.
    ``norms``: {hook: mean pooled norm}; ``all_hooks``: the block hooks in forward order
    (random-direction seeds are per hook index in it); ``control_x``: {hook: train-split
    pooled activations} the matched controls are drawn from (needed with random seeds)."""
    runner = runner_for(vm, readouts, clip, cfg.position)
    index = list(all_hooks or hooks)
    controls = _controls(control_x, directions, hooks, cfg, index, base_seed)
    rows = []
    for i0 in range(0, len(pairs), cfg.batch_size):
        chunk = list(pairs[i0 : i0 + cfg.batch_size])
        poor_px = runner.pixels(take_images(images, np.array([p.poor for p in chunk])))
        good_px = runner.pixels(take_images(images, np.array([p.good for p in chunk])))
        mask = runner.image_mask(len(chunk))
        r_poor_k = measure(runner, readouts, clip, chunk, poor_px)
        r_good_k = measure(runner, readouts, clip, chunk, good_px)
        sign = -np.sign([p.level for p in chunk])
        for hook in hooks:
            kind = runner.points[hook].kind
            units = np.stack([directions[hook, p.attribute] for p in chunk])  # [B, d]
            attrs = [p.attribute for p in chunk]
            dirs = _directions(units, attrs, hook, cfg.random_seeds, controls)
            for alpha in cfg.alphas_relative:
                scale = alpha * norms[hook]
                for direction, arm, seed, u in dirs:
                    vec = (sign * scale)[:, None] * u
                    edits = {hook: add_vectors(kind, vec, mask)}
                    layer, site = store.parse_hook_name(hook)
                    for rk, r in measure(runner, readouts, clip, chunk, poor_px, edits).items():
                        r_poor, r_good = r_poor_k[rk], r_good_k[rk]
                        for i, p in enumerate(chunk):
                            shift = sign[i] * (r[i] - r_poor[i])
                            gap = abs(r_good[i] - r_poor[i])
                            rows.append(
                                {
                                    "hook": hook,
                                    "layer": layer,
                                    "site": site,
                                    "alpha": alpha,
                                    "scale": scale,
                                    "direction": direction,
                                    "arm": arm,
                                    "seed": seed,
                                    "unit": p.unit,
                                    "source": p.source,
                                    "attribute": p.attribute,
                                    "level": p.level,
                                    "readout_kind": rk,
                                    "readout": runner.readout if rk == "probe" else rk,
                                    "r_poor": r_poor[i],
                                    "r_good": r_good[i],
                                    "r_steered": r[i],
                                    "readout_shift": shift,
                                    "gap_closed": shift / gap if gap > 0 else np.nan,
                                }
                            )
    return rows


def image_measurement_rows(table, dataset: str, model: str, position: str) -> list[dict]:
    """samples.csv rows -> store.MEASUREMENTS_FILE rows: metric readout_shift, treatment =
    attribute direction, control = matched random directions (seeds), baseline = unsteered
    (0); unit = the source photo (``unit_kind`` photo: its variants are averaged)."""
    out = []
    for r in table:
        kind = r.get("readout_kind", "probe")
        common = {
            "phase": "steering",
            "dataset": dataset,
            "model": model,
            "layer": r["layer"],
            "site": r["site"],
            "position": position,
            "condition": r["attribute"],
            "setting": f"alpha={r['alpha']:g} readout={r['readout']}",
            "metric": "readout_shift" if kind == "probe" else f"readout_shift_{kind}",
            "unit": r["source"],
            "unit_kind": "photo",
        }
        out.append({**common, "arm": r["arm"], "value": float(r["readout_shift"])})
        if r["arm"] == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out


# ---------------------------------------------------------------- VLMs: the generated description
def description_prompt_ids(model_dir: str | PathLike, prompt: str) -> list[int]:
    """Token ids of ``prompt`` (after the image tokens) with the model folder's tokenizer; none
    without a prompt. A prompt for a folder without a tokenizer is an error naming the folder."""
    if not prompt:
        return []
    if not (Path(model_dir) / "tokenizer_config.json").exists():
        raise VisionSteeringError(
            f"vision.steering.describe_prompt: {model_dir} has no tokenizer; leave the prompt "
            "empty (the description then follows the image tokens directly)"
        )
    from transformers import AutoTokenizer  # heavy; only VLM descriptions need it

    return list(
        AutoTokenizer.from_pretrained(str(model_dir)).encode(prompt, add_special_tokens=False)
    )


def generate_description(
    vm: VisionModel,
    pixels: Float[torch.Tensor, "batch 3 size size"],
    max_new_tokens: int,
    prompt: Sequence[int] = (),
    edits: Mapping[str, Callable] | None = None,
) -> Int[np.ndarray, "batch new"]:
    """Greedy continuation (-1 after an early stop) of BOS + image tokens + ``prompt`` with
    ``edits`` {hook: fn(output)} on vision-tower hooks (they fire once, in the prefill)."""
    ids = vm.lm_inputs(pixels.shape[0])["input_ids"]
    if prompt:
        ids = torch.cat([ids, torch.tensor(list(prompt)).expand(ids.shape[0], -1)], dim=1)
    ids = ids.to(pixels.device)
    with (
        torch.no_grad(),
        attach_modules(vm.points(), list((edits or {}).items()), prepend=True),
    ):
        out = vm.module.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=vm.module.generation_config.pad_token_id or 0,
        )
    new = out[:, ids.shape[1] :].cpu().numpy()
    pad = np.full((new.shape[0], max_new_tokens), -1, dtype=np.int64)
    pad[:, : new.shape[1]] = new
    return pad


def run_descriptions(
    vm: VisionModel,
    images,
    pairs: Sequence[ImagePair],
    directions: Directions,
    hooks: Sequence[str],
    norms: Mapping[str, float],
    cfg: VisionSteerConfig,
    max_new_tokens: int,
    prompt: Sequence[int] = (),
    base_seed: int = 0,
    all_hooks: Sequence[str] | None = None,
    control_x: Mapping[str, Float[np.ndarray, "n d"]] | None = None,
) -> list[dict]:
    """For a VLM: steer vision-tower ``hooks`` (attribute direction towards the original vs
    matched random directions, as :func:`run_steering`) and record the greedy description's
    tokens and the fraction that differ from the unsteered description
    (``description_changed``)."""
    runner = Runner(vm, vm.hooks[-1].name)
    index = list(all_hooks or hooks)
    controls = _controls(control_x, directions, hooks, cfg, index, base_seed)
    rows = []
    for i0 in range(0, len(pairs), cfg.batch_size):
        chunk = list(pairs[i0 : i0 + cfg.batch_size])
        poor_px = runner.pixels(take_images(images, np.array([p.poor for p in chunk])))
        plain = generate_description(vm, poor_px, max_new_tokens, prompt)
        sign = -np.sign([p.level for p in chunk])
        for hook in hooks:
            kind = runner.points[hook].kind
            units = np.stack([directions[hook, p.attribute] for p in chunk])
            attrs = [p.attribute for p in chunk]
            dirs = _directions(units, attrs, hook, cfg.random_seeds, controls)
            layer, site = store.parse_hook_name(hook)
            for alpha in cfg.alphas_relative:
                scale = alpha * norms[hook]
                for direction, arm, seed, u in dirs:
                    vec = (sign * scale)[:, None] * u
                    edits = {hook: add_vectors(kind, vec)}
                    toks = generate_description(vm, poor_px, max_new_tokens, prompt, edits)
                    changed = (toks != plain).mean(axis=1)
                    rows += [
                        {
                            "hook": hook,
                            "layer": layer,
                            "site": site,
                            "alpha": alpha,
                            "direction": direction,
                            "arm": arm,
                            "seed": seed,
                            "unit": p.unit,
                            "source": p.source,
                            "attribute": p.attribute,
                            "level": p.level,
                            "tokens_unsteered": " ".join(map(str, plain[i])),
                            "tokens_steered": " ".join(map(str, toks[i])),
                            "description_changed": float(changed[i]),
                        }
                        for i, p in enumerate(chunk)
                    ]
    return rows


def description_hooks(hooks: Sequence[str], steer: Sequence[str], readout: str) -> list[str]:
    """Vision-tower hooks to steer for descriptions: the steered ones in the tower, else the
    tower's last hook before the readout (edits of LM hooks would not survive decoding)."""
    tower = [h for h in steer if h.startswith("vision.")]
    if tower:
        return tower
    before = [h for h in hooks[: list(hooks).index(readout) + 1] if h.startswith("vision.")]
    return before[-1:]


def description_measurement_rows(table, dataset: str, model: str, position: str) -> list[dict]:
    """descriptions.csv rows -> measurements (metric description_changed; baseline 0; unit =
    the source photo, ``unit_kind`` photo)."""
    out = []
    for r in table:
        common = {
            "phase": "steering",
            "dataset": dataset,
            "model": model,
            "layer": r["layer"],
            "site": r["site"],
            "position": position,
            "condition": r["attribute"],
            "setting": f"alpha={r['alpha']:g} readout=description",
            "metric": "description_changed",
            "unit": r["source"],
            "unit_kind": "photo",
        }
        out.append({**common, "arm": r["arm"], "value": r["description_changed"]})
        if r["arm"] == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out
