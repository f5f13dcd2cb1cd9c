"""Sparse autoencoders on per-token activations: training, SAELens-format I/O and evaluation.

Two architectures, named as SAELens names them:

- ``standard``: ``f = ReLU((x - b_dec) @ W_enc + b_enc)``, loss ``|x - x_hat|^2 + l1 * |f|_1``;
- ``topk``: the same pre-activations, the ``k`` largest kept (then ReLU), loss ``|x - x_hat|^2``;

both decode ``x_hat = f @ W_dec + b_dec`` with unit-norm decoder rows (one row per feature).
Training runs on an in-memory float32 token matrix, shuffled across samples by a seeded
``torch.Generator``; gradients are written out by hand (the top-k step touches only the ``k``
selected features per token), Adam updates them, and the decoder rows are renormalised after
every step. On CPU the same seed gives the same bytes (training runs on a fixed number of
threads, ``train_threads``, whatever the job's thread count).

Saved the way SAELens 6.54 saves an inference SAE (``sae_weights.safetensors`` + ``cfg.json``),
so ``sae_lens.SAE.load_from_disk(dir)`` loads it and its ``encode`` equals :meth:`SAE.encode`.
With ``normalize_activations`` ``expected_average_only_in`` (SAELens) or
``expected_average_centered`` the training inputs are scaled so that their mean norm (of x, or
of x - mean x) is ``sqrt(d_in)``; afterwards the scale is folded into the biases (features in
raw units, decoder rows still unit norm) and the saved SAE reads raw activations
(``normalize_activations: "none"``), as SAELens does when it folds its scaling factor.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ARCHITECTURES = ("standard", "topk")
NORMALIZATIONS = ("none", "expected_average_only_in", "expected_average_centered")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
SAE_LENS_VERSION = "6.54.12"  # the on-disk format written here
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
METRICS_FILE = "metrics.json"
FEATURES_FILE = "features.csv"
TOP_N = 3  # top activating prompts per feature in the feature table
WORKFLOW_KEYS = ("architectures", "ce_loss_prompts")  # config keys that are not training settings


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
class SAETrainConfig:
    """One SAE's training settings (SAELens names where SAELens has one).

    ``d_sae = expansion_factor * d_in``. ``training_tokens``, when given, overrides
    ``n_epochs``; ``batch_size`` is in tokens. ``lr`` decays linearly to 0 over the last
    ``lr_decay_fraction`` of the steps. ``train_threads``: torch threads while training; a fixed
    number makes the weights byte-identical on any machine (reductions split across threads
    sum in another order); None uses the current setting.
    """

    d_in: int
    architecture: str = "topk"
    expansion_factor: int = 4
    k: int = 32
    l1_coefficient: float = 5.0
    lr: float = 4e-4
    batch_size: int = 1024
    n_epochs: int = 10
    training_tokens: int | None = None
    seed: int = 0
    normalize_activations: str = "expected_average_only_in"
    b_dec_init: str = "geometric_median"
    lr_decay_fraction: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    train_threads: int | None = 1
    d_sae: int = field(init=False)

    def __post_init__(self):
        def bad(key, value, expected):
            raise ValueError(f"sae.{key}: {value!r} is invalid; expected {expected}")

        if self.architecture not in ARCHITECTURES:
            bad("architecture", self.architecture, f"one of {', '.join(ARCHITECTURES)}")
        if self.normalize_activations not in NORMALIZATIONS:
            bad(
                "normalize_activations",
                self.normalize_activations,
                f"one of {', '.join(NORMALIZATIONS)}",
            )
        if self.b_dec_init not in B_DEC_INITS:
            bad("b_dec_init", self.b_dec_init, f"one of {', '.join(B_DEC_INITS)}")
        for key in ("d_in", "expansion_factor", "batch_size", "n_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(key, value, "an integer >= 1")
        if self.training_tokens is not None and (
            isinstance(self.training_tokens, bool)
            or not isinstance(self.training_tokens, int)
            or self.training_tokens < 1
        ):
            bad("training_tokens", self.training_tokens, "an integer >= 1 or null")
        d_sae = self.expansion_factor * self.d_in
        if self.architecture == "topk" and not (
            isinstance(self.k, int) and not isinstance(self.k, bool) and 1 <= self.k <= d_sae
        ):
            bad("k", self.k, f"an integer in 1..d_sae={d_sae} (expansion_factor * d_in)")
        for key in ("l1_coefficient", "lr"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                bad(key, value, "a finite number >= 0")
        if self.lr == 0:
            bad("lr", self.lr, "a number > 0")
        if not 0 <= self.lr_decay_fraction <= 1:
            bad("lr_decay_fraction", self.lr_decay_fraction, "a number in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", self.seed, "an integer")
        if self.train_threads is not None and (
            isinstance(self.train_threads, bool)
            or not isinstance(self.train_threads, int)
            or self.train_threads < 1
        ):
            bad("train_threads", self.train_threads, "an integer >= 1 or null")
        object.__setattr__(self, "d_sae", d_sae)

    @classmethod
    def from_config(cls, section: dict, d_in: int, architecture: str, seed: int):
        """From the config's ``sae`` section (workflow-only keys are dropped)."""
        settings = {key: value for key, value in section.items() if key not in WORKFLOW_KEYS}
        return cls(d_in=d_in, architecture=architecture, seed=seed, **settings)

    def n_steps(self, n_train: int) -> int:
        tokens = self.training_tokens or self.n_epochs * n_train
        return max(1, math.ceil(tokens / self.batch_size))

    def training_details(self) -> dict:
        details = asdict(self)
        details["adam_betas"] = list(self.adam_betas)
        return details


# ---------------------------------------------------------------- the SAE
@dataclass
class SAE:
    """Trained weights in the SAELens layout (raw-activation units), plus how they were made.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    cfg: SAETrainConfig
    scaling_factor: float = 1.0  # inputs were multiplied by this during training (folded)
    n_steps: int = 0
    n_training_tokens: int = 0
    loss_history: list[float] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    def encode(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Feature activations [n, d_sae] of raw activations x [n, d_in]."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if len(x) == 0:
            return torch.zeros(0, self.cfg.d_sae)
        return torch.cat([self._encode(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        if self.architecture == "standard":
            return pre.clamp_min_(0)
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, f, self.W_dec)

    def reconstruct(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """decode(encode(x)) for x [n, d_in] on any device; returned on x's device and dtype."""
        x = torch.as_tensor(x)
        xs = x.to(self.W_enc.device, torch.float32)
        out = [self.decode(self._encode(xs[i : i + chunk])) for i in range(0, len(xs), chunk)]
        return (torch.cat(out) if out else xs.clone()).to(x.device, x.dtype)


# ---------------------------------------------------------------- inputs
@dataclass
class TokenActivations:
    """One hook's per-token activations from an activation store, with their coordinates.

    x [n_tokens, d_in] float32; sample_index / position / token_id [n_tokens]; per-sample
    sample_ids, labels, splits [n_samples] (sample_index indexes these).
    """

    hook: str
    x: np.ndarray
    sample_index: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    sample_ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    def token_mask(self, split: str) -> np.ndarray:
        return self.splits[self.sample_index] == split


def read_tokens(path: str | os.PathLike, hook: str) -> TokenActivations:
    """The per-token group of an activation store for ``hook`` (BOS already excluded)."""
    import zarr

    from circuitflow import store

    root = zarr.open_group(Path(path), mode="r")
    group = root.get(store.TOKENS_GROUP)
    available = [] if group is None else sorted(n for n in group.array_keys() if "hook" in n)
    if hook not in available:
        stored = ", ".join(available) or "none"
        raise ValueError(
            f"{path}: no per-token activations for {hook} (stored: {stored}); "
            "add its layer to models.<model>.per_token_layers"
        )
    coords = store.read_sample_coords(path)
    name = f"{store.TOKENS_GROUP}/"
    return TokenActivations(
        hook=hook,
        x=store.read_array(path, name + hook),
        sample_index=store.read_array(path, name + "sample_index").astype(np.int64),
        position=store.read_array(path, name + "position"),
        token_id=store.read_array(path, name + "token_id"),
        sample_ids=coords["sample"],
        labels=coords["label"],
        splits=coords["split"],
    )


def choose_prompts(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``limit`` of ``n`` items drawn without replacement (all if None/>= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


# ---------------------------------------------------------------- training
@contextmanager
def deterministic(threads: int | None = None):
    """torch.use_deterministic_algorithms (and ``threads`` torch threads) for the duration."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


def geometric_median(x: torch.Tensor, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld iterations from the mean: the point minimising the sum of distances to x."""
    x = x.double()
    median = x.mean(0)
    for _ in range(max_iter):
        dist = (x - median).norm(dim=1).clamp_min(1e-8)
        w = 1.0 / dist
        new = (w[:, None] * x).sum(0) / w.sum()
        shift = (new - median).norm() / new.norm().clamp_min(1e-12)
        median = new
        if shift < tol:
            break
    return median.float()


def activation_scaling_factor(x: torch.Tensor, method: str) -> float:
    """Factor that gives the training inputs a mean norm of sqrt(d_in).

    ``expected_average_only_in`` (SAELens): mean ||x||. ``expected_average_centered``: mean
    ||x - mean(x)||, the norm of what the SAE actually encodes once b_dec is subtracted; it
    keeps one l1_coefficient meaningful across models whose residual stream carries a large
    constant offset (Gemma-3's mean is ~95% of its squared norm, SmolLM2's ~10%).
    """
    xd = x.double()
    if method == "expected_average_centered":
        xd = xd - xd.mean(0)
    elif method != "expected_average_only_in":
        raise ValueError(f"sae.normalize_activations: {method!r} has no scaling factor")
    mean_norm = xd.norm(dim=1).mean().item()
    return float(math.sqrt(x.shape[1]) / mean_norm) if mean_norm > 0 else 1.0


def _init_params(x: torch.Tensor, cfg: SAETrainConfig, gen: torch.Generator):
    """Unit-norm random decoder rows; encoder = decoder transposed (scaled); b_dec at the median.

    Returns (W_encT [d_sae, d_in], b_enc, W_dec [d_sae, d_in], b_dec), all float32.
    """
    W_dec = torch.rand(cfg.d_sae, cfg.d_in, generator=gen) * 2 - 1
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    enc_scale = 1.0 if cfg.architecture == "topk" else 0.1
    W_encT = W_dec.clone() * enc_scale
    b_enc = torch.zeros(cfg.d_sae)
    if cfg.b_dec_init == "geometric_median":
        b_dec = geometric_median(x)
    elif cfg.b_dec_init == "mean":
        b_dec = x.mean(0)
    else:
        b_dec = torch.zeros(cfg.d_in)
    return W_encT, b_enc, W_dec, b_dec


def _grads_standard(x, W_encT, b_enc, W_dec, b_dec, l1: float):
    """Loss and gradients of mean_b(||x_hat - x||^2 + l1 * sum(f)) for ReLU features."""
    B = x.shape[0]
    xc = x - b_dec
    pre = torch.addmm(b_enc, xc, W_encT.T)
    f = pre.clamp_min(0)
    x_hat = torch.addmm(b_dec, f, W_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / B
    l1_term = f.sum() / B
    g_xhat = err.mul_(2.0 / B)
    g_W_dec = f.T @ g_xhat
    g_pre = torch.addmm(torch.full_like(pre, l1 / B), g_xhat, W_dec.T).mul_(pre > 0)
    g_W_encT = g_pre.T @ xc
    g_b_enc = g_pre.sum(0)
    # x enters the encoder as x - b_dec: d/db_dec = -sum_b g_pre @ W_enc = -g_b_enc @ W_encT
    g_b_dec = g_xhat.sum(0) - g_b_enc @ W_encT
    return (mse + l1 * l1_term).item(), mse.item(), (g_W_encT, g_b_enc, g_W_dec, g_b_dec)


def _grads_topk(x, W_encT, b_enc, W_dec, b_dec, k: int):
    """Loss and gradients of mean_b ||x_hat - x||^2 for top-k features.

    Only the k selected features of each token get gradients: decoding is an embedding bag and
    the weight gradients are sparse [d_sae, B] x dense [B, d_in] products.
    """
    import torch.nn.functional as F

    B, d = x.shape
    xc = x - b_dec
    pre = torch.addmm(b_enc, xc, W_encT.T)
    vals, idx = pre.topk(k, dim=1)
    act = vals.clamp_min(0)
    x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=act, mode="sum").add_(b_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / B
    g_xhat = err.mul_(2.0 / B)
    g_vals = (g_xhat @ W_dec.T).gather(1, idx).mul_(vals > 0)
    flat = idx.reshape(-1)
    index = torch.stack([flat, torch.arange(B).repeat_interleave(k)])
    shape = (W_dec.shape[0], B)
    g_W_dec = torch.sparse.mm(
        torch.sparse_coo_tensor(index, act.reshape(-1), shape, check_invariants=False), g_xhat
    )
    g_W_encT = torch.sparse.mm(
        torch.sparse_coo_tensor(index, g_vals.reshape(-1), shape, check_invariants=False), xc
    )
    g_b_enc = torch.zeros_like(b_enc).index_add_(0, flat, g_vals.reshape(-1))
    g_b_dec = g_xhat.sum(0) - g_b_enc @ W_encT
    value = mse.item()
    return value, value, (g_W_encT, g_b_enc, g_W_dec, g_b_dec)


def batch_indices(n: int, cfg: SAETrainConfig):
    """Row indices of each training batch: ``cfg.n_steps(n)`` full batches of
    ``cfg.batch_size`` cut from a stream of permutations of the n rows (a fresh one per epoch,
    from a generator seeded with ``cfg.seed``), so a batch mixes samples and positions
    whatever the order of the rows, and every row is seen once per epoch."""
    gen = torch.Generator().manual_seed(cfg.seed)
    buffer = torch.empty(0, dtype=torch.long)
    for _ in range(cfg.n_steps(n)):
        while len(buffer) < cfg.batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=gen)])
        yield buffer[: cfg.batch_size]
        buffer = buffer[cfg.batch_size :]


def train_sae(
    x: np.ndarray | torch.Tensor,
    cfg: SAETrainConfig,
    progress: bool = False,
    log_every: int = 0,
) -> SAE:
    """Train an SAE on token activations x [n_tokens, d_in] (rows in any order).

    Each epoch visits the tokens in a fresh permutation drawn from ``torch.Generator`` seeded
    with ``cfg.seed``, so batches mix samples and positions. Deterministic on CPU.
    """
    from tqdm import tqdm

    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise ValueError(f"activations have shape {tuple(x.shape)}; expected [n, {cfg.d_in}]")
    if len(x) < 1:
        raise ValueError("no training tokens")
    if not torch.isfinite(x).all():
        raise ValueError("NaN or inf in the training activations")
    n = len(x)
    scale = 1.0
    if cfg.normalize_activations != "none":
        scale = activation_scaling_factor(x, cfg.normalize_activations)
        x = x * scale
    with deterministic(cfg.train_threads), torch.no_grad():
        W_encT, b_enc, W_dec, b_dec = _init_params(x, cfg, torch.Generator().manual_seed(cfg.seed))
        params = [W_encT, b_enc, W_dec, b_dec]
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
        n_steps = cfg.n_steps(n)
        decay_start = int(round(n_steps * (1 - cfg.lr_decay_fraction)))
        history: list[float] = []
        seen = 0
        bar = tqdm(total=n_steps, desc=f"train {cfg.architecture} SAE", disable=not progress)
        for step, rows in enumerate(batch_indices(n, cfg)):
            batch = x[rows]
            seen += len(batch)
            if cfg.architecture == "standard":
                loss, _, grads = _grads_standard(batch, *params, cfg.l1_coefficient)
            else:
                loss, _, grads = _grads_topk(batch, *params, cfg.k)
            g_W_dec = grads[2]
            # keep the unit-norm constraint: drop the gradient along each decoder row
            g_W_dec -= (g_W_dec * W_dec).sum(1, keepdim=True) * W_dec
            for p, g in zip(params, grads, strict=True):
                p.grad.copy_(g)
            if step >= decay_start and n_steps > decay_start:
                frac = (n_steps - step) / (n_steps - decay_start)
                opt.param_groups[0]["lr"] = cfg.lr * frac
            opt.step()
            W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            history.append(loss)
            if log_every and step % log_every == 0:
                print(f"step {step}/{n_steps} loss {loss:.4f}", flush=True)
            bar.update(1)
        bar.close()
    # fold the input scale into the biases: features and reconstructions in raw units
    return SAE(
        W_enc=W_encT.T.contiguous(),
        b_enc=(b_enc / scale).contiguous(),
        W_dec=W_dec.contiguous(),
        b_dec=(b_dec / scale).contiguous(),
        cfg=cfg,
        scaling_factor=scale,
        n_steps=n_steps,
        n_training_tokens=seen,
        loss_history=history,
    )


# ---------------------------------------------------------------- metrics
@dataclass(frozen=True)
class ReconstructionMetrics:
    """SAELens definitions: explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2;
    mse = mean over tokens and dims of (x - x_hat)^2 (raw units); l0 = mean active features."""

    n_tokens: int
    l0: float
    explained_variance: float
    mse: float
    dead_fraction: float
    n_dead: int
    fire_rate: np.ndarray  # [d_sae] fraction of tokens each feature fires on

    def as_dict(self, prefix: str = "") -> dict:
        return {
            f"{prefix}n_tokens": self.n_tokens,
            f"{prefix}l0": self.l0,
            f"{prefix}explained_variance": self.explained_variance,
            f"{prefix}mse": self.mse,
            f"{prefix}dead_fraction": self.dead_fraction,
            f"{prefix}n_dead_features": self.n_dead,
        }


def reconstruction_metrics(sae: SAE, x: np.ndarray | torch.Tensor, chunk: int = 4096):
    """L0, explained variance, MSE and dead features of ``sae`` on tokens x [n, d_in]."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(x) == 0:
        raise ValueError("no tokens to evaluate the SAE on")
    err2 = torch.zeros((), dtype=torch.float64)
    l0 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        f = sae._encode(xb)
        err2 += (sae.decode(f) - xb).double().pow(2).sum()
        active = f > 0
        l0 += active.sum()
        fires += active.sum(0)
    xd = x.double()
    total = (xd - xd.mean(0)).pow(2).sum()
    n = len(x)
    fire_rate = (fires / n).numpy()
    n_dead = int((fires == 0).sum())
    return ReconstructionMetrics(
        n_tokens=n,
        l0=float(l0 / n),
        explained_variance=float(1 - err2 / total) if total > 0 else float("nan"),
        mse=float(err2 / (n * x.shape[1])),
        dead_fraction=n_dead / sae.cfg.d_sae,
        n_dead=n_dead,
        fire_rate=fire_rate,
    )


# ---------------------------------------------------------------- CE-loss recovered
@dataclass(frozen=True)
class CELossResult:
    """Next-token LM loss with the hook clean, replaced by the SAE, and zero-ablated."""

    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float  # (zero - sae) / (zero - clean)
    n_prompts: int
    n_predictions: int

    def as_dict(self) -> dict:
        return asdict(self)


def ce_loss_recovered(
    bridge,
    token_ids: Sequence[np.ndarray],
    hook: str,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    first: int = 1,
    batch_size: int = 16,
) -> CELossResult:
    """Splice ``reconstruct`` into ``bridge`` at ``hook`` and compare next-token losses.

    token_ids: one int array per prompt (BOS included when the model prepends it); the hook's
    output at positions ``first:`` (all but BOS) is replaced by ``reconstruct(x)`` (x [n,
    d_model]) or by zeros; positions before ``first`` are left unchanged. Loss: mean
    cross-entropy over every next-token prediction of every prompt (token-weighted).
    """
    import torch.nn.functional as F

    mode = {"value": "clean"}

    def splice(x, hook):
        if mode["value"] == "clean":
            return None
        x = x.clone()
        tail = x[:, first:]
        if mode["value"] == "zero":
            x[:, first:] = 0
        else:
            flat = tail.reshape(-1, tail.shape[-1]).float()
            x[:, first:] = reconstruct(flat).reshape(tail.shape).to(x.dtype)
        return x

    device = next(bridge.parameters()).device
    pad = bridge.tokenizer.pad_token_id if bridge.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(token_ids)), key=lambda i: (len(token_ids[i]), i))
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, splice)]):
        for b0 in range(0, len(order), batch_size):
            sel = [np.asarray(token_ids[i]) for i in order[b0 : b0 + batch_size]]
            lengths = torch.tensor([len(t) for t in sel])
            if int(lengths.min()) < 2:
                raise ValueError("every prompt needs at least 2 tokens for a next-token loss")
            P = int(lengths.max())
            tokens = torch.full((len(sel), P), pad, dtype=torch.long)
            for i, t in enumerate(sel):
                tokens[i, : len(t)] = torch.from_numpy(t.astype(np.int64))
            mask = torch.arange(P - 1)[None, :] < (lengths - 1)[:, None]
            targets = tokens[:, 1:]
            n_pred += int(mask.sum())
            for name in sums:
                mode["value"] = name
                logits = bridge(tokens.to(device), return_type="logits")[:, :-1].float().cpu()
                ce = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).reshape(targets.shape)
                sums[name] += float((ce * mask).sum().double())
                del logits
    mode["value"] = "clean"
    losses = {name: value / n_pred for name, value in sums.items()}
    gap = losses["zero"] - losses["clean"]
    return CELossResult(
        ce_loss_clean=losses["clean"],
        ce_loss_sae=losses["sae"],
        ce_loss_zero=losses["zero"],
        ce_loss_recovered=(losses["zero"] - losses["sae"]) / gap if gap != 0 else float("nan"),
        n_prompts=len(token_ids),
        n_predictions=n_pred,
    )


# ---------------------------------------------------------------- feature table
def per_sample_max(f: torch.Tensor, sample_index: np.ndarray, n_samples: int) -> torch.Tensor:
    """Max over each sample's tokens: f [n_tokens, d_sae] -> [n_samples, d_sae] (0 if none)."""
    out = torch.zeros(n_samples, f.shape[1], dtype=f.dtype)
    index = torch.as_tensor(np.asarray(sample_index, dtype=np.int64))[:, None].expand_as(f)
    return out.scatter_reduce_(0, index, f, reduce="amax", include_self=True)


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Column-wise ROC AUC of scores [n, m] for the boolean labels ``positive`` [n].

    The Mann-Whitney form with average ranks for ties, equal to sklearn's roc_auc_score.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def feature_table(
    f: torch.Tensor,
    sample_index: np.ndarray,
    token_ids: np.ndarray,
    samples: Sequence[dict],
    labels: Sequence[str],
    baseline: str,
    decode: Callable[[int], str],
    top_n: int = TOP_N,
):
    """Tidy feature x label table over the evaluated samples.

    f [n_tokens, d_sae]: feature activations of the tokens; sample_index [n_tokens] indexes
    ``samples`` (dicts with sample_id, label, text); token_ids [n_tokens].
    Per feature and label: n_samples, mean of the per-sample max activation, AUROC of the
    per-sample max for that label vs ``baseline`` (empty for the baseline row), the fraction of
    the label's samples where the feature fires; per feature: fire_rate over all tokens and the
    ``top_n`` prompts with the highest per-sample max (sample id, label, decoded top token,
    activation, text).
    """
    import pandas as pd

    n_samples = len(samples)
    sample_index = np.asarray(sample_index, dtype=np.int64)
    smax = per_sample_max(f, sample_index, n_samples).numpy()  # [sample, feature]
    sample_labels = np.array([s["label"] for s in samples])
    d_sae = f.shape[1]
    fire_rate = (f > 0).double().mean(0).numpy() if len(f) else np.zeros(d_sae)

    # top prompts per feature, and the token where each reaches its max
    top = np.argsort(-smax, axis=0, kind="stable")[:top_n]  # [top_n, feature]
    order = np.argsort(sample_index, kind="stable")
    starts = np.searchsorted(sample_index[order], np.arange(n_samples))
    ends = np.searchsorted(sample_index[order], np.arange(n_samples), side="right")
    fv = f.numpy()
    top_cols: dict[str, list] = {}
    for r in range(top_n):
        ids, labs, toks, acts, texts = [], [], [], [], []
        for j in range(d_sae):
            s = int(top[r, j]) if r < len(top) else -1
            value = float(smax[s, j]) if s >= 0 else 0.0
            if s < 0 or value <= 0:
                ids.append(""), labs.append(""), toks.append(""), acts.append(np.nan)
                texts.append("")
                continue
            rows = order[starts[s] : ends[s]]
            t = rows[int(np.argmax(fv[rows, j]))]
            ids.append(samples[s]["sample_id"])
            labs.append(samples[s]["label"])
            toks.append(decode(int(token_ids[t])))
            acts.append(value)
            texts.append(samples[s]["text"])
        n = r + 1
        top_cols[f"top{n}_sample_id"] = ids
        top_cols[f"top{n}_label"] = labs
        top_cols[f"top{n}_token"] = toks
        top_cols[f"top{n}_activation"] = acts
        top_cols[f"top{n}_text"] = texts

    frames = []
    base = sample_labels == baseline
    for label in labels:
        sel = sample_labels == label
        if label == baseline:
            au = np.full(d_sae, np.nan)
        else:
            keep = sel | base
            au = auroc(smax[keep], sel[keep])
        frame = {
            "feature": np.arange(d_sae),
            "label": label,
            "n_samples": int(sel.sum()),
            "mean_max_activation": smax[sel].mean(0) if sel.any() else np.full(d_sae, np.nan),
            "auroc_vs_baseline": au,
            "sample_fire_rate": (smax[sel] > 0).mean(0) if sel.any() else np.full(d_sae, np.nan),
            "fire_rate": fire_rate,
        }
        frames.append(pd.DataFrame({**frame, **top_cols}))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values("feature", kind="stable", ignore_index=True)  # labels as given


# ---------------------------------------------------------------- saving / loading
def sae_lens_cfg(sae: SAE, metadata: dict) -> dict:
    """cfg.json content in SAELens 6.54's inference format."""
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the training scale is folded into the weights
        "reshape_activations": "none",
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False  # decoder rows are unit norm
    details = sae.cfg.training_details()
    cfg["metadata"] = {
        "sae_lens_version": SAE_LENS_VERSION,
        "sae_lens_training_version": None,
        "trainer": "circuitflow",
        "training_architecture": sae.architecture,
        "training_architecture_details": {
            key: details[key]
            for key in ("k", "l1_coefficient")
            if not (key == "k" and sae.architecture != "topk")
            and not (key == "l1_coefficient" and sae.architecture != "standard")
        },
        "training_normalize_activations": sae.cfg.normalize_activations,
        "activation_scaling_factor": sae.scaling_factor,
        "training": details,
        "n_training_steps": sae.n_steps,
        "n_training_tokens": sae.n_training_tokens,
        **metadata,
    }
    return cfg


def save_sae(sae: SAE, out_dir: str | os.PathLike, metadata: dict) -> Path:
    """Write sae_weights.safetensors + cfg.json (SAELens 6.54 layout) into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_dec": sae.W_dec,
        "W_enc": sae.W_enc,
        "b_dec": sae.b_dec,
        "b_enc": sae.b_enc,
    }
    weights = out_dir / WEIGHTS_FILE
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, weights)
    weights.chmod(0o644)  # safetensors creates it owner-only; the other files are 644
    cfg = sae_lens_cfg(sae, metadata)
    (out_dir / CFG_FILE).write_text(json.dumps(cfg, indent=2, default=_json_default) + "\n")
    return out_dir


def load_sae(path: str | os.PathLike) -> SAE:
    """Read back a saved SAE (ours, or a SAELens standard/topk SAE with no runtime scaling)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / CFG_FILE).read_text())
    if cfg["architecture"] not in ARCHITECTURES:
        raise ValueError(f"{path}: architecture {cfg['architecture']!r} not in {ARCHITECTURES}")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(
            f"{path}: normalize_activations {cfg['normalize_activations']!r} unsupported"
        )
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    if d_sae % d_in:
        raise ValueError(f"{path}: d_sae {d_sae} is not a multiple of d_in {d_in}")
    meta = cfg.get("metadata", {})
    train_cfg = SAETrainConfig(
        d_in=d_in,
        architecture=cfg["architecture"],
        expansion_factor=d_sae // d_in,
        k=cfg.get("k", min(32, d_sae)),
    )
    tensors = load_file(path / WEIGHTS_FILE)
    return SAE(
        W_enc=tensors["W_enc"].float(),
        b_enc=tensors["b_enc"].float(),
        W_dec=tensors["W_dec"].float(),
        b_dec=tensors["b_dec"].float(),
        cfg=train_cfg,
        scaling_factor=float(meta.get("activation_scaling_factor", 1.0)),
        n_steps=int(meta.get("n_training_steps", 0)),
        n_training_tokens=int(meta.get("n_training_tokens", 0)),
    )


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def timer() -> Callable[[], dict]:
    """Seconds since the call: {"wall": ..., "cpu": ...} (cpu: this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    return lambda: {
        "wall": round(time.perf_counter() - wall, 2),
        "cpu": round(time.process_time() - cpu, 2),
    }
