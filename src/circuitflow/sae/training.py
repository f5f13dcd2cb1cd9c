"""Training an SAE on an in-memory token matrix, deterministically.

Inputs are float32 activations x [n_tokens, d_in] (rows in any order). Batches are cut from
seeded permutations of the rows (``torch.Generator``), so they mix samples and positions;
each architecture's hand-written gradient step (:meth:`SAEArchitecture.grads`) feeds Adam,
and the decoder rows are renormalised after every step. On CPU the same seed gives the same
bytes (training runs on a fixed number of threads, ``train_threads``, whatever the job's
thread count).

With ``normalize_activations`` ``expected_average_only_in`` (SAELens) or
``expected_average_centered`` the inputs are scaled so that their mean norm (of x, or of
x - mean x) is ``sqrt(d_in)``; afterwards the scale is folded into the biases, so the
returned SAE reads raw activations (features in raw units, decoder rows still unit norm), as
SAELens does when it folds its scaling factor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Float, Int
from tqdm import tqdm

from circuitflow.sae.base import SAE, Params, SAEError
from circuitflow.sae.config import SAETrainConfig


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


def geometric_median(
    x: Float[torch.Tensor, "n d"], max_iter: int = 100, tol: float = 1e-6
) -> Float[torch.Tensor, " d"]:
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


def activation_scaling_factor(x: Float[torch.Tensor, "n d_in"], method: str) -> float:
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
        raise SAEError(f"sae.normalize_activations: {method!r} has no scaling factor")
    mean_norm = xd.norm(dim=1).mean().item()
    return float(math.sqrt(x.shape[1]) / mean_norm) if mean_norm > 0 else 1.0


def _init_params(x: torch.Tensor, cfg: SAETrainConfig, gen: torch.Generator) -> Params:
    """Unit-norm random decoder rows; encoder = decoder transposed (scaled by the
    architecture's ``encoder_init_scale``); b_dec by ``cfg.b_dec_init``.

    Returns (W_encT [d_sae, d_in], b_enc, W_dec [d_sae, d_in], b_dec), all float32.
    """
    W_dec = torch.rand(cfg.d_sae, cfg.d_in, generator=gen) * 2 - 1
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_encT = W_dec.clone() * cfg.arch.encoder_init_scale
    b_enc = torch.zeros(cfg.d_sae)
    if cfg.b_dec_init == "geometric_median":
        b_dec = geometric_median(x)
    elif cfg.b_dec_init == "mean":
        b_dec = x.mean(0)
    else:
        b_dec = torch.zeros(cfg.d_in)
    return W_encT, b_enc, W_dec, b_dec


def batch_indices(n: int, cfg: SAETrainConfig) -> Iterator[Int[torch.Tensor, " batch"]]:
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
    x: Float[np.ndarray, "n d_in"] | Float[torch.Tensor, "n d_in"],
    cfg: SAETrainConfig,
    progress: bool = False,
    log_every: int = 0,
) -> SAE:
    """Train an SAE on token activations x (rows in any order).

    Each epoch visits the tokens in a fresh permutation drawn from ``torch.Generator`` seeded
    with ``cfg.seed``, so batches mix samples and positions. Deterministic on CPU.
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise SAEError(f"activations have shape {tuple(x.shape)}; expected [n, {cfg.d_in}]")
    if len(x) < 1:
        raise SAEError("no training tokens")
    if not torch.isfinite(x).all():
        raise SAEError("NaN or inf in the training activations")
    arch = cfg.arch
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
            loss, _, grads = arch.grads(batch, params, cfg)
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


def timer() -> Callable[[], dict]:
    """Seconds since the call: {"wall": ..., "cpu": ...} (cpu: this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    return lambda: {
        "wall": round(time.perf_counter() - wall, 2),
        "cpu": round(time.process_time() - cpu, 2),
    }
