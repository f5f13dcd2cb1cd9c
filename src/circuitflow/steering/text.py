"""Steering during generation: add ``scale * unit direction`` to the residual stream.

One batched greedy generation runs many steering configurations at once. Each row of the
batch is one (prompt, configuration) pair; a hook on ``blocks.{L}.hook_resid_pre`` of every
steered layer adds a per-row vector ``[rows, d_model]`` (zero for rows that are not steered at
that layer, and for the unsteered baseline rows).

Generation loop (why not ``TransformerBridge.generate``): the bridge's ``generate`` handles
left-padded batches with an attention mask and the KV cache correctly, but its prompt pass
computes logits at every prompt position. Gemma-3's vocabulary has 262k tokens, so a batch of a
few hundred rows would materialise gigabytes of logits it never reads. The loop here calls
the same ``bridge.forward`` (so TransformerLens hook names and the hooks attached once with
``bridge.hooks`` apply unchanged), passes ``logits_to_keep=1``, an explicit attention mask,
position ids and the HF ``past_key_values`` cache, and takes the argmax (greedy). Tests check
it against ``bridge.generate`` token for token.

Under the KV cache the steered positions are:

- the prompt pass (all prompt positions at once): the last ``window`` prompt tokens of each
  row. Prompts are left-padded, so the last ``window`` columns are the same real positions
  in every row; pad columns and BOS are never steered;
- every decoding step (one new position): that position, i.e. every generated token whose
  residual is computed (the last generated token is never fed back).

Rows that share a prompt share the prompt pass up to the steering window (see
:func:`greedy_generate`), so a sweep of C configurations costs one prefix pass per prompt
plus C short window passes and C decoding loops.

Every generation runs ``max_new_tokens`` steps; the tokens after a row's first EOS are
dropped afterwards (batched rows cannot stop one by one without changing the others' shapes).

Alphas: ``raw`` adds ``alpha * unit``; ``relative`` adds ``alpha * r_L * unit`` where ``r_L``
is the mean over train samples of ||resid_pre at layer L, position "mean"|| (the norm of each
prompt's token-mean residual, BOS excluded) from the activation store. Alpha 0 is the
unsteered baseline, generated once per prompt. Random controls are seeded Gaussian unit
directions (one per seed and layer) at the same alphas.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitflow import store

UNSTEERED = "none"
DIRECTION_POSITIONS = ("last", "trigger_mean")


class SteeringError(RuntimeError):
    """A steering sweep cannot run as configured; the message names the key and the fix."""


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SteeringParams:
    """The ``steering`` section of the config (schema defaults live in the schema).

    ``layers`` are block indices (ints) or relative depths (floats in [0, 1]), so one config
    fits models of different depth; :func:`resolve_layers` maps them to blocks.
    """

    layers: tuple[int | float, ...] = (0.33, 0.5)
    alphas_relative: tuple[float, ...] = (0.1, 0.25)
    alphas_raw: tuple[float, ...] = ()
    position: str = "trigger_mean"
    conditions: tuple[str, ...] | None = None
    components: tuple[int, ...] = ()
    random_seeds: tuple[int, ...] = (0, 1)
    n_prompts: int = 12
    prompt_template: str = "{text}"
    max_new_tokens: int = 16
    window: int = 4
    batch_size: int = 128
    evaluators: tuple[str, ...] = ("sentiment", "emotion", "politeness", "fluency")
    hub_classifiers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
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


def resolve_layers(layers: Sequence[int | float], n_layers: int, model: str = "model") -> list[int]:
    """Block indices for ``layers``: ints as given, floats f in [0, 1] -> f * (L - 1) rounded
    half up.

    Duplicates (two depths rounding to one block) are dropped; order is ascending.
    """
    out = set()
    for layer in layers:
        if isinstance(layer, bool):
            raise ValueError(f"steering.layers: {layer!r} is not a layer")
        if isinstance(layer, float):
            out.add(math.floor(layer * (n_layers - 1) + 0.5))
        elif not 0 <= layer < n_layers:
            raise ValueError(
                f"steering.layers: block {layer} out of range for model {model!r} with "
                f"{n_layers} layers (0..{n_layers - 1}); use a relative depth in [0, 1]"
            )
        else:
            out.add(int(layer))
    return sorted(out)


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
    unit: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def steered(self) -> bool:
        return self.unit is not None and self.scale != 0.0

    def vector(self) -> np.ndarray:
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


def random_direction(d_model: int, seed: int, layer: int, base_seed: int = 0) -> np.ndarray:
    """Seeded Gaussian direction of unit norm (one per seed and layer, the same for all alphas)."""
    rng = np.random.default_rng([base_seed, seed, layer])
    v = rng.standard_normal(d_model)
    return v / np.linalg.norm(v)


def mean_residual_norm(acts: np.ndarray, train: np.ndarray) -> float:
    """Mean over train samples of ||resid|| at position ``mean`` (the token-mean residual).

    acts: [sample, position, d_model] (an activation-store array, positions store.POSITIONS).
    """
    a = np.asarray(acts, dtype=np.float64)[train, store.POSITIONS.index("mean")]
    if len(a) == 0:
        raise ValueError("no train samples to compute the mean residual norm from")
    return float(np.linalg.norm(a, axis=-1).mean())


def build_configs(
    params: SteeringParams,
    layers: Sequence[int],
    directions: Mapping[int, Mapping[str, np.ndarray]],
    subspaces: Mapping[int, Mapping[str, np.ndarray]],
    resid_norms: Mapping[int, float],
    d_model: int,
    base_seed: int = 0,
) -> list[SteerConfig]:
    """The sweep: the unsteered baseline, then layer x alpha x direction configurations.

    directions: {layer: {condition: unit [d_model]}}; subspaces: {layer: {condition:
    components [k, d_model]}}; resid_norms: {layer: mean residual norm}. Alpha 0 is the
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
        for seed in params.random_seeds:
            unit = random_direction(d_model, seed, layer, base_seed)
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

    Attach once (``bridge.hooks(fwd_hooks=steerer.fwd_hooks())``; entering that context
    costs ~0.4 s) and change :attr:`vectors` between generations. During the prompt pass the
    vector is added where :attr:`prefill_mask` is 1; during each decoding step (one new
    position per row) it is added to that position. With no vectors set the hooks are no-ops.
    """

    def __init__(self, layers: Sequence[int]):
        self.layers = sorted(set(int(x) for x in layers))
        self.vectors: dict[int, torch.Tensor] = {}  # layer -> [rows, d_model]
        self.prefill_mask: torch.Tensor | None = None  # [rows, prompt_len] 0/1
        self.phase: str | None = None  # "prefill" | "decode" | None (hooks inactive)
        self.calls: dict[int, int] = {}

    def hook_names(self) -> list[str]:
        return [store.hook_name(layer, "hook_resid_pre") for layer in self.layers]

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        return [
            (name, lambda x, hook, layer=layer: self._add(x, layer))
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


def window_mask(attention_mask: torch.Tensor, window: int, bos: bool) -> torch.Tensor:
    """[rows, P] 0/1: the last ``window`` real prompt tokens of each left-padded row (no BOS)."""
    rows, P = attention_mask.shape
    lengths = attention_mask.sum(1)
    first = P - lengths + (1 if bos else 0)  # first steerable column per row
    start = torch.maximum(first, torch.full_like(first, P - window))
    cols = torch.arange(P, device=attention_mask.device)
    return (cols[None, :] >= start[:, None]).to(attention_mask.dtype) * attention_mask


# ---------------------------------------------------------------- generation
def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [rows, P], attention_mask [rows, P]) with the sequences aligned at the end."""
    P = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), P), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"row {i}: empty token sequence")
        ids[i, P - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, P - len(seq) :] = 1
    return ids, mask


def _accepts(bridge, name: str) -> bool:
    """Whether the wrapped HF model's forward takes keyword ``name``."""
    return name in inspect.signature(bridge.original_model.forward).parameters


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Absolute positions of a left-padded batch: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class CachedForward:
    """``bridge.forward`` with the HF KV cache, an explicit mask and explicit positions.

    ``attention_mask`` always spans cache + new tokens; ``positions`` the new tokens only.
    Returns (logits of the last ``keep`` positions, or all when ``keep`` is None; the cache).
    """

    def __init__(self, bridge):
        self.bridge = bridge
        self.keep_kw = _accepts(bridge, "logits_to_keep")
        # Models that derive positions themselves (mRoPE) must not get ours (TL #1626).
        derive = getattr(bridge, "_accepts_derived_position_ids", lambda: True)
        self.positions_kw = _accepts(bridge, "position_ids") and derive()

    def __call__(self, ids, attention_mask, positions, cache=None, keep: int | None = 1):
        kwargs = {}
        if self.positions_kw:
            kwargs["position_ids"] = positions
        if self.keep_kw and keep is not None:
            kwargs["logits_to_keep"] = keep
        if cache is not None:
            kwargs["past_key_values"] = cache
        logits, cache = self.bridge(
            ids,
            return_type="logits_and_cache",
            attention_mask=attention_mask,
            use_cache=True,
            **kwargs,
        )
        if cache is None:
            raise SteeringError(
                f"{type(self.bridge.original_model).__name__}: the forward pass returned no KV "
                "cache; steering generation needs an HF model with past_key_values"
            )
        return (logits if keep is None else logits[:, -keep:]), cache


def unique_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct row [U], index of each row's distinct row [rows]) over the
    columns of ``tensors`` side by side."""
    joint = torch.cat([t.long() for t in tensors], dim=1)
    uniq, inverse = torch.unique(joint, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), joint.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(joint.shape[0]), reduce="amin")
    return first, inverse


@torch.no_grad()
def greedy_generate(
    bridge,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    steerer: Steerer | None = None,
    vectors: Mapping[int, torch.Tensor] | None = None,
    window: int = 0,
    bos: bool = True,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Greedy continuation of a left-padded batch with the KV cache -> [rows, max_new_tokens].

    With ``steerer`` (its hooks attached by the caller) and ``vectors`` ({layer: [rows,
    d_model]}), adds the vectors over the last ``window`` prompt tokens and every generated
    position.

    ``share_prefix``: rows that repeat a prompt (one prompt under many configurations) share
    the prompt pass up to the steering window: the first ``P - max(window, 1)`` columns run
    once per distinct prompt, unsteered (steering later in the sequence cannot reach them
    under causal attention), their KV cache is copied to every row, and only the last
    ``max(window, 1)`` columns run per row, steered.
    """
    device = next(bridge.parameters()).device
    input_ids = input_ids.to(device)
    mask = attention_mask.to(device)
    fwd = CachedForward(bridge)
    pos = position_ids(mask)
    rows, P = input_ids.shape
    split = P - max(window, 1)
    first = inverse = None
    if share_prefix and split > 0:
        first, inverse = unique_rows(input_ids.cpu(), mask.cpu())
        if len(first) == rows:
            first = inverse = None
    out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)
    if steerer is not None:
        steerer.vectors = {int(k): v.to(device) for k, v in (vectors or {}).items()}
        steerer.calls = {}
        steerer.phase = None
    try:
        if first is not None:
            first, inverse = first.to(device), inverse.to(device)
            _, cache = fwd(input_ids[first, :split], mask[first, :split], pos[first, :split])
            cache.reorder_cache(inverse)
            if steerer is not None:
                steerer.prefill_mask = window_mask(mask, window, bos)[:, split:]
                steerer.phase = "prefill"
            logits, cache = fwd(input_ids[:, split:], mask, pos[:, split:], cache)
        else:
            if steerer is not None:
                steerer.prefill_mask = window_mask(mask, window, bos)
                steerer.phase = "prefill"
            logits, cache = fwd(input_ids, mask, pos)
        for t in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            out[:, t] = nxt
            if t == max_new_tokens - 1:
                break
            if steerer is not None:
                steerer.phase = "decode"
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            pos = pos[:, -1:] + 1
            logits, cache = fwd(nxt[:, None], mask, pos, cache)
    finally:
        if steerer is not None:
            steerer.phase = None
            steerer.vectors = {}
            steerer.prefill_mask = None
    return out.cpu()


def eos_ids(bridge) -> set[int]:
    """Every token id that ends a generation (tokenizer EOS and generation_config EOS)."""
    ids = set()
    tok = bridge.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(bridge.original_model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is not None:
        ids |= {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}
    return ids


def truncate_at_eos(tokens: Sequence[int], stop: set[int]) -> list[int]:
    """Tokens before the first stop token."""
    out = []
    for t in tokens:
        if int(t) in stop:
            break
        out.append(int(t))
    return out


# ---------------------------------------------------------------- the sweep
@dataclass
class Prompt:
    prompt_id: str
    text: str
    ids: list[int]


def encode_prompts(
    tokenizer, rows: Sequence[Mapping], template: str, prepend_bos: bool
) -> list[Prompt]:
    """Prompt token ids: ``template`` filled with each row's text, BOS prepended if asked."""
    bos = []
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise SteeringError("prepend_bos is true but the tokenizer has no bos_token")
        bos = [tokenizer.bos_token_id]
    out = []
    for row in rows:
        text = template.format(text=row["text"])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SteeringError(f"prompt {row['sample_id']}: text tokenizes to nothing")
        out.append(Prompt(row["sample_id"], text, bos + list(ids)))
    return out


def select_prompts(rows: Sequence[Mapping], baseline: str, n_prompts: int) -> list[Mapping]:
    """The first ``n_prompts`` test-split baseline (neutral) prompts, by sample id."""
    pool = sorted(
        (r for r in rows if r["split"] == "test" and r["label"] == baseline),
        key=lambda r: r["sample_id"],
    )
    if not pool:
        raise SteeringError(f"no test-split prompts with label {baseline!r} to steer")
    return pool[:n_prompts]


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
    generation with one hook per steered layer (attached once for the whole sweep).
    Returns generations in (prompt, configuration) order.
    """
    from tqdm import tqdm

    layers = sorted({c.layer for c in configs if c.steered})
    d_model = bridge.cfg.d_model
    pad_id = bridge.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = bridge.tokenizer.eos_token_id or 0
    stop = eos_ids(bridge)
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(configs))]
    order = sorted(pairs, key=lambda p: (len(prompts[p[0]].ids), p[0], p[1]))
    steerer = Steerer(layers)
    out: dict[tuple[int, int], Generation] = {}
    bar = tqdm(total=len(pairs), desc="steer", unit="gen", disable=not progress)
    n_batches = -(-len(order) // batch_size)
    size = -(-len(order) // n_batches)  # even batches: no small last batch of full length
    with bridge.hooks(fwd_hooks=steerer.fwd_hooks()):
        for b0 in range(0, len(order), size):
            batch = order[b0 : b0 + size]
            ids, mask = left_pad([prompts[i].ids for i, _ in batch], pad_id)
            vectors = {}
            for layer in layers:
                v = torch.zeros((len(batch), d_model), dtype=torch.float32)
                for r, (_, j) in enumerate(batch):
                    c = configs[j]
                    if c.steered and c.layer == layer:
                        v[r] = torch.from_numpy(c.vector()).float()
                if v.any():
                    vectors[layer] = v
            gen = greedy_generate(
                bridge, ids, mask, max_new_tokens, steerer, vectors, window=window, bos=bos
            )
            for r, (i, j) in enumerate(batch):
                toks = truncate_at_eos(gen[r].tolist(), stop)
                text = bridge.tokenizer.decode(toks, skip_special_tokens=True)
                out[(i, j)] = Generation(prompts[i], configs[j], toks, text)
            bar.update(len(batch))
    bar.close()
    return [out[p] for p in pairs]


def sample_rows(generations: Sequence[Generation], dataset: str, model: str) -> list[dict]:
    """Per-sample rows (without evaluator scores) for ``samples.csv``."""
    return [
        {
            "dataset": dataset,
            "model": model,
            "prompt_id": g.prompt.prompt_id,
            **g.config.describe(),
            "prompt": g.prompt.text,
            "generation": g.text,
            "n_tokens": len(g.tokens),
        }
        for g in generations
    ]


# ---------------------------------------------------------------- inputs and the whole job
def load_directions(
    vectors_path,
    activations_path,
    layers: Sequence[int],
    conditions: Sequence[str],
    position: str,
    components: Sequence[int] = (),
) -> tuple[dict, dict, dict]:
    """Steering inputs for ``layers`` from the vectors and activation stores.

    Returns ({layer: {condition: unit direction}}, {layer: {condition: components [k,
    d_model]}}, {layer: mean residual norm}), all at ``blocks.{L}.hook_resid_pre``; the
    directions and components at ``position``, the norm at position ``mean`` (train split).
    """
    vec = store.open_dataset(vectors_path)
    have_hooks = {str(h) for h in vec["hook"].values}
    have_conditions = [str(c) for c in vec["condition"].values]
    missing = [c for c in conditions if c not in have_conditions]
    if missing:
        raise SteeringError(
            f"steering.conditions: {missing} not in {vectors_path} (has {have_conditions})"
        )
    coords = store.read_sample_coords(activations_path)
    train = coords["split"] == "train"
    directions, subspaces, norms = {}, {}, {}
    for layer in layers:
        hook = store.hook_name(layer, "hook_resid_pre")
        if hook not in have_hooks:
            raise SteeringError(
                f"{vectors_path}: no {hook}; include layer {layer} in extract.layers and "
                "extract.sites (hook_resid_pre) or steer other layers"
            )
        sel = vec.sel(hook=hook, position=position)
        directions[layer] = {c: sel["direction"].sel(condition=c).values for c in conditions}
        if components:
            subspaces[layer] = {c: sel["subspace"].sel(condition=c).values for c in conditions}
        norms[layer] = mean_residual_norm(store.read_array(activations_path, hook), train)
    return directions, subspaces, norms


def sweep_table(
    bridge,
    rows: Sequence[Mapping],
    params: SteeringParams,
    *,
    dataset: str,
    model: str,
    labels: Sequence[str],
    baseline: str,
    vectors_path,
    activations_path,
    prepend_bos: bool = True,
    base_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
):
    """The steering job: sweep, generate, score -> (per-sample DataFrame, summary dict)."""
    import time

    import pandas as pd

    from circuitflow.evaluators import Item, build_evaluators, score_all

    layers = resolve_layers(params.layers, bridge.cfg.n_layers, model)
    conditions = list(params.conditions or [c for c in labels if c != baseline])
    directions, subspaces, norms = load_directions(
        vectors_path, activations_path, layers, conditions, params.position, params.components
    )
    configs = build_configs(
        params, layers, directions, subspaces, norms, bridge.cfg.d_model, base_seed
    )
    chosen = select_prompts(rows, baseline, params.n_prompts)
    prompts = encode_prompts(bridge.tokenizer, chosen, params.prompt_template, prepend_bos)
    t0 = time.perf_counter()
    gens = run_sweep(
        bridge,
        prompts,
        configs,
        params.max_new_tokens,
        params.window,
        params.batch_size,
        bos=prepend_bos,
        progress=progress,
    )
    t1 = time.perf_counter()
    evaluators = build_evaluators(
        params.evaluators,
        bridge=bridge,
        hub_classifiers=params.hub_classifiers,
        batch_size=params.batch_size,
        device=device,
    )
    scores = score_all(evaluators, [Item(g.text, g.prompt.ids, g.tokens) for g in gens])
    t2 = time.perf_counter()
    table = pd.DataFrame(sample_rows(gens, dataset, model))
    for col in ("layer", "seed"):
        table[col] = table[col].astype("Int64")
    for col, values in scores.items():
        table[col] = values
    summary = {
        "layers": layers,
        "resid_norms": {str(k): v for k, v in norms.items()},
        "n_prompts": len(prompts),
        "n_configs": len(configs),
        "n_rows": len(table),
        "generate_s": round(t1 - t0, 2),
        "evaluate_s": round(t2 - t1, 2),
        "evaluators": [e.name for e in evaluators],
        "score_columns": list(scores),
    }
    return table, summary
