"""Aesthetic readouts of vision models, shared by the patching and steering phases.

A readout maps a forward pass to one number per image that grows with a graded attribute's
level: the attribute probe (ridge regression of the signed level, refit from the probes
artifact's penalty, :func:`fit_readout`) on one pooled hook, and for open_clip models the CLIP
prompt readout (:class:`ClipPromptReadout`: cosine similarity to the high-level prompt minus
that to the low-level one). Both phases measure (poor, good) image pairs (:func:`select_pairs`)
along attribute directions of the vectors store (:func:`store_directions`) and start from the
same inputs (:func:`load_run_inputs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from circuitflow import store
from circuitflow.core import rand
from circuitflow.core.errors import CircuitflowError
from circuitflow.core.layers import depth_to_block
from circuitflow.core.ridge import readout_weights, source_contrast
from circuitflow.models.vision import Runner, VisionModel, load_vision_model
from circuitflow.store import GRADED_ATTRIBUTES as GRADED
from circuitflow.workflow import schema_backed, schema_defaults

READOUTS = ("probe", "clip_prompts")
__all__ = [
    "GRADED",
    "READOUTS",
    "ClipPromptReadout",
    "ImagePair",
    "Readout",
    "ReadoutConfig",
    "ReadoutError",
    "RunInputs",
    "attribute_direction",
    "clip_prompt_score",
    "fit_readout",
    "forward_hooks",
    "load_clip_readout",
    "load_readouts",
    "load_run_inputs",
    "measure",
    "probe_alpha",
    "read_levels",
    "readout_hook",
    "runner_for",
    "select_pairs",
    "store_directions",
]


class ReadoutError(CircuitflowError, ValueError):
    """A vision readout cannot be built as configured; the message names key and fix."""


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
@schema_backed("vision")
class ReadoutConfig:
    """The readout keys of ``config['vision']`` that patching and steering share."""

    attributes: tuple[str, ...]
    readout: str | float  # hook name, or relative depth over the block hooks
    position: str
    split: str
    levels: str  # extreme | all
    readouts: tuple[str, ...] | None = None  # None: probe, plus clip_prompts for open_clip
    clip_prompts: Mapping[str, Sequence[str]]

    def __post_init__(self):
        bad = [r for r in self.readouts or () if r not in READOUTS]
        if bad or (self.readouts is not None and not self.readouts):
            raise ReadoutError(
                f"vision.readouts: {bad[0] if bad else '[]'!r} is not a list of "
                f"{', '.join(READOUTS)}"
            )
        for attribute, pair in self.clip_prompts.items():
            if attribute not in GRADED:
                raise ReadoutError(
                    f"vision.clip_prompts: {attribute!r} is not a graded attribute; use "
                    f"{', '.join(GRADED)}"
                )
            ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
            if (
                not ok
                or not all(isinstance(t, str) and t.strip() for t in pair)
                or (pair[0] == pair[1])
            ):
                raise ReadoutError(
                    f"vision.clip_prompts.{attribute}: give two different non-empty prompts "
                    "[low level, high level]"
                )
        bad = [a for a in self.attributes if a not in GRADED]
        if bad:
            raise ReadoutError(
                f"vision.attributes: {bad[0]!r} is not a graded attribute; use {', '.join(GRADED)}"
            )
        if self.position not in store.VISION_POSITIONS:
            raise ReadoutError(
                f"vision.position: {self.position!r} is not one of {store.VISION_POSITIONS}"
            )

    @staticmethod
    def section_kwargs(section: Mapping) -> dict:
        """The readout keys of a ``vision`` config section (schema defaults already filled)."""
        d = ReadoutConfig
        return {
            "attributes": tuple(section.get("attributes", d.attributes)),
            "readout": section.get("readout", d.readout),
            "position": section.get("position", d.position),
            "split": section.get("split", d.split),
            "levels": section.get("levels", d.levels),
            "readouts": None if section.get("readouts") is None else tuple(section["readouts"]),
            # a partial mapping is merged over the schema's prompts
            "clip_prompts": {
                **schema_defaults("vision")["clip_prompts"],
                **dict(section.get("clip_prompts") or {}),
            },
        }

    @classmethod
    def from_config(cls, section: Mapping) -> ReadoutConfig:
        """From the ``vision`` config section (schema defaults already filled)."""
        return cls(**cls.section_kwargs(section))

    def readout_kinds(self, backend: str, model: str = "model") -> tuple[str, ...]:
        """The readouts measured for a model of ``backend``: ``readouts``, or by default the
        probe plus, for open_clip models, the CLIP prompt readout."""
        kinds = self.readouts or (
            ("probe", "clip_prompts") if backend == "open_clip" else ("probe",)
        )
        if "clip_prompts" in kinds:
            if backend != "open_clip":
                raise ReadoutError(
                    f"vision.readouts: clip_prompts needs an open_clip model; model {model!r} "
                    f"has backend {backend!r} (use readouts: [probe])"
                )
            missing = [a for a in self.attributes if a not in self.clip_prompts]
            if missing:
                raise ReadoutError(
                    f"vision.clip_prompts: no prompts for {missing[0]!r}; add "
                    f"clip_prompts.{missing[0]}: [low-level prompt, high-level prompt]"
                )
        return tuple(kinds)


def readout_hook(hooks: Sequence[str], readout: str | float, model: str = "model") -> str:
    """The readout hook: a hook name of the store, or a relative depth over ``hooks`` (forward
    order; 1.0 = the last block hook)."""
    if isinstance(readout, str):
        if readout not in hooks:
            raise ReadoutError(
                f"vision.readout: model {model!r} has no block hook {readout!r}; it has "
                f"{hooks[0]} .. {hooks[-1]} (or give a relative depth in [0, 1])"
            )
        return readout
    if not 0.0 <= float(readout) <= 1.0:
        raise ReadoutError(f"vision.readout: depth {readout} is not in [0, 1]")
    return hooks[depth_to_block(float(readout), len(hooks))]


def forward_hooks(vm: VisionModel, activations) -> list[str]:
    """Block hooks of an activation store in the model's forward order (a VLM's vision tower
    before its language model)."""
    stored = set(store.activation_hooks(activations))
    return [h for h in vm.hook_names() if h in stored]


# ---------------------------------------------------------------- pairs and directions
@dataclass(frozen=True)
class ImagePair:
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
) -> list[ImagePair]:
    """(poor, good) pairs: each photo's variants of ``attributes`` (``levels='extreme'``: the
    largest |level| on each side of 0) against its first ``baseline`` image (the unjittered
    original). ``split``: test | train | all."""
    if split not in ("test", "train", "all"):
        raise ReadoutError(f"vision.split: {split!r} is not test, train or all")
    if levels not in ("extreme", "all"):
        raise ReadoutError(f"vision.levels: {levels!r} is not extreme or all")
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
                ImagePair(
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
    unit: Float[np.ndarray, "condition d"],
    norm: Float[np.ndarray, " condition"],
    conditions: Sequence[str],
    attribute: str,
) -> Float[np.ndarray, " d"]:
    """Unit direction of increasing ``attribute`` level from the vectors store's mean-difference
    directions (each condition vs the baseline) at one hook and position: the raw differences
    of ``<attribute>_high`` minus ``<attribute>_low`` (or the condition named ``attribute``,
    e.g. tilt)."""
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
        raise ReadoutError(
            f"vision.attributes: no mean-difference direction for {attribute!r} in the vectors "
            f"store (conditions {list(conditions)}); add its labels to the dataset"
        )
    return total / n


def store_directions(
    vectors_path, hooks: Sequence[str], attributes: Sequence[str], position: str = "mean"
) -> dict[tuple[str, str], Float[np.ndarray, " width"]]:
    """{(hook, attribute): unit direction [width]} read from a vectors store."""
    ds = store.open_dataset(vectors_path)
    conditions = [str(c) for c in ds["condition"].values]
    store_hooks = [str(h) for h in ds["hook"].values]
    p = [str(x) for x in ds["position"].values].index(position)
    widths = ds["hook_width"].values if "hook_width" in ds else None
    out = {}
    for hook in hooks:
        if hook not in store_hooks:
            raise ReadoutError(f"{vectors_path}: no hook {hook!r} in the vectors store")
        h = store_hooks.index(hook)
        unit = ds["direction"].values[h, p]
        norm = ds["norm"].values[h, p]
        if widths is not None:
            unit = unit[:, : int(widths[h])]
        for attribute in attributes:
            out[hook, attribute] = attribute_direction(unit, norm, conditions, attribute)
    return out


def train_pooled(
    activations_path, hooks: Sequence[str], position: str = "mean"
) -> dict[str, Float[np.ndarray, "n width"]]:
    """{hook: train-split pooled activations at ``position``} from an image activations store:
    the covariance the matched controls draw from."""
    train = store.read_array(activations_path, "split") == "train"
    at = store.VISION_POSITIONS.index(position)
    return {
        h: np.asarray(store.read_array(activations_path, h), np.float64)[train, at] for h in hooks
    }


def matched_controls(
    control_x: Mapping[str, Float[np.ndarray, "n d"]],
    directions: Mapping[tuple[str, str], Float[np.ndarray, " d"]],
    seeds: Sequence[int],
    all_hooks: Sequence[str],
    base_seed: int = 0,
    key: str = "random_seeds",
) -> dict[tuple[str, str, int], Float[np.ndarray, " d"]]:
    """{(hook, attribute, seed): unit}: a random direction carrying the variance of the
    train-split pooled activations ``control_x[hook]`` that the attribute's direction carries
    (:func:`~circuitflow.core.rand.matched_unit`), seeded by (base_seed, seed, the hook's
    index in ``all_hooks``, the attribute's index in ``store.GRADED_ATTRIBUTES``). ``key``
    names the config key in errors."""
    out, decomposed = {}, {}
    for (hook, attribute), unit in directions.items():
        if hook not in control_x:
            raise ReadoutError(
                f"{key}: no train-split activations for {hook} to draw the matched controls from"
            )
        if hook not in decomposed:
            decomposed[hook] = rand.decompose(control_x[hook])
        where = (list(all_hooks).index(hook), GRADED.index(attribute))
        for s in seeds:
            g = rand.rng(base_seed, s, *where)
            out[hook, attribute, int(s)] = rand.matched_unit(decomposed[hook], unit, g)
    return out


# ---------------------------------------------------------------- the probe readout
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

    def __call__(self, pooled: Float[np.ndarray, "batch d"]) -> Float[np.ndarray, " batch"]:
        """pooled [B, d] -> predicted level [B]."""
        return np.asarray(pooled, np.float64) @ self.w + self.b


def fit_readout(
    x: Float[np.ndarray, "sample d"],
    coords: Mapping[str, np.ndarray],
    attribute: str,
    alpha: float,
    hook: str = "",
    position: str = "mean",
    score: float = float("nan"),
    baseline: str = "original",
) -> Readout:
    """Refit the probe of ``attribute`` (train split, the attribute's variants plus originals,
    counterfactual-contrast features as in the image probes of the vectors phase) at
    penalty ``alpha``. x: pooled activations of the readout hook. The contrast subtracts a
    per-photo constant, so the readout of raw features differs from the probe's by a per-photo
    offset, which cancels in recoveries and readout shifts."""
    attr, label = np.asarray(coords["attribute"]), np.asarray(coords["label"])
    sel = ((attr == attribute) | (label == baseline)) & (np.asarray(coords["split"]) == "train")
    if (attr[sel] == attribute).sum() < 2:
        raise ReadoutError(
            f"vision.attributes: too few train variants of {attribute!r} to fit its readout"
        )
    xc = source_contrast(x, np.asarray(coords["frame_id"]), label, baseline)
    w, b = readout_weights(xc[sel], np.asarray(coords["level"], np.float64)[sel], alpha)
    return Readout(attribute, hook, position, w, b, float(alpha), float(score))


def probe_alpha(probes_csv, hook: str, position: str, attribute: str) -> tuple[float, float]:
    """(ridge penalty, held-out score) of one probe row of probes.csv."""
    t = pd.read_csv(probes_csv)
    row = t[(t["hook"] == hook) & (t["position"] == position) & (t["target"] == attribute)]
    if row.empty:
        raise ReadoutError(
            f"{probes_csv}: no probe for {attribute!r} at {hook} position {position}; choose "
            "another vision.readout / vision.attributes"
        )
    return float(row["alpha"].iloc[0]), float(row["score"].iloc[0])


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


# ---------------------------------------------------------------- the CLIP prompt readout
def clip_prompt_score(
    image_emb: Float[np.ndarray, "batch d"],
    text_low: Float[np.ndarray, " d"],
    text_high: Float[np.ndarray, " d"],
) -> Float[np.ndarray, " batch"]:
    """cos(image, text_high) - cos(image, text_low)."""
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

    def __call__(
        self, image_emb: Float[np.ndarray, "batch d"], attributes: Sequence[str]
    ) -> Float[np.ndarray, " batch"]:
        """image_emb [B, d] and one attribute per image -> readout [B]."""
        return np.array(
            [
                clip_prompt_score(image_emb[i : i + 1], *self.text[a])[0]
                for i, a in enumerate(attributes)
            ]
        )


def load_clip_readout(
    vm: VisionModel, model_dir, prompts: Mapping[str, Sequence[str]], attributes
) -> ClipPromptReadout:
    """Encode each attribute's [low, high] prompts with the open_clip model's text tower and
    the tokenizer of its arch (``open_clip.get_tokenizer`` on the prepared folder)."""
    import open_clip  # optional: only open_clip models have a CLIP readout

    if vm.backend != "open_clip":
        raise ReadoutError(
            f"vision.readouts: clip_prompts needs an open_clip model; model {vm.name!r} has "
            f"backend {vm.backend!r}"
        )
    try:
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(model_dir))
    except Exception as err:  # noqa: BLE001 - open_clip raises many kinds
        raise ReadoutError(
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
            raise ReadoutError(
                f"model {vm.name!r}: its text tower has {vocab} tokens, fewer than its "
                "tokenizer's; use vision.readouts: [probe]"
            )
        with torch.no_grad():
            emb = vm.module.encode_text(tokens.to(param.device)).double().cpu().numpy()
        text[attribute] = (emb[0], emb[1])
    return ClipPromptReadout({a: tuple(prompts[a]) for a in attributes}, text)


# ---------------------------------------------------------------- measuring
def read_levels(
    readouts: Mapping[str, Readout],
    chunk: Sequence[ImagePair],
    pooled: Float[np.ndarray, "batch d"],
) -> Float[np.ndarray, " batch"]:
    """Each pair's readout (its attribute's probe) of the pooled readout hook."""
    return np.array([readouts[p.attribute](pooled[i : i + 1])[0] for i, p in enumerate(chunk)])


def measure(
    runner: Runner,
    readouts: Mapping[str, Readout],
    clip: ClipPromptReadout | None,
    chunk: Sequence[ImagePair],
    pixels,
    edits: Mapping | None = None,
) -> dict[str, Float[np.ndarray, " batch"]]:
    """{readout kind: [B]}: the probe (when ``readouts``) and the CLIP prompt readout (when
    ``clip``) of one forward pass per kind with ``edits`` {hook: fn(raw output) -> output}."""
    out = {}
    if readouts:
        out["probe"] = read_levels(readouts, chunk, runner.read(pixels, edits))
    if clip is not None:
        out["clip_prompts"] = clip(runner.embed(pixels, edits), [p.attribute for p in chunk])
    return out


def runner_for(vm: VisionModel, readouts: Mapping[str, Readout], clip, position: str) -> Runner:
    """A Runner at the probes' readout hook (the last hook when only the CLIP readout runs)."""
    hooks = {r.hook for r in readouts.values()}
    if len(hooks) > 1 or (not hooks and clip is None):
        raise ReadoutError(f"readouts at several hooks {sorted(hooks)} (or none)")
    return Runner(vm, hooks.pop() if hooks else vm.hooks[-1].name, position)


# ---------------------------------------------------------------- inputs of a run
@dataclass
class RunInputs:
    """What vision patching and steering both start from: the loaded model, its stored hooks
    in forward order, the readouts (probe at ``readout`` and/or CLIP prompts) and the pairs."""

    vm: VisionModel
    hooks: list[str]
    kinds: tuple[str, ...]
    readout: str
    readouts: dict[str, Readout]
    clip: ClipPromptReadout | None
    pairs: list[ImagePair]


def load_run_inputs(
    cfg: ReadoutConfig,
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
    vm = load_vision_model(model_dir, model, dtype=dtype, device=device)
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
        raise ReadoutError(
            f"dataset {dataset!r}: no (poor, original) pairs of {list(cfg.attributes)} in "
            f"split {cfg.split!r}; set vision.split: all or add the attributes' labels"
        )
    return RunInputs(vm, hooks, kinds, readout, readouts, clip, pairs)
