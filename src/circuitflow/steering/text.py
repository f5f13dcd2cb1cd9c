"""Steering language models during generation: add ``scale * unit direction`` to the residual.

One batched greedy generation (:func:`circuitflow.core.generation.greedy_generate`) runs many
steering configurations at once: each row is one (prompt, configuration) pair, and a hook on
``blocks.{L}.hook_resid_pre`` of every steered layer adds a per-row vector ``[rows, d_model]``
(zero for rows not steered at that layer and for the unsteered baseline rows). Under the KV
cache the vector lands on the last ``window`` real prompt tokens (never pads or BOS) in the
prompt pass and on the one new position of every decoding step.

Alphas: ``raw`` adds ``alpha * unit``; ``relative`` adds ``alpha * r_L * unit`` where ``r_L``
is the mean train-split norm of the token-mean residual at layer L. Alpha 0 is the unsteered
baseline, generated once per prompt. Random controls (one per seed and layer, at the same
alphas, so the same norm as the steering vectors) are matched in the variance they carry
(:func:`circuitflow.core.rand.matched_unit`): drawn from the covariance of the train-split
activations at ``blocks.{L}.hook_resid_pre`` and the steering position, with the projected
variance of the layer's median-variance emotion direction. An isotropic direction of R^d
carries about 1/d of it and, at the same norm, pushes the model off its activation
distribution (gibberish on Gemma-3), so "emotion vs random" would partly measure "fluent vs
not".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from tqdm import tqdm

from circuitflow import store
from circuitflow.core.errors import CircuitflowError
from circuitflow.core.generation import eos_ids, greedy_generate, truncate_at_eos
from circuitflow.core.hooks import attach_bridge
from circuitflow.core.rand import decompose, matched_unit, rng
from circuitflow.core.tokens import encode_texts, left_pad, pad_id
from circuitflow.workflow import schema_backed

UNSTEERED = "none"
DIRECTION_POSITIONS = ("last", "trigger_mean")
DIRECTION_CONTRASTS = tuple(store.DIRECTION_VARIABLES)  # steering.direction_contrast


class SteeringError(CircuitflowError, RuntimeError):
    """A steering sweep cannot run as configured; the message names the key and the fix."""


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
@schema_backed("steering")
class SteeringParams:
    """The ``steering`` section of the config (schema defaults live in the schema).

    ``layers`` are block indices (ints) or relative depths (floats in [0, 1]), so one config
    fits models of different depth; :func:`circuitflow.core.layers.resolve_layers` maps them
    to blocks.
    """

    layers: tuple[int | float, ...]
    alphas_relative: tuple[float, ...]
    alphas_raw: tuple[float, ...]
    position: str
    conditions: tuple[str, ...] | None = None
    components: tuple[int, ...]
    random_seeds: tuple[int, ...]
    n_prompts: int
    prompt_template: str
    max_new_tokens: int
    window: int
    batch_size: int
    evaluators: tuple[str, ...]
    hub_classifiers: Mapping[str, str]
    direction_contrast: str
    perplexity_cap: float | None = None
    fluency_max_perplexity_ratio: float
    fluency_max_empty_rate: float
    fluency_min_distinct_2_ratio: float

    def __post_init__(self):
        if self.direction_contrast not in DIRECTION_CONTRASTS:
            raise ValueError(
                f"steering.direction_contrast: {self.direction_contrast!r} is not one of "
                f"{', '.join(DIRECTION_CONTRASTS)}"
            )
        if self.perplexity_cap is not None and not self.perplexity_cap > 1:
            raise ValueError(f"steering.perplexity_cap: must be > 1, got {self.perplexity_cap}")
        if not self.fluency_max_perplexity_ratio >= 1:
            raise ValueError(
                "steering.fluency_max_perplexity_ratio: must be >= 1, got "
                f"{self.fluency_max_perplexity_ratio}"
            )
        if not 0 <= self.fluency_max_empty_rate <= 1:
            raise ValueError(
                f"steering.fluency_max_empty_rate: must be in [0, 1], got "
                f"{self.fluency_max_empty_rate}"
            )
        if not 0 <= self.fluency_min_distinct_2_ratio <= 1:
            raise ValueError(
                "steering.fluency_min_distinct_2_ratio: must be in [0, 1], got "
                f"{self.fluency_min_distinct_2_ratio}"
            )
        if self.position not in DIRECTION_POSITIONS:
            raise ValueError(
                f"steering.position: {self.position!r} is not one of "
                f"{', '.join(DIRECTION_POSITIONS)}"
            )
        for key in ("n_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"steering.{key}: must be >= 1, got {getattr(self, key)}")
        if self.window < 0:
            raise ValueError(f"steering.window: must be >= 0, got {self.window}")
        if not self.layers:
            raise ValueError("steering.layers: give at least one layer")
        if "{text}" not in self.prompt_template:
            raise ValueError(
                f"steering.prompt_template: {self.prompt_template!r} has no {{text}} field"
            )
        for layer in self.layers:
            if isinstance(layer, float) and not 0.0 <= layer <= 1.0:
                raise ValueError(
                    f"steering.layers: relative depth {layer} is outside [0, 1]; "
                    "give a fraction or an integer block index"
                )
            if isinstance(layer, int) and layer < 0:
                raise ValueError(f"steering.layers: block index {layer} is negative")
        if any(c < 0 for c in self.components):
            raise ValueError(f"steering.components: indices must be >= 0, got {self.components}")

    @classmethod
    def from_config(cls, section: Mapping) -> SteeringParams:
        section = dict(section)
        for key in ("layers", "alphas_relative", "alphas_raw", "components", "random_seeds"):
            if key in section:
                section[key] = tuple(section[key])
        for key in ("conditions", "evaluators"):
            if section.get(key) is not None:
                section[key] = tuple(section[key])
        if "hub_classifiers" in section:
            section["hub_classifiers"] = dict(section["hub_classifiers"])
        return cls(**section)

    @property
    def direction_variable(self) -> str:
        """The vectors-store variable that steers (``store.DIRECTION_VARIABLES``)."""
        return store.DIRECTION_VARIABLES[self.direction_contrast]

    def fluency_band(self) -> FluencyBand:
        return FluencyBand(
            self.fluency_max_perplexity_ratio,
            self.fluency_max_empty_rate,
            self.fluency_min_distinct_2_ratio,
        )


@dataclass(frozen=True)
class FluencyBand:
    """Where a steering configuration still writes text like the unsteered run: median
    perplexity at most ``max_perplexity_ratio`` x the unsteered median, at most
    ``max_empty_rate`` empty generations, median distinct-2 at least
    ``min_distinct_2_ratio`` x the unsteered median (``steering.fluency_*``)."""

    max_perplexity_ratio: float
    max_empty_rate: float
    min_distinct_2_ratio: float


@dataclass(frozen=True)
class SteerConfig:
    """One steering configuration: add ``scale * unit`` at ``blocks.{layer}.hook_resid_pre``.

    The unsteered baseline has ``direction == "none"``, no layer and no vector.
    """

    direction: str  # condition | "pc{i}:{condition}" | "random:{seed}" | "none"
    layer: int | None = None
    alpha: float = 0.0
    alpha_mode: str = UNSTEERED  # raw | relative | none
    scale: float = 0.0  # norm of the added vector
    resid_norm: float = math.nan  # mean residual norm at the layer (relative alphas)
    condition: str = ""
    control: bool = False
    seed: int | None = None
    unit: Float[np.ndarray, " d_model"] | None = field(default=None, repr=False, compare=False)

    @property
    def steered(self) -> bool:
        return self.unit is not None and self.scale != 0.0

    def vector(self) -> Float[np.ndarray, " d_model"]:
        if self.unit is None:
            raise ValueError(f"configuration {self.direction!r} has no direction vector")
        return self.scale * self.unit

    def describe(self) -> dict:
        """The row fields of this configuration (no vector)."""
        return {
            "layer": self.layer,
            "alpha": self.alpha,
            "alpha_mode": self.alpha_mode,
            "scale": self.scale,
            "resid_norm": self.resid_norm,
            "direction": self.direction,
            "condition": self.condition,
            "control": self.control,
            "seed": self.seed,
        }


def projected_variance(x: Float[np.ndarray, "n d"], unit: Float[np.ndarray, " d"]) -> float:
    """Sample variance of ``x`` (rows = samples) along the direction ``unit``."""
    x = np.asarray(x, np.float64)
    u = np.asarray(unit, np.float64)
    return float(np.var(x @ (u / np.linalg.norm(u)), ddof=1)) if len(x) > 1 else 0.0


def matched_controls(
    x: Float[np.ndarray, "n d_model"],
    directions: Mapping[str, Float[np.ndarray, " d_model"]],
    seeds: Sequence[int],
    layer: int,
    base_seed: int = 0,
) -> tuple[dict[int, Float[np.ndarray, " d_model"]], dict]:
    """One variance-matched random unit direction per seed at one layer.

    ``x``: train-split activations at ``blocks.{layer}.hook_resid_pre`` and the steering
    position; ``directions``: the layer's emotion directions. The target is the direction of
    median projected variance (the lower middle one for an even count): the controls are
    shared by every direction of the layer, as the generations are. Seed ``s`` draws from
    ``rng(base_seed, s, layer)``. Returns ({seed: unit}, {"target": condition, "variance":
    {condition or random:s: projected variance}}).
    """
    if not directions:
        raise SteeringError(f"layer {layer}: no emotion direction to match the controls to")
    variance = {c: projected_variance(x, u) for c, u in directions.items()}
    ranked = sorted(variance, key=variance.get)
    target = ranked[(len(ranked) - 1) // 2]
    units, dec = {}, decompose(x)
    for seed in seeds:
        u = matched_unit(dec, directions[target], rng(base_seed, seed, layer))
        units[int(seed)] = u
        variance[f"random:{seed}"] = projected_variance(x, u)
    return units, {"target": target, "variance": variance}


def build_configs(
    params: SteeringParams,
    layers: Sequence[int],
    directions: Mapping[int, Mapping[str, Float[np.ndarray, " d_model"]]],
    subspaces: Mapping[int, Mapping[str, Float[np.ndarray, "k d_model"]]],
    resid_norms: Mapping[int, float],
    d_model: int,
    base_seed: int = 0,
    control_x: Mapping[int, Float[np.ndarray, "n d_model"]] | None = None,
) -> list[SteerConfig]:
    """The sweep: the unsteered baseline, then layer x alpha x direction configurations.

    directions: {layer: {condition: unit}}; subspaces: {layer: {condition: components}};
    resid_norms: {layer: mean residual norm}; control_x: {layer: train-split activations at
    the steering position}, needed for random controls (:func:`matched_controls`, seeded by
    ``(base_seed, seed, layer)``; same scale as the steering vectors). Alpha 0 is the
    unsteered baseline (generated once per prompt), so zero alphas add no configurations.
    """
    configs = [SteerConfig(direction=UNSTEERED)]
    for layer in layers:
        named: list[tuple[str, str, bool, int | None, np.ndarray]] = []
        for condition, unit in directions[layer].items():
            named.append((condition, condition, False, None, unit))
        for i in params.components:
            for condition, comps in subspaces[layer].items():
                if i >= len(comps) or not np.isfinite(comps[i]).all() or not comps[i].any():
                    raise SteeringError(
                        f"steering.components: component {i} does not exist for {condition!r} "
                        f"at layer {layer} (vectors.k_max too small?)"
                    )
                named.append((f"pc{i}:{condition}", condition, False, None, comps[i]))
        if params.random_seeds:
            x = None if control_x is None else control_x.get(layer)
            if x is None or np.shape(x)[-1] != d_model:
                raise SteeringError(
                    f"steering.random_seeds: the matched controls at layer {layer} need "
                    f"train-split activations [n, {d_model}] at blocks.{layer}.hook_resid_pre "
                    "(control_x); pass them or set random_seeds: []"
                )
            units, _ = matched_controls(x, directions[layer], params.random_seeds, layer, base_seed)
            for seed, unit in units.items():
                named.append((f"random:{seed}", "", True, seed, unit))
        alphas = [("relative", a) for a in params.alphas_relative] + [
            ("raw", a) for a in params.alphas_raw
        ]
        for mode, alpha in alphas:
            if alpha == 0:
                continue
            norm = resid_norms[layer]
            scale = alpha * norm if mode == "relative" else float(alpha)
            for direction, condition, control, seed, unit in named:
                unit = np.asarray(unit, dtype=np.float64)
                configs.append(
                    SteerConfig(
                        direction=direction,
                        layer=layer,
                        alpha=float(alpha),
                        alpha_mode=mode,
                        scale=float(scale),
                        resid_norm=float(norm),
                        condition=condition,
                        control=control,
                        seed=seed,
                        unit=unit / np.linalg.norm(unit),
                    )
                )
    return configs


# ---------------------------------------------------------------- the steering hook
class Steerer:
    """Per-row steering vectors at ``blocks.{L}.hook_resid_pre``, KV-cache aware.

    Attach once (``attach_bridge(bridge, steerer.fwd_hooks())``; entering the bridge's hook
    context costs ~0.4 s), then before each generation :meth:`set_vectors` and pass the
    steerer as ``hooks`` to :func:`~circuitflow.core.generation.greedy_generate`, which calls
    :meth:`prefill`, :meth:`decode` and :meth:`reset` (the
    :class:`~circuitflow.core.generation.GenerationHooks` protocol). During the prompt pass
    the vector is added where :attr:`prefill_mask` is 1; during each decoding step (one new
    position per row) it is added to that position. With no vectors set, or outside a
    generation, the hooks are no-ops. :attr:`calls` counts hook calls per layer since the
    vectors were last set.
    """

    def __init__(self, layers: Sequence[int]):
        self.layers = sorted(set(int(x) for x in layers))
        self.vectors: dict[int, Float[torch.Tensor, "rows d_model"]] = {}
        self.prefill_mask: torch.Tensor | None = None  # [rows, prompt columns] 0/1
        self.phase: str | None = None  # "prefill" | "decode" | None (hooks inactive)
        self.calls: dict[int, int] = {}

    def set_vectors(
        self,
        vectors: Mapping[int, Float[torch.Tensor, "rows d_model"]],
        device: torch.device | str | None = None,
    ) -> None:
        """Vectors {layer: [rows, d_model]} for the next generation (moved to ``device``)."""
        self.vectors = {int(k): v.to(device) for k, v in vectors.items()}
        self.calls = {}
        self.phase = None

    def prefill(self, mask: torch.Tensor) -> None:
        self.prefill_mask = mask
        self.phase = "prefill"

    def decode(self) -> None:
        self.phase = "decode"

    def reset(self) -> None:
        self.phase = None
        self.vectors = {}
        self.prefill_mask = None

    def hook_names(self) -> list[str]:
        return [store.hook_name(layer, "hook_resid_pre") for layer in self.layers]

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        return [
            (name, lambda x, layer=layer: self._add(x, layer))
            for name, layer in zip(self.hook_names(), self.layers, strict=True)
        ]

    def _add(self, x: torch.Tensor, layer: int):
        vec = self.vectors.get(layer)
        if self.phase is None or vec is None:
            return None
        self.calls[layer] = self.calls.get(layer, 0) + 1
        if x.shape[0] != vec.shape[0]:
            raise SteeringError(
                f"steering hook at layer {layer}: batch of {x.shape[0]} rows but "
                f"{vec.shape[0]} vectors"
            )
        vec = vec.to(device=x.device, dtype=x.dtype)
        if self.phase == "prefill":
            mask = self.prefill_mask
            if mask is None or mask.shape[1] != x.shape[1]:
                raise SteeringError(
                    f"steering hook at layer {layer}: prompt pass over {x.shape[1]} positions, "
                    "prefill mask does not match"
                )
            return x + mask.to(device=x.device, dtype=x.dtype)[..., None] * vec[:, None, :]
        if x.shape[1] != 1:
            raise SteeringError(
                f"steering hook at layer {layer}: decoding step over {x.shape[1]} positions; "
                "expected one new position per step (is the KV cache in use?)"
            )
        return x + vec[:, None, :]


# ---------------------------------------------------------------- prompts and the sweep
@dataclass
class Prompt:
    prompt_id: str
    text: str
    ids: list[int]
    frame_id: str = ""  # the counterfactual frame the prompt comes from ("" for free prompts)


def encode_prompts(
    tokenizer, rows: Sequence[Mapping], template: str, prepend_bos: bool
) -> list[Prompt]:
    """Prompt token ids: ``template`` filled with each row's text, BOS prepended if asked."""
    texts = [template.format(text=row["text"]) for row in rows]
    names = [row["sample_id"] for row in rows]
    frames = [str(row.get("frame_id") or "") for row in rows]
    ids = encode_texts(tokenizer, texts, names, prepend_bos)
    return [Prompt(*p) for p in zip(names, texts, ids, frames, strict=True)]


def select_prompts(rows: Sequence[Mapping], baseline: str, n_prompts: int) -> list[Mapping]:
    """``n_prompts`` test-split baseline (neutral) prompts: frame sentences and free prompts
    (no frame) taken in turn, each by sample id, so steering is not measured on the frame
    templates alone."""
    pool = sorted(
        (r for r in rows if r["split"] == "test" and r["label"] == baseline),
        key=lambda r: r["sample_id"],
    )
    if not pool:
        raise SteeringError(f"no test-split prompts with label {baseline!r} to steer")
    framed = [r for r in pool if r.get("frame_id")]
    free = [r for r in pool if not r.get("frame_id")]
    turns = [r for pair in itertools.zip_longest(framed, free) for r in pair if r is not None]
    return turns[:n_prompts]


@dataclass
class Generation:
    """One generated continuation: which prompt, which configuration, which tokens."""

    prompt: Prompt
    config: SteerConfig
    tokens: list[int]  # generated ids, truncated at the first EOS
    text: str


def run_sweep(
    bridge,
    prompts: Sequence[Prompt],
    configs: Sequence[SteerConfig],
    max_new_tokens: int,
    window: int,
    batch_size: int,
    bos: bool = True,
    progress: bool = True,
) -> list[Generation]:
    """Generate every (prompt, configuration) pair in batches of at most ``batch_size`` rows.

    Rows are sorted by prompt length so each batch pads little; each batch is one greedy
    generation with one hook per steered layer (attached once for the whole sweep). Every
    generation runs ``max_new_tokens`` steps; tokens after a row's first EOS are dropped.
    Returns generations in (prompt, configuration) order.
    """
    layers = sorted({c.layer for c in configs if c.steered})
    d_model = bridge.cfg.d_model
    device = next(bridge.parameters()).device
    pad = pad_id(bridge.tokenizer)
    stop = eos_ids(bridge)
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(configs))]
    order = sorted(pairs, key=lambda p: (len(prompts[p[0]].ids), p[0], p[1]))
    steerer = Steerer(layers)
    out: dict[tuple[int, int], Generation] = {}
    bar = tqdm(total=len(pairs), desc="steer", unit="gen", disable=not progress)
    n_batches = -(-len(order) // batch_size)
    size = -(-len(order) // n_batches)  # even batches: no small last batch of full length
    with attach_bridge(bridge, steerer.fwd_hooks()):
        for b0 in range(0, len(order), size):
            batch = order[b0 : b0 + size]
            ids, mask = left_pad([prompts[i].ids for i, _ in batch], pad)
            vectors = {}
            for layer in layers:
                v = torch.zeros((len(batch), d_model), dtype=torch.float32)
                for r, (_, j) in enumerate(batch):
                    c = configs[j]
                    if c.steered and c.layer == layer:
                        v[r] = torch.from_numpy(c.vector()).float()
                if v.any():
                    vectors[layer] = v
            steerer.set_vectors(vectors, device)
            gen = greedy_generate(
                bridge, ids, mask, max_new_tokens, steerer, window=window, bos=bos
            )
            for r, (i, j) in enumerate(batch):
                toks = truncate_at_eos(gen[r].tolist(), stop)
                text = bridge.tokenizer.decode(toks, skip_special_tokens=True)
                out[(i, j)] = Generation(prompts[i], configs[j], toks, text)
            bar.update(len(batch))
    bar.close()
    return [out[p] for p in pairs]
