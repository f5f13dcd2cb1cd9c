"""Activation patching on counterfactual frames, attention-head patching and ablation, and
directional ablation of emotion directions (the test of Tigges et al. 2023, "Linear
Representations of Sentiment in Large Language Models").

Metric. The model's emotional lean for condition ``c`` at the last token is
``lean_c = log sum_{t in T_c} p(t) - log sum_{t in T_baseline} p(t)``, with class token sets
``T_c`` built from a word list per label (see :func:`metric_tokens`). The softmax normaliser
cancels, so only the logits of the metric tokens are computed: the forward pass stops at
``ln_final.hook_out`` and the last position is multiplied with ``W_U[:, ids]`` (for Gemma's
262k vocabulary this skips the most expensive matmul of the model).

Pairs and positions. A counterfactual frame has one sentence per label that differ only in
the emotion phrase. Each pair is (clean = frame.<condition>, corrupted = frame.<baseline>).
Token positions are aligned by role: tokens before the phrase (the prefix) are identical in
both versions and, under causal attention, so are their activations: they are never patched
(patching them is exactly a no-op). Tokens after the phrase (the suffix) are aligned from the
end. Phrase tokens are patched one by one, and as one block, only when both phrases have the
same number of tokens (``phrase_equal``); otherwise only suffix positions are patched. Pairs
whose prefix or suffix token ids differ (a tokenizer merging across the phrase boundary) are
excluded and counted.

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
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuitflow import store
from circuitflow.extract import Tokenized, tokenize

DIRECTIONS = ("clean_to_corrupted", "corrupted_to_clean")
POSITION_SETS = ("all", "non_emotion", "punctuation")
ABLATIONS = ("direction", "subspace", "random_direction", "random_subspace")
ABLATION_MODES = ("mean", "zero")
SPLITS = ("test", "train", "all")
RESID_SITE = "hook_resid_pre"
HEAD_SITE = "attn.hook_z"

# Class-indicative continuation words; each becomes " word" / " Word" where that is one token.
DEFAULT_METRIC_WORDS: dict[str, list[str]] = {
    "gratitude": ["thanks", "thank", "grateful", "appreciate", "appreciated", "thankful"],
    "anger": ["angry", "furious", "annoyed", "outraged", "unacceptable", "livid", "frustrated"],
    "apology": ["sorry", "apologize", "apologise", "apologies", "apology", "regret", "forgive"],
    "neutral": ["please", "note", "details", "information", "update", "attached", "schedule"],
}


class PatchingError(RuntimeError):
    """Patching cannot run as configured; the message names model, key and fix."""


class _Stop(Exception):
    """Raised by the readout hook: nothing after the final norm is needed."""


# ---------------------------------------------------------------- config
LayerSpec = str | int | Sequence[float]


def select_layers(spec: LayerSpec, n_layers: int, key: str = "layers") -> tuple[int, ...]:
    """Block indices from ``"all"``, a count of evenly spaced layers (first and last included)
    or a list of relative depths in [0, 1] (0 = first block, 1 = last block)."""
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"patching.{key}: {spec!r} is not 'all', a count or a depth list")
        return tuple(range(n_layers))
    if isinstance(spec, bool):
        raise ValueError(f"patching.{key}: {spec!r} is not 'all', a count or a depth list")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"patching.{key}: count {spec} must be >= 1")
        if spec >= n_layers:
            return tuple(range(n_layers))
        return tuple(int(i) for i in np.unique(np.round(np.linspace(0, n_layers - 1, spec))))
    depths = [float(d) for d in spec]
    bad = [d for d in depths if not 0.0 <= d <= 1.0]
    if bad or not depths:
        raise ValueError(f"patching.{key}: relative depths must lie in [0, 1], got {list(spec)}")
    return tuple(sorted({int(round(d * (n_layers - 1))) for d in depths}))


@dataclass(frozen=True)
class PatchConfig:
    """One model's patching run (``config['patching']``)."""

    n_frames: int = 8
    split: str = "test"
    residual_layers: Any = 10
    head_layers: Any = 4
    head_frames: int | None = 4  # None: every chosen frame
    ablation_layers: Any = "all"
    ablation_samples: int = 12
    direction_position: str = "mean"
    subspace_k: int = 3
    random_seeds: int = 3
    position_sets: tuple[str, ...] = ("all", "non_emotion")
    probe_position: str = "last"
    ablation_mode: str = "mean"
    mean_samples: int = 48
    min_denominator: float = 0.5
    batch_size: int = 64
    metric_words: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_METRIC_WORDS)
    )
    seed: int = 0

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"patching.split: {self.split!r} not in {', '.join(SPLITS)}")
        for key in ("n_frames", "ablation_samples", "subspace_k", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"patching.{key}: must be >= 1, got {getattr(self, key)}")
        if self.head_frames is not None and self.head_frames < 0:
            raise ValueError(f"patching.head_frames: must be >= 0, got {self.head_frames}")
        if self.random_seeds < 0 or self.mean_samples < 1:
            raise ValueError("patching.random_seeds must be >= 0 and mean_samples >= 1")
        for key in ("direction_position", "probe_position"):
            if getattr(self, key) not in store.POSITIONS:
                raise ValueError(
                    f"patching.{key}: {getattr(self, key)!r} not in {', '.join(store.POSITIONS)}"
                )
        unknown = [p for p in self.position_sets if p not in POSITION_SETS]
        if unknown or not self.position_sets:
            raise ValueError(
                f"patching.position_sets: {unknown or '[]'} not in {', '.join(POSITION_SETS)}"
            )
        if self.min_denominator < 0:
            raise ValueError("patching.min_denominator must be >= 0")
        if self.ablation_mode not in ABLATION_MODES:
            raise ValueError(
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


def lean(class_logits: torch.Tensor | np.ndarray, metric: MetricTokens) -> np.ndarray:
    """``[rows, n_conditions]`` leans from the logits of ``metric.flat_ids()``."""
    x = torch.as_tensor(class_logits, dtype=torch.float64)
    groups = metric.groups()
    base = torch.logsumexp(x[:, groups[metric.baseline]], dim=1)
    cols = [torch.logsumexp(x[:, groups[c]], dim=1) - base for c in metric.conditions]
    return torch.stack(cols, dim=1).numpy()


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
        extra_hooks: Sequence = (),
        model_name: str = "model",
    ):
        self.bridge = bridge
        self.model_name = model_name
        self.device = next(bridge.parameters()).device
        self.n_layers = bridge.cfg.n_layers
        self.n_heads = bridge.cfg.n_heads
        self.d_model = bridge.cfg.d_model
        ids = torch.as_tensor(list(readout_ids), dtype=torch.long, device=self.device)
        self.W_U = bridge.W_U.detach()[:, ids].float()
        b_U = getattr(bridge, "b_U", None)
        self.b_U = None if b_U is None else b_U.detach()[ids].float()
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
            (store.hook_name(layer, RESID_SITE), lambda x, hook, layer=layer: self._resid(x, layer))
            for layer in self.resid_layers
        ]
        hooks += [
            (store.hook_name(layer, HEAD_SITE), lambda x, hook, layer=layer: self._z(x, layer))
            for layer in self.head_layers
        ]
        hooks += [(self.final_hook, lambda x, hook: self._final(x))]
        hooks += [("ln_final.hook_out", lambda x, hook: self._readout(x))]
        return hooks + self.extra_hooks

    def attached(self):
        return self.bridge.hooks(fwd_hooks=self.fwd_hooks())

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
        raise _Stop

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
            self.bridge(ids.to(self.device), return_type=None, **kwargs)
        except _Stop:
            pass
        finally:
            self.plan = {}
        self.n_forward += 1
        self.n_tokens += B * T
        if self.out is None:
            raise PatchingError(f"model {self.model_name!r}: hook ln_final.hook_out never fired")
        return self.out

    def prefix_cache(self, ids: np.ndarray, start: int):
        """KV cache of the unpatched tokens ``ids[:start]`` (batch 1)."""
        from transformers import DynamicCache

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


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """Right-padded ``[B, T]`` ids (causal attention: real tokens never see the padding)."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s)
    return out, [len(s) for s in seqs]


def record_activations(
    patcher: Patcher, toks: Sequence[Tokenized], pad_id: int
) -> tuple[list[dict], np.ndarray]:
    """One unpatched forward: per sample ``{("resid", l): [T, d], ("z", l): [T, H, dh]}`` at
    the patcher's layers, and the readout logits ``[n, n_ids]``."""
    ids, lengths = pad_batch([t.ids for t in toks], pad_id)
    want = {("resid", layer) for layer in patcher.resid_layers}
    want |= {("z", layer) for layer in patcher.head_layers}
    logits = patcher.forward(ids, lengths, record=want)
    acts = [
        {key: value[i, :n].cpu() for key, value in patcher.recorded.items()}
        for i, n in enumerate(lengths)
    ]
    return acts, logits.cpu().numpy()


# ---------------------------------------------------------------- pairs and positions
@dataclass(frozen=True)
class Pair:
    """A counterfactual pair: clean (condition) and corrupted (baseline) of one frame."""

    frame_id: str
    condition: str
    clean_id: str
    corrupted_id: str
    clean: Tokenized
    corrupted: Tokenized
    n_prefix: int
    n_suffix: int

    @property
    def phrase_equal(self) -> bool:
        return len(self.clean.span) == len(self.corrupted.span)


@dataclass(frozen=True)
class Site:
    """Positions patched together, in the destination and the source sequence."""

    position: str  # phrase_first | phrase_mid | phrase_last | phrase_block | post_phrase | ...
    role: str  # phrase | suffix
    dest: np.ndarray
    src: np.ndarray
    offset_from_end: int


def align_pair(frame_id: str, condition: str, clean_id, corrupted_id, clean, corrupted) -> Pair:
    """Check prefix/suffix token identity and return the pair; raises PatchingError if a
    tokenizer merged tokens across the phrase boundary differently in the two versions."""
    n_pre = int(clean.span[0])
    n_suf_c = len(clean.ids) - int(clean.span[-1]) - 1
    n_suf_n = len(corrupted.ids) - int(corrupted.span[-1]) - 1
    if (
        n_pre != int(corrupted.span[0])
        or not np.array_equal(clean.ids[:n_pre], corrupted.ids[:n_pre])
        or n_suf_c != n_suf_n
        or (n_suf_c and not np.array_equal(clean.ids[-n_suf_c:], corrupted.ids[-n_suf_n:]))
    ):
        raise PatchingError(f"frame {frame_id}: {clean_id} and {corrupted_id} misalign")
    return Pair(frame_id, condition, clean_id, corrupted_id, clean, corrupted, n_pre, n_suf_c)


def pair_sites(pair: Pair, direction: str) -> tuple[list[Site], int]:
    """Patched sites for ``direction`` and the first destination position they touch."""
    dest, src = (
        (pair.corrupted, pair.clean) if direction == DIRECTIONS[0] else (pair.clean, pair.corrupted)
    )
    Td, Ts = len(dest.ids), len(src.ids)
    sites = []
    if pair.phrase_equal:
        n = len(dest.span)
        for i in range(n):
            name = "phrase_last" if i == n - 1 else ("phrase_first" if i == 0 else "phrase_mid")
            p = pair.n_prefix + i
            sites.append(Site(name, "phrase", np.array([p]), np.array([p]), p - Td))
        if n > 1:
            block = np.arange(pair.n_prefix, pair.n_prefix + n)
            sites.append(Site("phrase_block", "phrase", block, block, pair.n_prefix - Td))
    for j in range(pair.n_suffix, 0, -1):
        name = "last" if j == 1 else ("post_phrase" if j == pair.n_suffix else "suffix_mid")
        sites.append(Site(name, "suffix", np.array([Td - j]), np.array([Ts - j]), -j))
    start = pair.n_prefix if pair.phrase_equal else Td - pair.n_suffix
    return sites, start


def frame_pairs(
    rows: Sequence[dict],
    toks: Mapping[str, Tokenized],
    frame_ids: Sequence[str],
    conditions: Sequence[str],
    baseline: str,
) -> tuple[list[Pair], list[str]]:
    """Aligned pairs of the chosen frames and the ids of pairs that could not be aligned."""
    by_frame: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.get("frame_id"):
            by_frame.setdefault(r["frame_id"], {})[r["label"]] = r["sample_id"]
    pairs, excluded = [], []
    for fid in frame_ids:
        versions = by_frame[fid]
        if baseline not in versions:
            continue
        for c in conditions:
            if c not in versions:
                continue
            a, b = versions[c], versions[baseline]
            try:
                pairs.append(align_pair(fid, c, a, b, toks[a], toks[b]))
            except PatchingError:
                excluded.append(a)
    return pairs, excluded


def choose_frames(rows: Sequence[dict], split: str, n: int, labels: Sequence[str], seed: int):
    """Up to ``n`` frames of ``split`` that have every label, seeded, in id order."""
    by_frame: dict[str, set] = {}
    splits: dict[str, str] = {}
    for r in rows:
        if r.get("frame_id"):
            by_frame.setdefault(r["frame_id"], set()).add(r["label"])
            splits[r["frame_id"]] = r["split"]
    ids = sorted(
        f for f, have in by_frame.items() if set(labels) <= have and split in ("all", splits[f])
    )
    if not ids:
        raise PatchingError(
            f"patching: the dataset has no counterfactual frame in split {split!r} with every "
            f"label ({', '.join(labels)}); set patching.split or add frames"
        )
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [ids[i] for i in sorted(pick)]


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------- residual patching
def patch_residual(
    patcher: Patcher,
    pairs: Sequence[Pair],
    acts: Mapping[str, dict],
    leans: Mapping[str, np.ndarray],
    metric: MetricTokens,
    layers: Sequence[int],
    batch_size: int = 64,
    min_denominator: float = 0.5,
    tokenizer=None,
    progress=None,
) -> pd.DataFrame:
    """Per pair x direction x layer x site: lean after patching hook_resid_pre."""
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    out = []
    caches: dict = {}
    for pair in pairs:
        ci = cond_index[pair.condition]
        lean_clean = leans[pair.clean_id][ci]
        lean_corr = leans[pair.corrupted_id][ci]
        for direction in DIRECTIONS:
            dest_id, src_id = (
                (pair.corrupted_id, pair.clean_id)
                if direction == DIRECTIONS[0]
                else (pair.clean_id, pair.corrupted_id)
            )
            dest = pair.corrupted if direction == DIRECTIONS[0] else pair.clean
            sites, start = pair_sites(pair, direction)
            key = (dest_id, start)
            if key not in caches:
                caches[key] = patcher.prefix_cache(dest.ids, start)
            jobs = [(layer, site) for layer in layers for site in sites]
            for chunk in _chunks(jobs, batch_size):
                plan = {}
                for layer in layers:
                    sel = [(r, s) for r, (l_, s) in enumerate(chunk) if l_ == layer]
                    if not sel:
                        continue
                    rows = np.concatenate([[r] * len(s.dest) for r, s in sel])
                    pos = np.concatenate([s.dest for _, s in sel])
                    src_pos = np.concatenate([s.src for _, s in sel])
                    values = acts[src_id][("resid", layer)][src_pos]
                    plan[("resid", layer)] = (
                        torch.as_tensor(rows, device=patcher.device),
                        torch.as_tensor(pos, device=patcher.device),
                        values.to(patcher.device),
                    )
                ids = torch.as_tensor(dest.ids[start:])[None].repeat(len(chunk), 1)
                logits = patcher.forward(
                    ids, cache=patcher.expand(caches[key], len(chunk)), offset=start, plan=plan
                )
                patched = lean(logits.cpu(), metric)[:, ci]
                for (layer, site), value in zip(chunk, patched, strict=True):
                    out.append(
                        {
                            "frame_id": pair.frame_id,
                            "sample_id": pair.clean_id,
                            "condition": pair.condition,
                            "clean_id": pair.clean_id,
                            "corrupted_id": pair.corrupted_id,
                            "direction": direction,
                            "layer": layer,
                            "hook": store.hook_name(layer, RESID_SITE),
                            "position": site.position,
                            "role": site.role,
                            "token_index": int(site.dest[0]),
                            "n_positions": len(site.dest),
                            "offset_from_end": site.offset_from_end,
                            "token": _token(tokenizer, dest.ids, site.dest),
                            "phrase_equal": pair.phrase_equal,
                            "lean_clean": lean_clean,
                            "lean_corrupted": lean_corr,
                            "lean_patched": float(value),
                        }
                    )
        caches = {k: v for k, v in caches.items() if k[0] in (pair.corrupted_id,)}
        if progress is not None:
            progress.update(1)
    table = pd.DataFrame(out)
    if len(table):
        rec, small = recovery(
            table["lean_patched"], table["lean_clean"], table["lean_corrupted"], min_denominator
        )
        table["recovery"], table["small_denominator"] = rec, small
    return table


def _token(tokenizer, ids: np.ndarray, positions: np.ndarray) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode(ids[positions].tolist())


# ---------------------------------------------------------------- heads
def mean_head_outputs(
    patcher: Patcher, toks: Sequence[Tokenized], pad_id: int, batch_size: int = 32
) -> dict[int, torch.Tensor]:
    """Mean ``attn.hook_z`` per layer and head ``[H, d_head]`` over the real non-BOS tokens."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for chunk in _chunks(list(toks), batch_size):
        acts, _ = record_activations(patcher, chunk, pad_id)
        for t, a in zip(chunk, acts, strict=True):
            for layer in patcher.head_layers:
                z = a[("z", layer)][t.first :].sum(0)
                sums[layer] = sums.get(layer, 0) + z
            count += len(t.ids) - t.first
    return {layer: s / max(count, 1) for layer, s in sums.items()}


def patch_heads(
    patcher: Patcher,
    pairs: Sequence[Pair],
    acts: Mapping[str, dict],
    leans: Mapping[str, np.ndarray],
    metric: MetricTokens,
    layers: Sequence[int],
    mean_z: Mapping[int, torch.Tensor],
    batch_size: int = 64,
    min_denominator: float = 0.5,
    progress=None,
) -> pd.DataFrame:
    """Per pair x layer x head: lean after patching the head's ``hook_z`` clean -> corrupted at
    the suffix positions, and after zero / mean ablation of the head at every position of
    the clean sentence."""
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    heads = [(layer, h) for layer in layers for h in range(patcher.n_heads)]
    dev = patcher.device
    out = []
    for pair in pairs:
        ci = cond_index[pair.condition]
        values: dict[tuple[int, int], dict] = {lh: {} for lh in heads}
        # patching: run the corrupted sentence from the first suffix token
        dest, Td, Ts = pair.corrupted, len(pair.corrupted.ids), len(pair.clean.ids)
        if pair.n_suffix:
            start = Td - pair.n_suffix
            cache = patcher.prefix_cache(dest.ids, start)
            dpos = np.arange(start, Td)
            spos = np.arange(Ts - pair.n_suffix, Ts)
            for chunk in _chunks(heads, batch_size):
                plan = {}
                for layer in layers:
                    sel = [(r, h) for r, (l_, h) in enumerate(chunk) if l_ == layer]
                    if not sel:
                        continue
                    z = acts[pair.clean_id][("z", layer)]  # [T, H, dh]
                    plan[("z", layer)] = (
                        torch.as_tensor(np.repeat([r for r, _ in sel], len(dpos)), device=dev),
                        torch.as_tensor(np.tile(dpos, len(sel)), device=dev),
                        torch.as_tensor(np.repeat([h for _, h in sel], len(dpos)), device=dev),
                        torch.cat([z[spos, h] for _, h in sel]).to(dev),
                    )
                ids = torch.as_tensor(dest.ids[start:])[None].repeat(len(chunk), 1)
                logits = patcher.forward(
                    ids, cache=patcher.expand(cache, len(chunk)), offset=start, plan=plan
                )
                for lh, v in zip(chunk, lean(logits.cpu(), metric)[:, ci], strict=True):
                    values[lh]["lean_patched"] = float(v)
        # ablation: run the clean sentence with the head zeroed / set to its neutral mean
        clean = pair.clean
        T = len(clean.ids)
        jobs = [(kind, lh) for kind in ("zero", "mean") for lh in heads]
        for chunk in _chunks(jobs, batch_size):
            plan = {}
            for layer in layers:
                sel = [(r, kind, h) for r, (kind, (l_, h)) in enumerate(chunk) if l_ == layer]
                if not sel:
                    continue
                vals = [
                    torch.zeros(T, mean_z[layer].shape[-1])
                    if kind == "zero"
                    else mean_z[layer][h].expand(T, -1)
                    for _, kind, h in sel
                ]
                plan[("z", layer)] = (
                    torch.as_tensor(np.repeat([r for r, _, _ in sel], T), device=dev),
                    torch.as_tensor(np.tile(np.arange(T), len(sel)), device=dev),
                    torch.as_tensor(np.repeat([h for _, _, h in sel], T), device=dev),
                    torch.cat(vals).to(dev),
                )
            ids = torch.as_tensor(clean.ids)[None].repeat(len(chunk), 1)
            logits = patcher.forward(ids, plan=plan)
            for (kind, lh), v in zip(chunk, lean(logits.cpu(), metric)[:, ci], strict=True):
                values[lh][f"lean_{kind}"] = float(v)
        lean_clean = leans[pair.clean_id][ci]
        lean_corr = leans[pair.corrupted_id][ci]
        for (layer, h), v in values.items():
            out.append(
                {
                    "frame_id": pair.frame_id,
                    "sample_id": pair.clean_id,
                    "condition": pair.condition,
                    "clean_id": pair.clean_id,
                    "corrupted_id": pair.corrupted_id,
                    "layer": layer,
                    "head": h,
                    "hook": store.hook_name(layer, HEAD_SITE),
                    "patch_positions": "suffix",
                    "n_patch_positions": pair.n_suffix,
                    "lean_clean": lean_clean,
                    "lean_corrupted": lean_corr,
                    "lean_patched": v.get("lean_patched", np.nan),
                    "lean_zero": v["lean_zero"],
                    "lean_mean": v["lean_mean"],
                }
            )
        if progress is not None:
            progress.update(1)
    table = pd.DataFrame(out)
    if len(table):
        clean, corr = table["lean_clean"], table["lean_corrupted"]
        table["recovery"], table["small_denominator"] = recovery(
            table["lean_patched"], clean, corr, min_denominator
        )
        # fraction of the clean-vs-corrupted lean that the ablation removes (1 = all of it)
        for kind in ("zero", "mean"):
            table[f"{kind}_effect"] = 1.0 - recovery(table[f"lean_{kind}"], clean, corr)[0]
            table[f"{kind}_delta"] = table[f"lean_{kind}"] - clean
    return table


def rank_heads(heads: pd.DataFrame) -> pd.DataFrame:
    """Screening ranking per condition (and ``all``): mean recovery and ablation effects per
    head over pairs without a small denominator; ``rank`` orders by mean patching recovery."""
    ok = heads[~heads["small_denominator"].astype(bool)]
    frames = []
    for condition, part in [("all", ok), *ok.groupby("condition", sort=True)]:
        g = part.groupby(["layer", "head", "hook"], sort=True)
        t = g.agg(
            n=("recovery", "size"),
            mean_recovery=("recovery", "mean"),
            sd_recovery=("recovery", "std"),
            mean_zero_effect=("zero_effect", "mean"),
            mean_mean_effect=("mean_effect", "mean"),
            mean_zero_delta=("zero_delta", "mean"),
            mean_mean_delta=("mean_delta", "mean"),
        ).reset_index()
        t["mean_abs_recovery"] = g["recovery"].apply(lambda s: s.abs().mean()).to_numpy()
        t.insert(0, "condition", condition)
        t["rank"] = t["mean_recovery"].rank(ascending=False, method="first").astype(int)
        t["rank_zero"] = t["mean_zero_effect"].rank(ascending=False, method="first").astype(int)
        t["rank_mean"] = t["mean_mean_effect"].rank(ascending=False, method="first").astype(int)
        frames.append(t.sort_values("rank"))
    n_small = int(heads["small_denominator"].astype(bool).sum()) if len(heads) else 0
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["n_small_denominator_rows"] = n_small
    return out


# ---------------------------------------------------------------- directional ablation
def orthonormal_rows(vectors: np.ndarray, k: int) -> np.ndarray:
    """``[k, d]`` orthonormal basis of the span of ``vectors`` (zero rows pad rank < k)."""
    v = np.asarray(vectors, dtype=np.float64).reshape(-1, vectors.shape[-1])
    v = v[np.linalg.norm(v, axis=1) > 1e-12]
    out = np.zeros((k, vectors.shape[-1]))
    if len(v):
        q, r = np.linalg.qr(v.T)
        keep = np.abs(np.diag(r)) > 1e-8 * np.abs(np.diag(r)).max()
        q = q[:, keep][:, :k].T
        out[: len(q)] = q
    return out


def random_bases(n_layers: int, k: int, d: int, seed: int) -> np.ndarray:
    """``[n_layers, k, d]`` isotropic random orthonormal bases, one per layer."""
    rng = np.random.default_rng(seed)
    return np.stack([orthonormal_rows(rng.normal(size=(k, d)), k) for _ in range(n_layers)])


def position_mask(tokenizer, tok: Tokenized, kind: str) -> np.ndarray:
    """1 where ``kind`` ablates: every token (``all``), tokens outside the emotion phrase
    (``non_emotion``: names, function words, punctuation), punctuation-only tokens.

    BOS is never ablated: its activations do not depend on the input (causal attention), so
    projecting there removes no information about the sample, and its large-norm residual
    (the attention sink) makes any edit there a disruption of every later position."""
    T = len(tok.ids)
    mask = np.ones(T)
    mask[: tok.first] = 0
    if kind == "all":
        return mask
    mask[tok.span] = 0
    if kind == "non_emotion":
        return mask
    if kind == "punctuation":
        punct = set(string.punctuation)
        for i in range(tok.first, T):
            text = tokenizer.decode([int(tok.ids[i])]).strip()
            if not (text and all(ch in punct for ch in text)):
                mask[i] = 0
        return mask
    raise ValueError(f"patching.position_sets: {kind!r} not in {', '.join(POSITION_SETS)}")


def pool_weights(tok: Tokenized, position: str) -> np.ndarray:
    """Weights over positions that reproduce the activation store's pooled positions."""
    w = np.zeros(len(tok.ids))
    if position == "last":
        w[-1] = 1
    elif position == "trigger_mean":
        w[tok.span] = 1 / len(tok.span)
    elif position == "mean":
        w[tok.first :] = 1 / (len(tok.ids) - tok.first)
    else:
        raise ValueError(f"position {position!r} not in {', '.join(store.POSITIONS)}")
    return w


@dataclass
class Probe:
    """Standardised logistic regression, condition (1) vs baseline (0)."""

    model: Any

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, seed: int = 0) -> Probe:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if len(np.unique(y)) < 2:
            raise PatchingError("probe: training data has a single class; add train samples")
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
        model.fit(np.asarray(X, dtype=np.float64), np.asarray(y))
        return cls(model)

    def prob(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(np.asarray(X, dtype=np.float64))[:, 1]


@dataclass(frozen=True)
class Ablation:
    """One projection applied at the chosen layers: ``bases [n_layers_ablated, k, d]``."""

    name: str
    k: int
    seed: int
    bases: np.ndarray


def ablation_set(
    directions: Mapping[int, np.ndarray],
    subspaces: Mapping[int, np.ndarray],
    layers: Sequence[int],
    k: int,
    n_random: int,
    d_model: int,
    seed: int,
) -> list[Ablation]:
    """The emotion direction, its k-dim subspace, and random controls of dimension 1 and k."""
    out = [
        Ablation(
            "direction", 1, -1, np.stack([orthonormal_rows(directions[i][None], 1) for i in layers])
        ),
        Ablation(
            "subspace", k, -1, np.stack([orthonormal_rows(subspaces[i][:k], k) for i in layers])
        ),
    ]
    for r in range(n_random):
        out.append(
            Ablation("random_direction", 1, r, random_bases(len(layers), 1, d_model, seed + r))
        )
        out.append(
            Ablation(
                "random_subspace", k, r, random_bases(len(layers), k, d_model, seed + 1000 + r)
            )
        )
    return out


def run_final(
    patcher: Patcher,
    toks: Sequence[Tokenized],
    pad_id: int,
    probe_position: str,
    layers: Sequence[int] = (),
    bases: Sequence[np.ndarray] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    centers: Mapping[int, np.ndarray] | None = None,
    record: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Final-layer pooled residual ``[n, d]`` and readout logits for one batch, with the
    per-row ``bases[i] [n_layers, k, d]`` projected out at ``layers`` where ``masks[i]``
    (to the component of ``centers[layer]`` when given: mean ablation). Residuals at the
    ``record`` layers are left in ``patcher.recorded``."""
    ids, lengths = pad_batch([t.ids for t in toks], pad_id)
    B, T = ids.shape
    dev = patcher.device
    pool = np.zeros((B, T))
    for i, t in enumerate(toks):
        pool[i, : len(t.ids)] = pool_weights(t, probe_position)
    plan = {}
    if bases is not None:
        k = max(b.shape[1] for b in bases)
        stacked = np.zeros((B, len(layers), k, patcher.d_model))
        mask = np.zeros((B, T))
        for i, (b, m) in enumerate(zip(bases, masks, strict=True)):
            stacked[i, :, : b.shape[1]] = b
            mask[i, : len(m)] = m
        stacked_t = torch.as_tensor(stacked, dtype=torch.float32, device=dev)
        mask_t = torch.as_tensor(mask, dtype=torch.float32, device=dev)
        for j, layer in enumerate(layers):
            center = None
            if centers is not None:
                center = torch.as_tensor(centers[layer], dtype=torch.float32, device=dev)
            plan[("project", layer)] = (stacked_t[:, j], mask_t, center)
    logits = patcher.forward(
        ids,
        lengths,
        plan=plan,
        record={("resid", layer) for layer in record},
        pool=torch.as_tensor(pool, dtype=torch.float32, device=dev),
    )
    return patcher.pooled.cpu().numpy(), logits.cpu().numpy()


def directional_ablation(
    patcher: Patcher,
    samples: Sequence[dict],
    toks: Mapping[str, Tokenized],
    metric: MetricTokens,
    probes: Mapping[str, Probe],
    ablations: Mapping[str, list[Ablation]],
    layers: Sequence[int],
    position_sets: Sequence[str],
    probe_position: str,
    pad_id: int,
    tokenizer,
    batch_size: int = 64,
    progress=None,
    mode: str = "mean",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per test sample x condition x ablation x position set: probe probability of the
    condition and lean, beside the unablated baseline (rows with ``ablation == "none"``).

    ``mode="mean"`` sets the ablated component to its mean over the samples' tokens (BOS
    excluded) at each layer; ``"zero"`` projects it out. Returns the table and the unablated
    pooled features (for checks)."""
    if mode not in ABLATION_MODES:
        raise PatchingError(f"patching.ablation_mode: {mode!r} not in {', '.join(ABLATION_MODES)}")
    cond_index = {c: i for i, c in enumerate(metric.conditions)}
    order = sorted(range(len(samples)), key=lambda i: (len(toks[samples[i]["sample_id"]].ids), i))
    feats = np.zeros((len(samples), patcher.d_model))
    leans_base = np.zeros((len(samples), len(metric.conditions)))
    # mean ablation: the unablated residual's token mean at each ablated layer
    mean_layers = tuple(layers) if mode == "mean" else ()
    sums = {layer: torch.zeros(patcher.d_model, dtype=torch.float64) for layer in mean_layers}
    n_tok = 0
    for chunk in _chunks(order, batch_size):
        ts = [toks[samples[i]["sample_id"]] for i in chunk]
        f, lg = run_final(patcher, ts, pad_id, probe_position, record=mean_layers)
        feats[chunk] = f
        leans_base[chunk] = lean(lg, metric)
        valid = torch.zeros(len(ts), max(len(t.ids) for t in ts))
        for row, t in enumerate(ts):
            valid[row, t.first : len(t.ids)] = 1
        n_tok += int(valid.sum())
        for layer in mean_layers:
            x = patcher.recorded[("resid", layer)].cpu().double()
            sums[layer] += torch.einsum("bt,btd->d", valid.double(), x)
    centers = None
    if mode == "mean":
        centers = {layer: (sums[layer] / max(n_tok, 1)).float().numpy() for layer in layers}
    out = []
    for c, abls in ablations.items():
        ci = cond_index[c]
        members = [i for i, r in enumerate(samples) if r["label"] in (c, metric.baseline)]
        prob_base = probes[c].prob(feats[members])
        base = {}
        for j, i in enumerate(members):
            r = samples[i]
            y = int(r["label"] == c)
            base[i] = (prob_base[j], leans_base[i, ci])
            out.append(_ablation_row(r, c, y, "none", 0, -1, "none", 0, *base[i], *base[i]))
        jobs = [(i, a, kind) for a in range(len(abls)) for kind in position_sets for i in members]
        jobs.sort(key=lambda j: len(toks[samples[j[0]]["sample_id"]].ids))
        for chunk in _chunks(jobs, batch_size):
            ts = [toks[samples[i]["sample_id"]] for i, _, _ in chunk]
            masks = [
                position_mask(tokenizer, t, kind) for t, (_, _, kind) in zip(ts, chunk, strict=True)
            ]
            f, lg = run_final(
                patcher,
                ts,
                pad_id,
                probe_position,
                layers,
                [abls[a].bases for _, a, _ in chunk],
                masks,
                centers,
            )
            probs = probes[c].prob(f)
            leans_ = lean(lg, metric)[:, ci]
            for (i, a, kind), m, p, v in zip(chunk, masks, probs, leans_, strict=True):
                r, abl = samples[i], abls[a]
                out.append(
                    _ablation_row(
                        r,
                        c,
                        int(r["label"] == c),
                        abl.name,
                        abl.k,
                        abl.seed,
                        kind,
                        int(m.sum()),
                        p,
                        v,
                        *base[i],
                    )
                )
            if progress is not None:
                progress.update(len(chunk))
    return pd.DataFrame(out), feats


def _ablation_row(r, c, y, name, k, seed, kind, n_pos, prob, lean_, prob_base, lean_base):
    return {
        "sample_id": r["sample_id"],
        "label": r["label"],
        "frame_id": r.get("frame_id", ""),
        "condition": c,
        "is_condition": bool(y),
        "ablation": name,
        "k": k,
        "seed": seed,
        "positions": kind,
        "n_ablated_positions": n_pos,
        "probe_p": float(prob),
        "probe_correct": bool((prob >= 0.5) == bool(y)),
        "lean": float(lean_),
        "probe_p_base": float(prob_base),
        "probe_correct_base": bool((prob_base >= 0.5) == bool(y)),
        "lean_base": float(lean_base),
        "delta_lean": float(lean_ - lean_base),
    }


# ---------------------------------------------------------------- summaries
def summarize(
    residual: pd.DataFrame, heads: pd.DataFrame, ranking: pd.DataFrame, ablation: pd.DataFrame
) -> dict:
    """Key figures: best layer x position per condition, top heads, above-chance accuracy
    lost under directional ablation against the random controls."""
    out: dict = {}
    if len(residual):
        ok = residual[~residual["small_denominator"]]
        best = {}
        for (direction, c), part in ok.groupby(["direction", "condition"], sort=True):
            m = part.groupby(["layer", "position"])["recovery"].agg(["mean", "size"])
            # sites every pair has (suffix) or at least half of the pairs have
            m = m[m["size"] >= max(2, m["size"].max() // 2)]
            top = m.sort_values("mean", ascending=False).head(3)
            best.setdefault(direction, {})[c] = [
                {
                    "layer": int(lay),
                    "position": pos,
                    "mean_recovery": round(float(r["mean"]), 3),
                    "n": int(r["size"]),
                }
                for (lay, pos), r in top.iterrows()
            ]
        out["residual_best"] = best
        last = ok[(ok["position"] == "last") & (ok["direction"] == DIRECTIONS[0])]
        out["residual_last_by_layer"] = {
            int(k): round(float(v), 3) for k, v in last.groupby("layer")["recovery"].mean().items()
        }
    if len(ranking):
        top = ranking[ranking["condition"] == "all"].head(5)
        out["top_heads"] = [
            {
                "head": f"L{int(r.layer)}H{int(r.head)}",
                "mean_recovery": round(float(r.mean_recovery), 3),
                "mean_zero_effect": round(float(r.mean_zero_effect), 3),
                "mean_mean_effect": round(float(r.mean_mean_effect), 3),
            }
            for r in top.itertuples()
        ]
    if len(ablation):
        out["ablation"] = accuracy_lost(ablation).round(3).to_dict(orient="records")
    return out


def accuracy_lost(ablation: pd.DataFrame) -> pd.DataFrame:
    """Per condition x ablation x positions: probe accuracy and the fraction of the unablated
    above-chance accuracy lost, ``(acc_base - acc) / (acc_base - 0.5)``, and the same for the
    threshold-free AUROC of the probe probability and of the lean (condition vs baseline
    samples); random controls are averaged over seeds."""
    from sklearn.metrics import roc_auc_score

    def auc(y, score):
        return roc_auc_score(y, score) if 0 < y.sum() < len(y) else np.nan

    def lost(base, value):
        return (base - value) / (base - 0.5) if base > 0.5 else np.nan

    rows = []
    abl = ablation[ablation["ablation"] != "none"]
    keys = ["condition", "ablation", "k", "positions"]
    for (c, name, k, kind), part in abl.groupby(keys, sort=True):
        per_seed = []
        for _, s in part.groupby("seed"):
            y = s["is_condition"].to_numpy(int)
            per_seed.append(
                {
                    "accuracy_base": s["probe_correct_base"].mean(),
                    "accuracy": s["probe_correct"].mean(),
                    "auroc_probe_base": auc(y, s["probe_p_base"]),
                    "auroc_probe": auc(y, s["probe_p"]),
                    "auroc_lean_base": auc(y, s["lean_base"]),
                    "auroc_lean": auc(y, s["lean"]),
                    "mean_delta_lean_condition": s.loc[s["is_condition"], "delta_lean"].mean(),
                }
            )
        m = pd.DataFrame(per_seed).mean()
        rows.append(
            {
                "condition": c,
                "ablation": name,
                "k": int(k),
                "positions": kind,
                "n_seeds": len(per_seed),
                **m.to_dict(),
                "fraction_above_chance_lost": lost(m["accuracy_base"], m["accuracy"]),
                "fraction_auroc_probe_lost": lost(m["auroc_probe_base"], m["auroc_probe"]),
                "fraction_auroc_lean_lost": lost(m["auroc_lean_base"], m["auroc_lean"]),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- one model's run
def run_patching(
    bridge,
    rows: Sequence[dict],
    cfg: PatchConfig,
    labels: Sequence[str],
    baseline: str,
    directions: Mapping[str, Mapping[int, np.ndarray]],
    subspaces: Mapping[str, Mapping[int, np.ndarray]],
    probe_data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    prepend_bos: bool = True,
    model_name: str = "model",
    progress: bool = True,
) -> dict:
    """Residual patching, head patching/ablation and directional ablation for one model.

    ``directions[c][layer]`` ``[d]`` and ``subspaces[c][layer]`` ``[K, d]`` are the
    condition's direction / PCA subspace at ``blocks.{layer}.hook_resid_pre``;
    ``probe_data[c]`` = (train features at the final layer, 1 = condition / 0 = baseline).
    Returns the tables, the metric tokens and run facts."""
    import time

    from tqdm import tqdm

    t0 = time.time()
    tokenizer = bridge.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    L = bridge.cfg.n_layers
    conditions = [label for label in labels if label != baseline]
    metric = metric_tokens(tokenizer, cfg.metric_words, labels, baseline)
    res_layers = select_layers(cfg.residual_layers, L, "residual_layers")
    head_layers = select_layers(cfg.head_layers, L, "head_layers")
    abl_layers = select_layers(cfg.ablation_layers, L, "ablation_layers")
    for c in conditions:
        for key, source in (("direction", directions), ("subspace", subspaces)):
            missing = [layer for layer in abl_layers if layer not in source.get(c, {})]
            if missing:
                raise PatchingError(
                    f"model {model_name!r}: the vectors store has no {key} for condition {c!r} "
                    f"at {store.hook_name(missing[0], RESID_SITE)}; extract hook_resid_pre "
                    "(extract.sites) or set patching.ablation_layers"
                )
    toks = dict(
        zip(
            [r["sample_id"] for r in rows],
            tokenize(tokenizer, rows, prepend_bos),
            strict=True,
        )
    )
    frames = choose_frames(rows, cfg.split, cfg.n_frames, labels, cfg.seed)
    pairs, excluded = frame_pairs(rows, toks, frames, conditions, baseline)
    n_head_frames = len(frames) if cfg.head_frames is None else min(cfg.head_frames, len(frames))
    head_pairs = [p for p in pairs if p.frame_id in set(frames[:n_head_frames])]
    patcher = Patcher(
        bridge,
        metric.flat_ids(),
        resid_layers=sorted(set(res_layers) | set(abl_layers)),
        head_layers=head_layers,
        model_name=model_name,
    )
    timings = {}
    with torch.no_grad(), patcher.attached():
        # clean / corrupted runs: sources for patching and the lean of each version
        ids_needed = sorted({p.clean_id for p in pairs} | {p.corrupted_id for p in pairs})
        acts, leans = {}, {}
        for chunk in _chunks(ids_needed, 16):
            a, lg = record_activations(patcher, [toks[i] for i in chunk], pad_id)
            acts.update(zip(chunk, a, strict=True))
            leans.update(zip(chunk, lean(lg, metric), strict=True))
        t = time.time()
        bar = tqdm(total=len(pairs), desc=f"residual {model_name}", disable=not progress)
        residual = patch_residual(
            patcher,
            pairs,
            acts,
            leans,
            metric,
            res_layers,
            cfg.batch_size,
            cfg.min_denominator,
            tokenizer,
            bar,
        )
        bar.close()
        timings["residual_s"] = time.time() - t
        t = time.time()
        neutral = [r for r in rows if r["label"] == baseline and r["split"] == "train"]
        rng = np.random.default_rng(cfg.seed)
        mean_pick = sorted(
            rng.choice(len(neutral), size=min(cfg.mean_samples, len(neutral)), replace=False)
        )
        mean_z = mean_head_outputs(
            patcher, [toks[neutral[i]["sample_id"]] for i in mean_pick], pad_id
        )
        bar = tqdm(total=len(head_pairs), desc=f"heads {model_name}", disable=not progress)
        heads = patch_heads(
            patcher,
            head_pairs,
            acts,
            leans,
            metric,
            head_layers,
            mean_z,
            cfg.batch_size,
            cfg.min_denominator,
            bar,
        )
        bar.close()
        ranking = rank_heads(heads) if len(heads) else pd.DataFrame()
        timings["heads_s"] = time.time() - t
        t = time.time()
        samples = []
        for label in labels:
            pool = [r for r in rows if r["label"] == label and r["split"] == "test"]
            pick = rng.choice(len(pool), size=min(cfg.ablation_samples, len(pool)), replace=False)
            samples += [pool[i] for i in sorted(pick)]
        probes = {c: Probe.fit(*probe_data[c], seed=cfg.seed) for c in conditions}
        ablations = {
            c: ablation_set(
                directions[c],
                subspaces[c],
                abl_layers,
                cfg.subspace_k,
                cfg.random_seeds,
                bridge.cfg.d_model,
                cfg.seed,
            )
            for c in conditions
        }
        n_jobs = sum(
            len(a) * len(cfg.position_sets) * sum(r["label"] in (c, baseline) for r in samples)
            for c, a in ablations.items()
        )
        bar = tqdm(total=n_jobs, desc=f"ablation {model_name}", disable=not progress)
        ablation, base_feats = directional_ablation(
            patcher,
            samples,
            toks,
            metric,
            probes,
            ablations,
            abl_layers,
            cfg.position_sets,
            cfg.probe_position,
            pad_id,
            tokenizer,
            cfg.batch_size,
            bar,
            cfg.ablation_mode,
        )
        bar.close()
        timings["ablation_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    info = {
        "frames": frames,
        "n_pairs": len(pairs),
        "n_pairs_excluded_misaligned": len(excluded),
        "excluded_pairs": excluded,
        "n_pairs_phrase_equal": sum(p.phrase_equal for p in pairs),
        "n_head_pairs": len(head_pairs),
        "residual_layers": list(res_layers),
        "head_layers": list(head_layers),
        "ablation_layers": list(abl_layers),
        "n_ablation_samples": len(samples),
        "n_mean_ablation_samples": len(mean_pick),
        "n_forward": patcher.n_forward,
        "n_tokens": patcher.n_tokens,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    return {
        "residual": residual,
        "heads": heads,
        "heads_ranking": ranking,
        "directional_ablation": ablation,
        "metric": metric,
        "base_features": (samples, base_feats),
        "info": info,
    }
