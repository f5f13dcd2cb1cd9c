"""Steering vision models along attribute directions (steering phase, image datasets).

For each poor variant (a photo's extreme exposure, contrast, ... level; the pairs of
:func:`circuitflow.patching_vision.select_pairs`) add ``sign * scale * u`` to every spatial
token at a hook before the readout, where ``u`` is the attribute's unit mean-difference
direction at that hook (vectors store), ``sign = -sign(level)`` points back towards the good
(unchanged) image and ``scale = alpha * mean ||x||`` (pooled-mean activation norm at that hook,
train split of the activation store; ``alphas_relative``). The same signed scale along seeded
random unit directions is the control. The readout is the attribute probe at the later readout
hook (as in patching), and the measured value is its shift towards the good level:

    readout_shift = sign * (r_steered - r_poor)          (level units; > 0 = towards good)
    gap_closed    = readout_shift / |r_good - r_poor|

For open_clip models the CLIP prompt readout (:class:`circuitflow.patching_vision.
ClipPromptReadout`, cosine-similarity units) is measured too: rows with ``readout_kind``
``clip_prompts``, metric ``readout_shift_clip_prompts``.

Rows go to ``samples.csv`` and, in the ``store.MEASUREMENTS_FILE`` layout (metric
``readout_shift``; treatment = attribute direction, control = random directions, baseline =
unsteered, 0), to ``measurements.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from circuitflow import store, vision
from circuitflow.patching_vision import (
    ClipPromptReadout,
    Pair,
    Readout,
    Runner,
    VisionPatchingError,
    edit_tokens,
    measure,
    random_unit,
    runner_for,
)


@dataclass(frozen=True)
class VisionSteerConfig:
    """``config['vision']['steering']`` plus the shared keys of ``config['vision']``."""

    layers: tuple[float | int, ...] = (0.25, 0.5, 0.75)
    alphas_relative: tuple[float, ...] = (0.25,)
    random_seeds: tuple[int, ...] = (0, 1)
    position: str = "mean"
    batch_size: int = 64
    describe_tokens: int = 0  # VLMs: length of the generated description (0: off)
    describe_prompt: str = ""

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
    """Hooks strictly before ``readout``: relative depths (floats in [0, 1]) over them or
    indices into them (ints)."""
    before = list(hooks[: list(hooks).index(readout)])
    if not before:
        raise VisionPatchingError(
            f"vision.readout: {readout} is the first hook; nothing before it to steer"
        )
    out = []
    for x in layers:
        if isinstance(x, float):
            if not 0.0 <= x <= 1.0:
                raise VisionPatchingError(f"vision.steering.layers: depth {x} is not in [0, 1]")
            out.append(before[int(np.floor(x * (len(before) - 1) + 0.5))])
        elif not 0 <= x < len(before):
            raise VisionPatchingError(
                f"vision.steering.layers: index {x} out of range; {len(before)} hooks come "
                f"before the readout {readout} (0..{len(before) - 1}), or use depths in [0, 1]"
            )
        else:
            out.append(before[x])
    return sorted(set(out), key=list(hooks).index)


def mean_pooled_norm(acts: np.ndarray, train: np.ndarray, position: str = "mean") -> float:
    """Mean over train samples of ||x|| at a pooled position; acts [sample, position, d]."""
    a = np.asarray(acts, np.float64)[np.asarray(train), store.VISION_POSITIONS.index(position)]
    if not len(a):
        raise VisionPatchingError("no train samples for the mean activation norm")
    return float(np.linalg.norm(a, axis=-1).mean())


def add_vectors(kind: str, vectors, image_mask=None):
    """Edit: add ``vectors`` [B, d] (one per image) to every spatial token of a hook output."""
    import torch

    def fn(out):
        x = out[0] if isinstance(out, tuple | list) else out
        v = torch.as_tensor(np.array(vectors, dtype=np.float64), dtype=x.dtype, device=x.device)
        return edit_tokens(kind, out, lambda t: t + v[:, None, :], image_mask)

    return fn


def run_steering(
    vm: vision.VisionModel,
    images,
    pairs: Sequence[Pair],
    readouts: Mapping[str, Readout],
    directions: Mapping[tuple[str, str], np.ndarray],
    hooks: Sequence[str],
    norms: Mapping[str, float],
    cfg: VisionSteerConfig,
    base_seed: int = 0,
    all_hooks: Sequence[str] | None = None,
    clip: ClipPromptReadout | None = None,
) -> list[dict]:
    """One row per pair x hook x alpha x direction (attribute, random seeds) x readout kind
    (probe; clip_prompts with ``clip``): r_poor, r_good, r_steered, readout_shift, gap_closed.
    ``norms``: {hook: mean pooled norm}; ``all_hooks``: the block hooks in forward order
    (random-direction seeds are per hook index in it)."""
    runner = runner_for(vm, readouts, clip, cfg.position)
    index = list(all_hooks or hooks)
    rows = []
    for i0 in range(0, len(pairs), cfg.batch_size):
        chunk = list(pairs[i0 : i0 + cfg.batch_size])
        take = vision.store_images_take
        poor_px = runner.pixels(take(images, np.array([p.poor for p in chunk])))
        good_px = runner.pixels(take(images, np.array([p.good for p in chunk])))
        mask = runner.image_mask(len(chunk))
        r_poor_k = measure(runner, readouts, clip, chunk, poor_px)
        r_good_k = measure(runner, readouts, clip, chunk, good_px)
        sign = -np.sign([p.level for p in chunk])
        for hook in hooks:
            kind = runner.points[hook].kind
            units = np.stack([directions[hook, p.attribute] for p in chunk])  # [B, d]
            d = units.shape[1]
            dirs = [("attribute", "treatment", "", units)]
            for s in cfg.random_seeds:
                u = random_unit(d, s, index.index(hook), base_seed)
                dirs.append((f"random:{s}", "control", s, np.broadcast_to(u, units.shape)))
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


def measurement_rows(table, dataset: str, model: str, position: str) -> list[dict]:
    """samples.csv rows -> store.MEASUREMENTS_FILE rows: metric readout_shift, treatment =
    attribute direction, control = random directions (seeds), baseline = unsteered (0)."""
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
            "unit": r["unit"],
        }
        out.append({**common, "arm": r["arm"], "value": float(r["readout_shift"])})
        if r["arm"] == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out


# ---------------------------------------------------------------- VLMs: the generated description
def prompt_ids(model_dir, prompt: str) -> list[int]:
    """Token ids of ``prompt`` (after the image tokens) with the model folder's tokenizer; none
    without a prompt. A prompt for a folder without a tokenizer is an error naming the folder."""
    if not prompt:
        return []
    from pathlib import Path

    if not (Path(model_dir) / "tokenizer_config.json").exists():
        raise VisionPatchingError(
            f"vision.steering.describe_prompt: {model_dir} has no tokenizer; leave the prompt "
            "empty (the description then follows the image tokens directly)"
        )
    from transformers import AutoTokenizer

    return list(
        AutoTokenizer.from_pretrained(str(model_dir)).encode(prompt, add_special_tokens=False)
    )


def generate(
    vm: vision.VisionModel, pixels, max_new_tokens: int, prompt: Sequence[int] = (), edits=None
):
    """Greedy continuation [B, max_new_tokens] (-1 after an early stop) of BOS + image tokens
    + ``prompt`` with ``edits`` {hook: fn(output)} on vision-tower hooks (they fire once, in
    the prefill)."""
    import torch

    points = {h.name: h for h in vm.hooks}
    ids = vm.lm_inputs(pixels.shape[0])["input_ids"]
    if prompt:
        ids = torch.cat([ids, torch.tensor(list(prompt)).expand(ids.shape[0], -1)], dim=1)
    ids = ids.to(pixels.device)
    handles = [
        points[name].module.register_forward_hook(
            lambda module, args, out, fn=fn: fn(out), prepend=True
        )
        for name, fn in (edits or {}).items()
    ]
    try:
        with torch.no_grad():
            out = vm.module.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                pixel_values=pixels,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=vm.module.generation_config.pad_token_id or 0,
            )
    finally:
        for h in handles:
            h.remove()
    new = out[:, ids.shape[1] :].cpu().numpy()
    pad = np.full((new.shape[0], max_new_tokens), -1, dtype=np.int64)
    pad[:, : new.shape[1]] = new
    return pad


def run_descriptions(
    vm: vision.VisionModel,
    images,
    pairs: Sequence[Pair],
    directions: Mapping[tuple[str, str], np.ndarray],
    hooks: Sequence[str],
    norms: Mapping[str, float],
    cfg: VisionSteerConfig,
    max_new_tokens: int,
    prompt: Sequence[int] = (),
    base_seed: int = 0,
    all_hooks: Sequence[str] | None = None,
) -> list[dict]:
    """For a VLM: steer vision-tower ``hooks`` (attribute direction towards the original vs
    random directions, as :func:`run_steering`) and record the greedy description's tokens and
    the fraction that differ from the unsteered description (``description_changed``)."""
    runner = Runner(vm, vm.hooks[-1].name)
    index = list(all_hooks or hooks)
    rows = []
    for i0 in range(0, len(pairs), cfg.batch_size):
        chunk = list(pairs[i0 : i0 + cfg.batch_size])
        take = vision.store_images_take
        poor_px = runner.pixels(take(images, np.array([p.poor for p in chunk])))
        plain = generate(vm, poor_px, max_new_tokens, prompt)
        sign = -np.sign([p.level for p in chunk])
        for hook in hooks:
            kind = runner.points[hook].kind
            units = np.stack([directions[hook, p.attribute] for p in chunk])
            dirs = [("attribute", "treatment", "", units)]
            for s in cfg.random_seeds:
                u = random_unit(units.shape[1], s, index.index(hook), base_seed)
                dirs.append((f"random:{s}", "control", s, np.broadcast_to(u, units.shape)))
            layer, site = store.parse_hook_name(hook)
            for alpha in cfg.alphas_relative:
                scale = alpha * norms[hook]
                for direction, arm, seed, u in dirs:
                    vec = (sign * scale)[:, None] * u
                    toks = generate(
                        vm, poor_px, max_new_tokens, prompt, {hook: add_vectors(kind, vec)}
                    )
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
    """descriptions.csv rows -> measurements (metric description_changed; baseline 0)."""
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
            "unit": r["unit"],
        }
        out.append({**common, "arm": r["arm"], "value": r["description_changed"]})
        if r["arm"] == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out
