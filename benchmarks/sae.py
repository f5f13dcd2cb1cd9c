"""SAE training benchmark: circuitflow.sae.train_sae versus SAELens's SAETrainer.

Same activations, same SAE (576 -> 4608 ReLU + L1, "standard"), same batch (4096 tokens),
learning rate, L1 coefficient, number of steps, input normalisation
(``expected_average_only_in``) and torch threads. Activations: the per-token store
``results/activations/emotion/smollm2-135m.zarr`` (group tokens, blocks.15.hook_resid_post),
train-split tokens for training and test-split tokens for the explained variance; without it,
synthetic sparse data of that shape. Prints tokens/s of both, the ratio, and the held-out
explained variance and L0 each reaches.

Goal: ours >= SAELens tokens/s at equal (or better) explained variance.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sae.py            # ~2-3 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sae.py --steps 10  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "results/activations/emotion/smollm2-135m.zarr"
HOOK = "blocks.15.hook_resid_post"
THROUGHPUT_GOAL = 1.0  # ours / SAELens, at least


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=STORE, help="activation store (Zarr)")
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--synthetic", action="store_true", help="ignore the store; synthetic data")
    p.add_argument("--expansion-factor", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=24, help="training steps for each trainer")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--l1", type=float, default=2.0, help="l1_coefficient for both")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def load_activations(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(train tokens, test tokens, description)."""
    if not args.synthetic and args.store.exists():
        from circuitflow import sae

        tokens = sae.read_tokens(args.store, args.hook)
        train, test = tokens.token_mask("train"), tokens.token_mask("test")
        return tokens.x[train], tokens.x[test], f"{args.store.relative_to(ROOT)}:{args.hook}"
    rng = np.random.default_rng(0)
    d, n_atoms, n = 576, 4608, 25000
    atoms = rng.normal(size=(n_atoms, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, n_atoms), np.float32)
    active = rng.integers(0, n_atoms, size=(n, 24))
    np.put_along_axis(codes, active, rng.exponential(3.0, size=(n, 24)).astype(np.float32), 1)
    x = codes @ atoms + rng.normal(size=d).astype(np.float32) * 5
    cut = int(0.7 * n)
    return x[:cut], x[cut:], f"synthetic sparse codes [{n}, {d}] (no store at {args.store})"


def held_out(reconstruct, x_test: np.ndarray, encode) -> dict:
    x = torch.as_tensor(x_test)
    with torch.no_grad():
        x_hat = reconstruct(x).double()
        f = encode(x)
    xd = x.double()
    ev = 1 - (xd - x_hat).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()
    return {"explained_variance": float(ev), "l0": float((f > 0).sum(1).double().mean())}


def run_ours(args, x_train, x_test) -> dict:
    from circuitflow import sae

    cfg = sae.SAETrainConfig(
        d_in=x_train.shape[1],
        architecture="standard",
        expansion_factor=args.expansion_factor,
        k=32,  # topk only
        l1_coefficient=args.l1,
        lr=args.lr,
        batch_size=args.batch_size,
        n_epochs=1,  # training_tokens overrides it
        training_tokens=args.steps * args.batch_size,
        seed=0,
        normalize_activations="expected_average_only_in",
        b_dec_init="geometric_median",
        lr_decay_fraction=0.0,  # SAELens's default schedule is constant
        train_threads=args.threads,
    )
    start = time.perf_counter()
    model = sae.train_sae(x_train, cfg)
    seconds = time.perf_counter() - start
    return {
        "tokens": model.n_training_tokens,
        "seconds": seconds,
        "tokens_per_s": model.n_training_tokens / seconds,
        **held_out(model.reconstruct, x_test, model.encode),
    }


def run_sae_lens(args, x_train, x_test) -> dict:
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = x_train.shape[1]
    torch.manual_seed(0)
    model = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.expansion_factor * d_in,
            l1_coefficient=args.l1,
            normalize_activations="expected_average_only_in",
        )
    )
    data = torch.as_tensor(x_train)
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:
            perm = torch.randperm(len(data), generator=gen)
            for i in range(0, len(perm) - args.batch_size + 1, args.batch_size):
                yield data[perm[i : i + args.batch_size]]

    total = args.steps * args.batch_size
    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=total,
            train_batch_size_samples=args.batch_size,
            lr=args.lr,
            lr_end=args.lr,  # constant schedule (LanguageModelSAERunnerConfig sets this)
            device="cpu",
            n_batches_for_norm_estimate=max(1, len(data) // args.batch_size),
            logger=LoggingConfig(log_to_wandb=False),
        ),
        model,
        batches(),
    )
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    return {
        "tokens": total,
        "seconds": seconds,
        "tokens_per_s": total / seconds,
        **held_out(model.forward, x_test, model.encode),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x_train, x_test, source = load_activations(args)
    d_in = x_train.shape[1]
    print(
        f"data: {source}; train {len(x_train)} / test {len(x_test)} tokens; SAE {d_in} -> "
        f"{args.expansion_factor * d_in} ReLU-L1, batch {args.batch_size}, {args.steps} steps, "
        f"lr {args.lr}, l1 {args.l1}, {args.threads} threads, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = {}
    for name, run in (("circuitflow", run_ours), ("sae_lens", run_sae_lens)):
        results[name] = run(args, x_train, x_test)
        r = results[name]
        print(
            f"{name:>12}: {r['tokens_per_s']:8.0f} tok/s ({r['tokens']} tokens in "
            f"{r['seconds']:.1f} s)  held-out explained variance {r['explained_variance']:.3f}"
            f"  L0 {r['l0']:.1f}",
            flush=True,
        )
    ratio = results["circuitflow"]["tokens_per_s"] / results["sae_lens"]["tokens_per_s"]
    ev_gap = (
        results["circuitflow"]["explained_variance"] - results["sae_lens"]["explained_variance"]
    )
    ok = ratio >= THROUGHPUT_GOAL and ev_gap >= -0.01
    print(
        f"throughput ratio (ours / SAELens): {ratio:.2f}x (goal >= {THROUGHPUT_GOAL}x); "
        f"explained variance difference {ev_gap:+.3f} -> {'OK' if ok else 'MISSED'}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "source": source,
            "args": {k: str(v) for k, v in vars(args).items()},
            "platform": platform.platform(),
            "torch": torch.__version__,
            "results": results,
            "ratio": ratio,
        }
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
