"""The patching engine: config, the lean metric, recovery, and :class:`Patcher`, the hook
functions every patched, ablated or recorded forward pass of a text model runs with.

Metric. The model's emotional lean for condition ``c`` at the last token is
``lean_c = log sum_{t in T_c} p(t) - log sum_{t in T_baseline} p(t)``, with class token sets
``T_c`` built from a word list per label (see :func:`metric_tokens`). The softmax normaliser
cancels, so only the logits of the metric tokens are computed: the forward pass stops at
``ln_final.hook_out`` and the last position is multiplied with ``W_U[:, ids]`` (for Gemma's
262k vocabulary this skips the most expensive matmul of the model).

Recovery. ``(lean_patched - lean_corrupted) / (lean_clean - lean_corrupted)`` for both patch
directions: clean -> corrupted (run the neutral sentence, insert clean activations; 1 = the
patched site alone restores the emotional lean) and corrupted -> clean (run the emotional
sentence, insert neutral activations; 0 = the site is necessary). Denominators smaller than
``min_denominator`` nats are flagged (``small_denominator``).

Speed. Hooks are attached once per run and every forward pass reads its edits from a plan.
Patched forwards start from a KV cache of the unpatched prefix (positions before the first
patched token are unaffected by the patch), so each row only computes the tokens after it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from transformers import DynamicCache

from circuitflow import store
from circuitflow.core.errors import CircuitflowError, ConfigError
from circuitflow.core.hooks import StopForward, attach_bridge, run_to_stop
from circuitflow.core.layers import LayerSpec
from circuitflow.core.tokens import Tokenized, right_pad
from circuitflow.workflow import schema_backed

DIRECTIONS = ("clean_to_corrupted", "corrupted_to_clean")
POSITION_SETS = ("all", "non_emotion", "punctuation")
# treatments, their variance-matched controls (arm control), shuffled-label and isotropic ones
ABLATIONS = (
    "direction",
    "subspace",
    "matched_direction",
    "matched_subspace",
    "shuffled_mean_diff",
    "random_direction",
    "random_subspace",
)
ABLATION_MODES = ("mean", "zero")
HEAD_ABLATIONS = ("zero", "mean")  # of a head's hook_z at every position
ABLATION_CONTROLS = ("isotropic", "shuffled_mean_diff")  # beside the matched one, always run
DIRECTION_CONTRASTS = tuple(store.DIRECTION_VARIABLES)
SPLITS = ("test", "train", "all")
RESID_SITE = "hook_resid_pre"
HEAD_SITE = "attn.hook_z"


class PatchingError(CircuitflowError, RuntimeError):
    """Patching cannot run as configured; the message names model, key and fix."""


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
@schema_backed("patching")
class PatchConfig:
    """One model's patching run (``config['patching']``)."""

    n_frames: int
    split: str
    residual_layers: LayerSpec
    head_layers: LayerSpec
    head_frames: int | None  # None: every chosen frame
    head_ablations: tuple[str, ...]
    ablation_layers: LayerSpec
    ablation_samples: int
    direction_contrast: str
    direction_position: str
    subspace_k: int
    random_seeds: int
    ablation_controls: tuple[str, ...]
    control_samples: int
    refit_samples: int
    position_sets: tuple[str, ...]
    probe_position: str
    ablation_mode: str
    mean_samples: int
    min_denominator: float
    batch_size: int
    metric_words: Mapping[str, Sequence[str]]
    attribution: Mapping[str, object]
    seed: int = 0

    @classmethod
    def from_params(cls, settings: Mapping, seed: int) -> PatchConfig:
        """``config['patching']`` as a rule passes it (lists from YAML) and the run seed."""
        s = dict(settings)
        for key in ("position_sets", "ablation_controls", "head_ablations"):
            if key in s:
                s[key] = tuple(s[key])
        return cls(seed=seed, **s)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError(f"patching.split: {self.split!r} not in {', '.join(SPLITS)}")
        for key in ("n_frames", "ablation_samples", "subspace_k", "batch_size", "control_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"patching.{key}: must be >= 1, got {getattr(self, key)}")
        if self.head_frames is not None and self.head_frames < 0:
            raise ConfigError(f"patching.head_frames: must be >= 0, got {self.head_frames}")
        if self.random_seeds < 0 or self.mean_samples < 1:
            raise ConfigError("patching.random_seeds must be >= 0 and mean_samples >= 1")
        if not 0 <= self.refit_samples <= self.control_samples:
            raise ConfigError(
                f"patching.refit_samples: {self.refit_samples} not in 0..control_samples "
                f"({self.control_samples}); the refit probe's samples are control samples"
            )
        if self.direction_contrast not in DIRECTION_CONTRASTS:
            raise ConfigError(
                f"patching.direction_contrast: {self.direction_contrast!r} not in "
                f"{', '.join(DIRECTION_CONTRASTS)}"
            )
        bad = [c for c in self.ablation_controls if c not in ABLATION_CONTROLS]
        if bad:
            raise ConfigError(
                f"patching.ablation_controls: {bad[0]!r} not in {', '.join(ABLATION_CONTROLS)}"
            )
        bad = [k for k in self.head_ablations if k not in HEAD_ABLATIONS]
        if bad:
            raise ConfigError(
                f"patching.head_ablations: {bad[0]!r} not in {', '.join(HEAD_ABLATIONS)}"
            )
        for key in ("direction_position", "probe_position"):
            if getattr(self, key) not in store.POSITIONS:
                raise ConfigError(
                    f"patching.{key}: {getattr(self, key)!r} not in {', '.join(store.POSITIONS)}"
                )
        unknown = [p for p in self.position_sets if p not in POSITION_SETS]
        if unknown or not self.position_sets:
            raise ConfigError(
                f"patching.position_sets: {unknown or '[]'} not in {', '.join(POSITION_SETS)}"
            )
        if self.min_denominator < 0:
            raise ConfigError("patching.min_denominator must be >= 0")
        if self.ablation_mode not in ABLATION_MODES:
            raise ConfigError(
                f"patching.ablation_mode: {self.ablation_mode!r} not in {', '.join(ABLATION_MODES)}"
            )


# ---------------------------------------------------------------- metric
@dataclass(frozen=True)
class MetricTokens:
    """Token ids per label whose probability mass defines the lean."""

    labels: tuple[str, ...]
    baseline: str
    ids: dict[str, list[int]]
    tokens: dict[str, list[str]]
    fallback: dict[str, bool]
    dropped_shared: list[str]

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label != self.baseline)

    def flat_ids(self) -> list[int]:
        return [i for label in self.labels for i in self.ids[label]]

    def groups(self) -> dict[str, slice]:
        out, start = {}, 0
        for label in self.labels:
            out[label] = slice(start, start + len(self.ids[label]))
            start += len(self.ids[label])
        return out

    def to_json(self, model: str, words: Mapping[str, Sequence[str]]) -> dict:
        return {
            "model": model,
            "definition": "lean_c = logsumexp(logits[T_c]) - logsumexp(logits[T_baseline]) "
            "at the last token (log-probability mass ratio)",
            "baseline": self.baseline,
            "words": {k: list(v) for k, v in words.items()},
            "token_ids": self.ids,
            "tokens": self.tokens,
            "fallback_first_subtoken": self.fallback,
            "dropped_shared_tokens": self.dropped_shared,
        }


def metric_tokens(
    tokenizer, words: Mapping[str, Sequence[str]], labels: Sequence[str], baseline: str
) -> MetricTokens:
    """Map each label's words to single-token ids (`` word`` and `` Word``).

    A token claimed by two labels is dropped from both. A label none of whose words is a
    single token falls back to the first sub-token of each word (flagged)."""
    missing = [label for label in labels if label not in words]
    if missing:
        raise PatchingError(
            f"patching.metric_words: no words for label {missing[0]!r}; give a list per label "
            f"({', '.join(labels)})"
        )
    found: dict[str, dict[int, str]] = {}
    fallback: dict[str, bool] = {}
    for label in labels:
        ids: dict[int, str] = {}
        for word in words[label]:
            for variant in dict.fromkeys((" " + word, " " + word[:1].upper() + word[1:])):
                enc = tokenizer.encode(variant, add_special_tokens=False)
                if len(enc) == 1:
                    ids.setdefault(enc[0], tokenizer.convert_ids_to_tokens(enc[0]))
        fallback[label] = not ids
        if not ids:
            for word in words[label]:
                enc = tokenizer.encode(" " + word, add_special_tokens=False)
                if enc:
                    ids.setdefault(enc[0], tokenizer.convert_ids_to_tokens(enc[0]))
        found[label] = ids
    owners: dict[int, list[str]] = {}
    for label, ids in found.items():
        for i in ids:
            owners.setdefault(i, []).append(label)
    shared = sorted(i for i, o in owners.items() if len(o) > 1)
    dropped = []
    for i in shared:
        dropped.append(found[owners[i][0]][i])
        for label in owners[i]:
            found[label].pop(i)
    empty = [label for label in labels if not found[label]]
    if empty:
        raise PatchingError(
            f"patching.metric_words.{empty[0]}: no word maps to a token of this tokenizer; "
            "add words that are single tokens"
        )
    return MetricTokens(
        labels=tuple(labels),
        baseline=baseline,
        ids={label: sorted(found[label]) for label in labels},
        tokens={label: [found[label][i] for i in sorted(found[label])] for label in labels},
        fallback=fallback,
        dropped_shared=dropped,
    )


def lean(
    class_logits: Float[torch.Tensor, "rows n_ids"] | Float[np.ndarray, "rows n_ids"],
    metric: MetricTokens,
) -> Float[np.ndarray, "rows n_conditions"]:
    """``[rows, n_conditions]`` leans from the logits of ``metric.flat_ids()``."""
    return lean_tensor(torch.as_tensor(class_logits, dtype=torch.float64), metric).numpy()


def lean_tensor(
    class_logits: Float[torch.Tensor, "rows n_ids"], metric: MetricTokens
) -> Float[torch.Tensor, "rows n_conditions"]:
    """:func:`lean` on a tensor, differentiable (attribution patching takes its gradient)."""
    groups = metric.groups()
    base = torch.logsumexp(class_logits[:, groups[metric.baseline]], dim=1)
    cols = [torch.logsumexp(class_logits[:, groups[c]], dim=1) - base for c in metric.conditions]
    return torch.stack(cols, dim=1)


def readout_weights(
    bridge, readout_ids: Sequence[int], device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W_U[:, ids]`` and ``b_U[ids]`` (None without a bias), float32 on ``device``: the only
    unembedding columns the lean needs."""
    ids = torch.as_tensor(list(readout_ids), dtype=torch.long, device=device)
    b_U = getattr(bridge, "b_U", None)
    return bridge.W_U.detach()[:, ids].float(), None if b_U is None else b_U.detach()[ids].float()


def recovery(
    patched, clean, corrupted, min_denominator: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised recovery and the small-denominator flag (elementwise)."""
    patched, clean, corrupted = (
        np.asarray(v, dtype=np.float64) for v in (patched, clean, corrupted)
    )
    den = clean - corrupted
    small = np.abs(den) < max(min_denominator, 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = (patched - corrupted) / den
    return rec, small


# ---------------------------------------------------------------- engine
def project_out(
    x: torch.Tensor, basis: torch.Tensor, mask: torch.Tensor, center: torch.Tensor | None = None
) -> torch.Tensor:
    """Remove from ``x [B, T, d]`` its component in the row space of the orthonormal
    ``basis [B, k, d]`` (zero rows are no-ops) where ``mask [B, T]`` is 1.

    With ``center [d]`` the component is set to that of ``center`` instead of zero (mean
    ablation): the part of ``x`` that is constant across tokens is kept, which matters for
    models with large constant residual dimensions, where zeroing even a random direction
    moves every token by the same large offset."""
    coeff = torch.einsum("btd,bkd->btk", x if center is None else x - center, basis)
    return x - mask.unsqueeze(-1) * torch.einsum("btk,bkd->btd", coeff, basis)


class Patcher:
    """Hook functions attached once (``with patcher.attached(): ...``); every forward pass
    reads its edits from ``self.plan`` and returns the metric logits at each row's last token.

    Plan keys (all optional; positions are absolute, rows index the batch):
    ``("resid", layer)``: ``(rows, positions, values [n, d_model])`` set at hook_resid_pre;
    ``("project", layer)``: ``(basis [B, k, d_model], mask [B, T], center [d_model] | None)``
    projected out at hook_resid_pre (after any set; ``center``: mean ablation);
    ``("z", layer)``: ``(rows, positions, heads, values [n, d_head])`` set at attn.hook_z.
    """

    def __init__(
        self,
        bridge,
        readout_ids: Sequence[int],
        resid_layers: Sequence[int] = (),
        head_layers: Sequence[int] = (),
        extra_hooks: Sequence[tuple[str, Callable]] = (),  # (hook name, fn(x)) run after ours
        model_name: str = "model",
    ):
        self.bridge = bridge
        self.model_name = model_name
        self.device = next(bridge.parameters()).device
        self.n_layers = bridge.cfg.n_layers
        self.n_heads = bridge.cfg.n_heads
        self.d_model = bridge.cfg.d_model
        self.W_U, self.b_U = readout_weights(bridge, readout_ids, self.device)
        self.hf_config = bridge.original_model.config
        self.resid_layers = tuple(sorted(set(resid_layers)))
        self.head_layers = tuple(sorted(set(head_layers)))
        self.final_hook = store.hook_name(self.n_layers - 1, "hook_resid_post")
        self.extra_hooks = list(extra_hooks)
        self.plan: dict = {}
        self.record: set = set()
        self.recorded: dict = {}
        self.offset = 0
        self.last = None
        self.pool = None
        self.out = None
        self.pooled = None
        self.n_forward = 0
        self.n_tokens = 0

    # hooks ---------------------------------------------------------
    def fwd_hooks(self):
        hooks = [
            (store.hook_name(layer, RESID_SITE), lambda x, layer=layer: self._resid(x, layer))
            for layer in self.resid_layers
        ]
        hooks += [
            (store.hook_name(layer, HEAD_SITE), lambda x, layer=layer: self._z(x, layer))
            for layer in self.head_layers
        ]
        hooks += [(self.final_hook, self._final)]
        hooks += [("ln_final.hook_out", self._readout)]
        return hooks + self.extra_hooks

    def attached(self):
        """Context manager attaching :meth:`fwd_hooks` to the bridge."""
        return attach_bridge(self.bridge, self.fwd_hooks())

    def _resid(self, x, layer):
        edit = self.plan.get(("resid", layer))
        proj = self.plan.get(("project", layer))
        if edit is not None or proj is not None:
            x = x.clone()
        if edit is not None:
            rows, pos, values = edit
            x[rows, pos - self.offset] = values.to(x.dtype)
        if proj is not None:
            basis, mask, center = proj
            dtype = x.dtype
            x = project_out(
                x.float(), basis, mask[:, self.offset : self.offset + x.shape[1]], center
            )
            x = x.to(dtype)
        if ("resid", layer) in self.record:
            self.recorded[("resid", layer)] = x.detach().float().clone()
        return x if (edit is not None or proj is not None) else None

    def _z(self, x, layer):
        edit = self.plan.get(("z", layer))
        shape = x.shape
        if edit is not None:
            z = x.clone().reshape(shape[0], shape[1], self.n_heads, -1)
            rows, pos, heads, values = edit
            z[rows, pos - self.offset, heads] = values.to(z.dtype)
            x = z.reshape(shape)
        if ("z", layer) in self.record:
            self.recorded[("z", layer)] = (
                x.detach().float().reshape(shape[0], shape[1], self.n_heads, -1).clone()
            )
        return x if edit is not None else None

    def _final(self, x):
        if self.pool is not None:
            w = self.pool[:, self.offset : self.offset + x.shape[1]]
            self.pooled = torch.einsum("bt,btd->bd", w, x.float())
        return None

    def _readout(self, x):
        rows = torch.arange(x.shape[0], device=x.device)
        h = x[rows, self.last - self.offset].float()
        out = h @ self.W_U
        self.out = out if self.b_U is None else out + self.b_U
        raise StopForward

    # forward -------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        lengths: Sequence[int] | None = None,
        cache=None,
        offset: int = 0,
        plan: dict | None = None,
        record: set | None = None,
        pool: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``ids [B, T']`` (tokens from absolute position ``offset``; ``cache`` holds the
        positions before it) and return the readout logits ``[B, n_ids]`` at the last real
        token of each row (``lengths`` are absolute; default: all rows full)."""
        B, T = ids.shape
        lengths = [offset + T] * B if lengths is None else list(lengths)
        self.plan, self.record, self.recorded = plan or {}, record or set(), {}
        self.offset = offset
        self.last = torch.as_tensor(lengths, device=self.device) - 1
        self.pool, self.pooled, self.out = pool, None, None
        kwargs = {} if cache is None else {"past_key_values": cache, "use_cache": True}
        try:
            run_to_stop(self.bridge, ids.to(self.device), return_type=None, **kwargs)
        finally:
            self.plan = {}
        self.n_forward += 1
        self.n_tokens += B * T
        if self.out is None:
            raise PatchingError(f"model {self.model_name!r}: hook ln_final.hook_out never fired")
        return self.out

    def prefix_cache(self, ids: np.ndarray, start: int):
        """KV cache of the unpatched tokens ``ids[:start]`` (batch 1)."""
        cache = DynamicCache(config=self.hf_config)
        if start > 0:
            self.forward(torch.as_tensor(ids[None, :start]), cache=cache)
        return cache

    @staticmethod
    def expand(cache, rows: int):
        if cache is None:
            return None
        out = copy.deepcopy(cache)
        out.batch_repeat_interleave(rows)
        return out


def record_activations(
    patcher: Patcher, toks: Sequence[Tokenized], pad_id: int
) -> tuple[list[dict], np.ndarray]:
    """One unpatched forward: per sample ``{("resid", l): [T, d], ("z", l): [T, H, dh]}`` at
    the patcher's layers, and the readout logits ``[n, n_ids]``."""
    ids, lengths = right_pad([t.ids for t in toks], pad_id)
    want = {("resid", layer) for layer in patcher.resid_layers}
    want |= {("z", layer) for layer in patcher.head_layers}
    logits = patcher.forward(ids, lengths, record=want)
    acts = [
        {key: value[i, :n].cpu() for key, value in patcher.recorded.items()}
        for i, n in enumerate(lengths)
    ]
    return acts, logits.cpu().numpy()


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
