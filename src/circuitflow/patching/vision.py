"""Activation patching on image counterfactuals (patching phase, vision models).

For each source photograph and graded attribute, the poor variant (e.g. exposure -2 EV) and the
well-lit / well-composed one (the unchanged ``original`` of the same photo) run through the
model; at each hook point before a fixed READOUT hook the poor run's output is edited towards
the good run's and the change of the aesthetic readout is measured as

    recovery = (r_patched - r_poor) / (r_good - r_poor)

where r is the attribute probe (ridge regression of the signed level, refit from the probes
artifact's penalty on the train split, :func:`fit_readout`) applied to the pooled readout hook,
and, for open_clip models, the CLIP prompt readout (:class:`ClipPromptReadout`): the image
embedding's cosine similarity to the attribute's high-level prompt minus that to its low-level
prompt (``vision.readouts``, ``vision.clip_prompts``; metric ``recovery_clip_prompts``).

Modes (``vision.patching.modes``), each on every spatial token (CNN grid, ViT patches, LM
image tokens):

- ``full``: the good run's whole hook output. In a sequential network every later layer then
  sees the good run, so recovery is exactly 1 at every hook: a check of the machinery, not a
  finding; its control replaces the difference by a random one of the same norm per image.
- ``direction``: only the component along the attribute's mean-difference direction at that
  hook (vectors store, :func:`attribute_direction`): ``t + ((t_good - t) . u) u`` per token.
  Recovery by hook says where one direction carries the attribute; the control patches the
  component along seeded random unit directions instead.

Per-pair rows go to ``recovery.csv`` and, in the ``store.MEASUREMENTS_FILE`` layout, to
``measurements.csv`` (treatment = patched, baseline = unpatched: recovery 0 by definition,
control = random direction / random difference, seeds averaged per unit by the stats phase).
The hook-editing helpers are shared with :mod:`circuitflow.steering_vision`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from circuitflow import probes, store, vision

GRADED = ("exposure", "contrast", "tone", "saturation", "color_cast", "tilt")
MODES = ("direction", "full")
READOUTS = ("probe", "clip_prompts")
# [low-level prompt, high-level prompt] per attribute: the readout grows with the signed level
# (images.py: tone > 0 is high-key, color_cast > 0 warm). tilt has no default: its sign is a
# rotation direction, not better / worse.
DEFAULT_CLIP_PROMPTS = {
    "exposure": ("a dark, underexposed photo", "a bright, well-exposed photo"),
    "contrast": ("a flat, low-contrast photo", "a punchy, high-contrast photo"),
    "tone": ("a dark, low-key photo", "a light, high-key photo"),
    "saturation": ("a dull, desaturated photo", "a vivid, colorful photo"),
    "color_cast": ("a cool, bluish photo", "a warm, yellowish photo"),
}


class VisionPatchingError(ValueError):
    """Vision patching / steering cannot run as configured; the message names key and fix."""


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
class VisionPatchConfig:
    """``config['vision']['patching']`` plus the shared readout keys of ``config['vision']``."""

    attributes: tuple[str, ...] = ("exposure", "contrast", "tone", "saturation", "color_cast")
    readout: str | float = 0.8  # hook name, or relative depth over the block hooks
    position: str = "mean"
    split: str = "test"
    levels: str = "extreme"  # extreme | all
    layers: str | int | Sequence[float] = 8
    modes: tuple[str, ...] = ("direction",)
    random_seeds: int = 1
    min_gap: float = 0.25
    batch_size: int = 64
    readouts: tuple[str, ...] | None = None  # None: probe, plus clip_prompts for open_clip
    clip_prompts: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_CLIP_PROMPTS)
    )
    clip_min_gap: float = 0.005  # cosine units

    def __post_init__(self):
        bad = [r for r in self.readouts or () if r not in READOUTS]
        if bad or (self.readouts is not None and not self.readouts):
            raise VisionPatchingError(
                f"vision.readouts: {bad[0] if bad else '[]'!r} is not a list of "
                f"{', '.join(READOUTS)}"
            )
        for attribute, pair in self.clip_prompts.items():
            if attribute not in GRADED:
                raise VisionPatchingError(
                    f"vision.clip_prompts: {attribute!r} is not a graded attribute; use "
                    f"{', '.join(GRADED)}"
                )
            ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
            if (
                not ok
                or not all(isinstance(t, str) and t.strip() for t in pair)
                or (pair[0] == pair[1])
            ):
                raise VisionPatchingError(
                    f"vision.clip_prompts.{attribute}: give two different non-empty prompts "
                    "[low level, high level]"
                )
        bad = [a for a in self.attributes if a not in GRADED]
        if bad:
            raise VisionPatchingError(
                f"vision.attributes: {bad[0]!r} is not a graded attribute; use {', '.join(GRADED)}"
            )
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise VisionPatchingError(
                f"vision.patching.modes: {bad[0]!r} is not one of {', '.join(MODES)}"
            )
        if self.position not in store.VISION_POSITIONS:
            raise VisionPatchingError(
                f"vision.position: {self.position!r} is not one of {store.VISION_POSITIONS}"
            )

    @classmethod
    def from_config(cls, section: Mapping) -> VisionPatchConfig:
        """From the ``vision`` config section (schema defaults already filled)."""
        patching = dict(section.get("patching", {}))
        return cls(
            attributes=tuple(section.get("attributes", cls.attributes)),
            readout=section.get("readout", cls.readout),
            position=section.get("position", cls.position),
            split=section.get("split", cls.split),
            levels=section.get("levels", cls.levels),
            layers=patching.get("layers", cls.layers),
            modes=tuple(patching.get("modes", cls.modes)),
            random_seeds=patching.get("random_seeds", cls.random_seeds),
            min_gap=patching.get("min_gap", cls.min_gap),
            batch_size=section.get("batch_size", cls.batch_size),
            readouts=None if section.get("readouts") is None else tuple(section["readouts"]),
            clip_prompts={**DEFAULT_CLIP_PROMPTS, **dict(section.get("clip_prompts") or {})},
            clip_min_gap=patching.get("clip_min_gap", cls.clip_min_gap),
        )

    def readout_kinds(self, backend: str, model: str = "model") -> tuple[str, ...]:
        """The readouts measured for a model of ``backend``: ``readouts``, or by default the
        probe plus, for open_clip models, the CLIP prompt readout."""
        kinds = self.readouts or (
            ("probe", "clip_prompts") if backend == "open_clip" else ("probe",)
        )
        if "clip_prompts" in kinds:
            if backend != "open_clip":
                raise VisionPatchingError(
                    f"vision.readouts: clip_prompts needs an open_clip model; model {model!r} "
                    f"has backend {backend!r} (use readouts: [probe])"
                )
            missing = [a for a in self.attributes if a not in self.clip_prompts]
            if missing:
                raise VisionPatchingError(
                    f"vision.clip_prompts: no prompts for {missing[0]!r}; add "
                    f"clip_prompts.{missing[0]}: [low-level prompt, high-level prompt]"
                )
        return tuple(kinds)


def readout_hook(hooks: Sequence[str], readout: str | float, model: str = "model") -> str:
    """The readout hook: a hook name of the store, or a relative depth over ``hooks`` (forward
    order; 1.0 = the last block hook)."""
    if isinstance(readout, str):
        if readout not in hooks:
            raise VisionPatchingError(
                f"vision.readout: model {model!r} has no block hook {readout!r}; it has "
                f"{hooks[0]} .. {hooks[-1]} (or give a relative depth in [0, 1])"
            )
        return readout
    if not 0.0 <= float(readout) <= 1.0:
        raise VisionPatchingError(f"vision.readout: depth {readout} is not in [0, 1]")
    return hooks[math.floor(float(readout) * (len(hooks) - 1) + 0.5)]


def select_hooks(hooks: Sequence[str], spec, key: str = "vision.patching.layers") -> list[str]:
    """Hooks from ``'all'``, a count of evenly spaced ones (first and last included) or relative
    depths in [0, 1] over ``hooks`` (forward order)."""
    from circuitflow.patching import select_layers

    try:
        idx = select_layers(spec, len(hooks))
    except ValueError as err:
        raise VisionPatchingError(f"{key}: {str(err).partition(': ')[2]}") from None
    return [hooks[i] for i in idx]


# ---------------------------------------------------------------- pairs, directions, readout
@dataclass(frozen=True)
class Pair:
    """A poor variant of one photo and the photo's good (unchanged) image."""

    unit: str  # the poor variant's sample id
    source: str
    attribute: str
    level: float
    poor: int  # image_index
    good: int


def select_pairs(
    rows: Sequence[Mapping],
    attributes: Sequence[str],
    split: str = "test",
    levels: str = "extreme",
    baseline: str = "original",
) -> list[Pair]:
    """(poor, good) pairs: each photo's variants of ``attributes`` (``levels='extreme'``: the
    largest |level| on each side of 0) against its first ``baseline`` image (the unjittered
    original). ``split``: test | train | all."""
    if split not in ("test", "train", "all"):
        raise VisionPatchingError(f"vision.split: {split!r} is not test, train or all")
    if levels not in ("extreme", "all"):
        raise VisionPatchingError(f"vision.levels: {levels!r} is not extreme or all")
    rows = [r for r in rows if split == "all" or r["split"] == split]
    good = {}
    for r in rows:
        if r["label"] == baseline:
            good.setdefault(r["frame_id"], r)
    pairs = []
    for attribute in attributes:
        by_source: dict[str, list] = {}
        for r in rows:
            if r.get("attribute") == attribute and r["frame_id"] in good:
                by_source.setdefault(r["frame_id"], []).append(r)
        for source, variants in sorted(by_source.items()):
            if levels == "extreme":
                keep = []
                for sign in (-1, 1):
                    side = [v for v in variants if np.sign(v["level"]) == sign]
                    if side:
                        top = max(abs(v["level"]) for v in side)
                        keep += [v for v in side if abs(v["level"]) == top]
                variants = keep
            g = good[source]
            pairs += [
                Pair(
                    str(v["sample_id"]),
                    source,
                    attribute,
                    float(v["level"]),
                    int(v["image_index"]),
                    int(g["image_index"]),
                )
                for v in variants
                if v["level"] != 0
            ]
    return pairs


def attribute_direction(
    unit: np.ndarray, norm: np.ndarray, conditions: Sequence[str], attribute: str
) -> np.ndarray:
    """Unit direction of increasing ``attribute`` level from the vectors store's mean-difference
    directions (each condition vs the baseline) at one hook and position: the raw differences
    of ``<attribute>_high`` minus ``<attribute>_low`` (or the condition named ``attribute``,
    e.g. tilt). unit: [condition, d]; norm: [condition]."""
    raw = np.asarray(unit, np.float64) * np.asarray(norm, np.float64)[:, None]
    total = np.zeros(raw.shape[-1])
    found = False
    for i, c in enumerate(conditions):
        if c == attribute or c == f"{attribute}_high":
            total += raw[i]
            found = True
        elif c == f"{attribute}_low":
            total -= raw[i]
            found = True
    n = np.linalg.norm(total)
    if not found or n == 0:
        raise VisionPatchingError(
            f"vision.attributes: no mean-difference direction for {attribute!r} in the vectors "
            f"store (conditions {list(conditions)}); add its labels to the dataset"
        )
    return total / n


def store_directions(
    vectors_path, hooks: Sequence[str], attributes: Sequence[str], position: str = "mean"
) -> dict[tuple[str, str], np.ndarray]:
    """{(hook, attribute): unit direction [width]} read from a vectors store."""
    ds = store.open_dataset(vectors_path)
    conditions = [str(c) for c in ds["condition"].values]
    store_hooks = [str(h) for h in ds["hook"].values]
    p = [str(x) for x in ds["position"].values].index(position)
    widths = ds["hook_width"].values if "hook_width" in ds else None
    out = {}
    for hook in hooks:
        if hook not in store_hooks:
            raise VisionPatchingError(f"{vectors_path}: no hook {hook!r} in the vectors store")
        h = store_hooks.index(hook)
        unit = ds["direction"].values[h, p]
        norm = ds["norm"].values[h, p]
        if widths is not None:
            unit = unit[:, : int(widths[h])]
        for attribute in attributes:
            out[hook, attribute] = attribute_direction(unit, norm, conditions, attribute)
    return out


@dataclass(frozen=True)
class Readout:
    """The attribute probe as a linear readout of one pooled hook: level ~ x @ w + b."""

    attribute: str
    hook: str
    position: str
    w: np.ndarray = field(repr=False)
    b: float
    alpha: float
    score: float  # the probe's held-out R² (probes.csv)

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        """pooled [B, d] -> predicted level [B]."""
        return np.asarray(pooled, np.float64) @ self.w + self.b


def fit_readout(
    x: np.ndarray,
    coords: Mapping[str, np.ndarray],
    attribute: str,
    alpha: float,
    hook: str = "",
    position: str = "mean",
    score: float = float("nan"),
    baseline: str = "original",
) -> Readout:
    """Refit the probe of ``attribute`` (train split, the attribute's variants plus originals,
    counterfactual-contrast features as in :func:`circuitflow.probes.run_probes`) at penalty
    ``alpha``. x: [sample, d] pooled activations of the readout hook. The contrast subtracts a
    per-photo constant, so the readout of raw features differs from the probe's by a per-photo
    offset, which cancels in recoveries and readout shifts."""
    attr, label = np.asarray(coords["attribute"]), np.asarray(coords["label"])
    sel = ((attr == attribute) | (label == baseline)) & (np.asarray(coords["split"]) == "train")
    if (attr[sel] == attribute).sum() < 2:
        raise VisionPatchingError(
            f"vision.attributes: too few train variants of {attribute!r} to fit its readout"
        )
    xc = probes.source_contrast(x, np.asarray(coords["frame_id"]), label, baseline)
    w, b = probes.readout_weights(xc[sel], np.asarray(coords["level"], np.float64)[sel], alpha)
    return Readout(attribute, hook, position, w, b, float(alpha), float(score))


def clip_prompt_score(image_emb, text_low, text_high) -> np.ndarray:
    """cos(image, text_high) - cos(image, text_low); image_emb [B, d], texts [d]."""
    x = np.asarray(image_emb, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    lo, hi = (np.asarray(t, np.float64) for t in (text_low, text_high))
    return x @ (hi / np.linalg.norm(hi)) - x @ (lo / np.linalg.norm(lo))


@dataclass(frozen=True)
class ClipPromptReadout:
    """Per attribute, the text embeddings of its [low, high] prompts; the readout of an image
    embedding is :func:`clip_prompt_score` (grows with the attribute's level)."""

    prompts: Mapping[str, tuple[str, str]]
    text: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)

    def __call__(self, image_emb, attributes: Sequence[str]) -> np.ndarray:
        """image_emb [B, d] and one attribute per image -> readout [B]."""
        return np.array(
            [
                clip_prompt_score(image_emb[i : i + 1], *self.text[a])[0]
                for i, a in enumerate(attributes)
            ]
        )


def load_clip_readout(
    vm: vision.VisionModel, model_dir, prompts: Mapping[str, Sequence[str]], attributes
) -> ClipPromptReadout:
    """Encode each attribute's [low, high] prompts with the open_clip model's text tower and
    the tokenizer of its arch (``open_clip.get_tokenizer`` on the prepared folder)."""
    import open_clip
    import torch

    if vm.backend != "open_clip":
        raise VisionPatchingError(
            f"vision.readouts: clip_prompts needs an open_clip model; model {vm.name!r} has "
            f"backend {vm.backend!r}"
        )
    try:
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(model_dir))
    except Exception as err:  # noqa: BLE001 - open_clip raises many kinds
        raise VisionPatchingError(
            f"model {vm.name!r}: no open_clip tokenizer for {model_dir} ({type(err).__name__}); "
            "use vision.readouts: [probe]"
        ) from None
    vocab = getattr(vm.module, "vocab_size", None)
    param = next(vm.module.parameters())
    text = {}
    for attribute in attributes:
        pair = tuple(prompts[attribute])
        tokens = tokenizer(list(pair))
        if vocab is not None and int(tokens.max()) >= vocab:
            raise VisionPatchingError(
                f"model {vm.name!r}: its text tower has {vocab} tokens, fewer than its "
                "tokenizer's; use vision.readouts: [probe]"
            )
        with torch.no_grad():
            emb = vm.module.encode_text(tokens.to(param.device)).double().cpu().numpy()
        text[attribute] = (emb[0], emb[1])
    return ClipPromptReadout({a: tuple(prompts[a]) for a in attributes}, text)


def probe_alpha(probes_csv, hook: str, position: str, attribute: str) -> tuple[float, float]:
    """(ridge penalty, held-out score) of one probe row of probes.csv."""
    import pandas as pd

    t = pd.read_csv(probes_csv)
    row = t[(t["hook"] == hook) & (t["position"] == position) & (t["target"] == attribute)]
    if row.empty:
        raise VisionPatchingError(
            f"{probes_csv}: no probe for {attribute!r} at {hook} position {position}; choose "
            "another vision.readout / vision.attributes"
        )
    return float(row["alpha"].iloc[0]), float(row["score"].iloc[0])


def recovery(patched, poor, good) -> np.ndarray:
    """(patched - poor) / (good - poor), elementwise (NaN where good == poor)."""
    patched, poor, good = (np.asarray(v, np.float64) for v in (patched, poor, good))
    gap = good - poor
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (patched - poor) / np.where(gap != 0, gap, 1.0), np.nan)


# ---------------------------------------------------------------- hooks: edit and read
def _main(out):
    return out[0] if isinstance(out, tuple | list) else out


def _replace_main(out, new):
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    return new


def edit_tokens(kind: str, out, fn: Callable, image_mask=None):
    """Apply ``fn`` (tokens [B, N, d] -> [B, N, d]) to the spatial tokens of a hook output
    (CNN: the y-x grid; ViT: the patches, CLS kept; projector: all; LM: the image tokens) and
    return the output in its own layout. EfficientNet's head hook (``cnn_head``) is edited
    before its ReLU6, which the extraction applies after the hook."""
    x = _main(out)
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
    return _replace_main(out, new.to(x.dtype))


class Runner:
    """Forward passes of a :class:`circuitflow.vision.VisionModel` with hook edits, read at one
    pooled readout hook (the forward stops there)."""

    def __init__(self, vm: vision.VisionModel, readout: str, position: str = "mean"):
        self.vm = vm
        self.points = {h.name: h for h in vm.hooks}
        if readout not in self.points:
            raise VisionPatchingError(f"model {vm.name!r}: no hook point {readout!r}")
        self.readout = readout
        self.p = store.VISION_POSITIONS.index(position)
        param = next(vm.module.parameters())
        self.device, self.dtype = param.device, param.dtype

    def pixels(self, images: np.ndarray):
        return self.vm.preprocess(images).to(self.device, self.dtype)

    def image_mask(self, batch: int):
        if self.vm.backend != "hf":
            return None
        ids = self.vm.lm_inputs(batch)["input_ids"].to(self.device)
        return ids == self.vm.module.image_token_id_

    def capture(self, pixels, hooks: Sequence[str]) -> dict:
        """Raw outputs (detached clones) of ``hooks`` in one unedited pass."""
        import torch

        outs, handles = {}, []
        for name in hooks:

            def fn(module, args, out, name=name):
                x = _main(out)
                outs[name] = x.detach().clone()

            handles.append(self.points[name].module.register_forward_hook(fn))
        try:
            with torch.no_grad(), vision._Capture(self.vm, hooks) as cap:
                cap.run(pixels)
        finally:
            for h in handles:
                h.remove()
        return outs

    def read(self, pixels, edits: Mapping[str, Callable] | None = None) -> np.ndarray:
        """Pooled readout [B, d] with ``edits`` {hook: fn(raw output) -> new output}."""
        import torch

        handles = []
        for name, fn in (edits or {}).items():
            # prepend: run before hooks the model registered itself (transformers records
            # hidden states with forward hooks; a VLM reads its vision features from them)
            handles.append(
                self.points[name].module.register_forward_hook(
                    lambda module, args, out, fn=fn: fn(out), prepend=True
                )
            )
        try:
            with torch.no_grad(), vision._Capture(self.vm, [self.readout]) as cap:
                pooled, _ = cap.run(pixels)
        finally:
            for h in handles:
                h.remove()
        return pooled[self.readout][:, self.p]

    def embed(self, pixels, edits: Mapping[str, Callable] | None = None) -> np.ndarray:
        """open_clip image embedding [B, d] (unnormalized) with ``edits`` {hook: fn}."""
        import torch

        handles = [
            self.points[name].module.register_forward_hook(
                lambda module, args, out, fn=fn: fn(out), prepend=True
            )
            for name, fn in (edits or {}).items()
        ]
        try:
            with torch.no_grad():
                return self.vm.module.encode_image(pixels).double().cpu().numpy()
        finally:
            for h in handles:
                h.remove()


def full_patch(good):
    """Edit: the whole hook output of the good run."""
    return lambda out: _replace_main(out, good)


def direction_patch(kind: str, good, units, image_mask=None):
    """Edit: each token's component along its image's unit direction (``units`` [B, d]) set
    to the good run's: ``t + ((t_good - t) . u) u``."""
    import torch

    gt = _tokens_of(kind, good, image_mask)
    U = torch.as_tensor(np.array(units, dtype=np.float64), dtype=gt.dtype, device=gt.device)

    def move(t):
        return t + torch.einsum("bn,bd->bnd", torch.einsum("bnd,bd->bn", gt - t, U), U)

    return lambda out: edit_tokens(kind, out, move, image_mask)


def random_difference_patch(kind: str, good, seed: int, image_mask=None):
    """Control edit of ``full``: add a seeded random difference with the Frobenius norm of
    (good - poor) of each image's tokens."""
    import torch

    def fn(out):
        gt = _tokens_of(kind, good, image_mask)

        def move(t):
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t)
            scale = (gt - t).flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
            return t + noise * scale[:, None, None]

        return edit_tokens(kind, out, move, image_mask)

    return fn


def _tokens_of(kind: str, x, image_mask=None):
    """Spatial tokens [B, N, d] of a raw hook output tensor (the layout edit_tokens edits)."""
    if kind in ("cnn", "cnn_head"):
        return x.flatten(2).transpose(1, 2)
    if kind == "vit":
        return x[:, 1:]
    if kind == "projector":
        return x
    B, _, D = x.shape
    return x[image_mask].view(B, -1, D)


def random_unit(d: int, seed: int, index: int, base_seed: int = 0) -> np.ndarray:
    """Seeded Gaussian unit vector (one per seed and hook index)."""
    rng = np.random.default_rng([base_seed, seed, index])
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- the run
def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_levels(readouts: Mapping[str, Readout], chunk: Sequence[Pair], pooled) -> np.ndarray:
    """Each pair's readout (its attribute's probe) of pooled [B, d] -> [B]."""
    return np.array([readouts[p.attribute](pooled[i : i + 1])[0] for i, p in enumerate(chunk)])


def measure(
    runner: Runner,
    readouts: Mapping[str, Readout],
    clip: ClipPromptReadout | None,
    chunk: Sequence[Pair],
    pixels,
    edits: Mapping[str, Callable] | None = None,
) -> dict[str, np.ndarray]:
    """{readout kind: [B]}: the probe (when ``readouts``) and the CLIP prompt readout (when
    ``clip``) of one forward pass per kind with ``edits``."""
    out = {}
    if readouts:
        out["probe"] = read_levels(readouts, chunk, runner.read(pixels, edits))
    if clip is not None:
        out["clip_prompts"] = clip(runner.embed(pixels, edits), [p.attribute for p in chunk])
    return out


def runner_for(vm, readouts: Mapping[str, Readout], clip, position: str) -> Runner:
    """A Runner at the probes' readout hook (the last hook when only the CLIP readout runs)."""
    hooks = {r.hook for r in readouts.values()}
    if len(hooks) > 1 or (not hooks and clip is None):
        raise VisionPatchingError(f"readouts at several hooks {sorted(hooks)} (or none)")
    return Runner(vm, hooks.pop() if hooks else vm.hooks[-1].name, position)


def run_patching(
    vm: vision.VisionModel,
    images,
    pairs: Sequence[Pair],
    readouts: Mapping[str, Readout],
    directions: Mapping[tuple[str, str], np.ndarray],
    hooks: Sequence[str],
    cfg: VisionPatchConfig,
    base_seed: int = 0,
    clip: ClipPromptReadout | None = None,
) -> list[dict]:
    """One row per pair x hook x mode x arm (patched, control seeds) x readout kind: readouts
    r_poor, r_good, r_patched and the recovery. ``images``: uint8 [N, y, x, 3] (or a Zarr
    array) indexed by ``image_index``; ``readouts``: {attribute: Readout} at one hook (may be
    empty with ``clip``); ``clip``: the CLIP prompt readout (open_clip); ``directions``:
    {(hook, attribute): unit vector} for mode ``direction``."""
    runner = runner_for(vm, readouts, clip, cfg.position)
    order = [h.name for h in vm.hooks]
    bad = [h for h in hooks if order.index(h) > order.index(runner.readout)]
    if bad:
        raise VisionPatchingError(f"patching hook {bad[0]} comes after readout {runner.readout}")
    rows = []
    for chunk in _chunks(list(pairs), cfg.batch_size):
        take = vision.store_images_take
        poor_px = runner.pixels(take(images, np.array([p.poor for p in chunk])))
        good_px = runner.pixels(take(images, np.array([p.good for p in chunk])))
        mask = runner.image_mask(len(chunk))
        r_poor = measure(runner, readouts, clip, chunk, poor_px)
        r_good = measure(runner, readouts, clip, chunk, good_px)
        good_out = runner.capture(good_px, hooks)
        for k, hook in enumerate(hooks):
            kind, good = runner.points[hook].kind, good_out[hook]
            passes = []
            if "full" in cfg.modes:
                passes.append(("full", "treatment", "", full_patch(good)))
                for s in range(cfg.random_seeds):
                    edit = random_difference_patch(kind, good, base_seed * 1000 + s, mask)
                    passes.append(("full", "control", s, edit))
            if "direction" in cfg.modes:
                d = _tokens_of(kind, good, mask).shape[-1]
                units = np.stack([directions[hook, p.attribute] for p in chunk])  # [B, d]
                passes.append(
                    ("direction", "treatment", "", direction_patch(kind, good, units, mask))
                )
                for s in range(cfg.random_seeds):
                    u = np.broadcast_to(random_unit(d, s, k, base_seed), units.shape)
                    passes.append(("direction", "control", s, direction_patch(kind, good, u, mask)))
            for mode, arm, seed, edit in passes:
                measured = measure(runner, readouts, clip, chunk, poor_px, {hook: edit})
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
    rec = recovery(r, r_poor, r_good)
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


def measurement_rows(table, dataset: str, model: str, position: str, readout: str) -> list[dict]:
    """recovery.csv rows -> store.MEASUREMENTS_FILE rows (valid pairs only): treatment =
    patched, control = random (seeds), baseline = unpatched (recovery 0)."""
    import pandas as pd

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
            "unit": r.unit,
        }
        out.append({**common, "arm": r.arm, "value": float(r.recovery)})
        if r.arm == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out


# ---------------------------------------------------------------- inputs of a run
def forward_hooks(vm: vision.VisionModel, activations) -> list[str]:
    """Block hooks of an activation store in the model's forward order (a VLM's vision tower
    before its language model)."""
    stored = set(store.activation_hooks(activations))
    return [h for h in vm.hook_names() if h in stored]


def load_readouts(
    activations,
    probes_csv,
    attributes: Sequence[str],
    hook: str,
    position: str = "mean",
    baseline: str = "original",
) -> dict[str, Readout]:
    """{attribute: Readout} at ``hook``: each probe of probes.csv refit at its penalty on the
    activation store's train split (:func:`fit_readout`)."""
    keys = ("label", "split", "frame_id", "attribute", "level")
    coords = {key: store.read_array(activations, key) for key in keys}
    x = store.read_array(activations, hook)[:, store.VISION_POSITIONS.index(position)]
    out = {}
    for attribute in attributes:
        alpha, score = probe_alpha(probes_csv, hook, position, attribute)
        out[attribute] = fit_readout(x, coords, attribute, alpha, hook, position, score, baseline)
    return out


@dataclass
class RunInputs:
    """What patch_vision and steer_vision both start from: the loaded model, its stored hooks
    in forward order, the readouts (probe at ``readout`` and/or CLIP prompts) and the pairs."""

    vm: vision.VisionModel
    hooks: list[str]
    kinds: tuple[str, ...]
    readout: str
    readouts: dict[str, Readout]
    clip: ClipPromptReadout | None
    pairs: list


def load_run_inputs(
    cfg: VisionPatchConfig,
    model_dir,
    activations,
    probes_csv,
    dataset_dir,
    *,
    dataset: str,
    model: str,
    baseline: str,
    dtype: str,
    device: str,
) -> RunInputs:
    """Load the model, readouts and (poor, original) pairs of one vision run; one-line error
    naming the dataset when no pair exists."""
    vm = vision.load_vision_model(model_dir, model, dtype=dtype, device=device)
    hooks = forward_hooks(vm, activations)
    kinds = cfg.readout_kinds(vm.backend, model)
    # without the probe, every hook is read at the CLIP image embedding (the last hook)
    readout = readout_hook(hooks, cfg.readout, model) if "probe" in kinds else hooks[-1]
    readouts = (
        load_readouts(activations, probes_csv, cfg.attributes, readout, cfg.position, baseline)
        if "probe" in kinds
        else {}
    )
    clip = (
        load_clip_readout(vm, model_dir, cfg.clip_prompts, cfg.attributes)
        if "clip_prompts" in kinds
        else None
    )
    rows = store.read_samples(dataset_dir)
    pairs = select_pairs(rows, cfg.attributes, cfg.split, cfg.levels, baseline)
    if not pairs:
        raise VisionPatchingError(
            f"dataset {dataset!r}: no (poor, original) pairs of {list(cfg.attributes)} in "
            f"split {cfg.split!r}; set vision.split: all or add the attributes' labels"
        )
    return RunInputs(vm, hooks, kinds, readout, readouts, clip, pairs)
