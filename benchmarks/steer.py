"""Steering benchmark: one batched sweep versus one generate() per configuration.

The same sweep (default: 12 neutral test prompts x 3 layers x 3 relative alphas x 3 emotion
directions = 27 steered configurations + the unsteered baseline, 16 greedy new tokens, the
vector on the last 4 prompt tokens and every generated token) is run three ways on one
loaded model:

- batched: ``circuitflow.steering.run_sweep``: every (prompt, configuration) row in batches
  of ``--batch-size`` rows, one hook per layer with per-row vectors, attached once; the
  prompt prefix before the steering window runs once per prompt;
- per-config generate(): the baseline. For each configuration, a hook adding its vector is
  attached (``core.hooks.attach_bridge``) and ``TransformerBridge.generate`` runs the prompts
  as one left-padded batch with the KV cache (greedy, ``stop_at_eos=False``);
- per-config ours: ``run_sweep`` called once per configuration (same loop as batched, no
  batching across configurations), to separate the batching gain from the loop itself.

Goal: batched >= 5x faster than one generate() per configuration.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/steer.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/steer.py --model-dir resources/models/gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 5.0
MAKE_HINT = "make it with `make run` or `.venv/bin/snakemake --cores 2 {target}` in {root}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=ROOT / "resources/models/smollm2-135m", type=Path)
    p.add_argument("--dataset", default="emotion")
    p.add_argument("--n-prompts", type=int, default=12)
    p.add_argument("--layers", default="0.25,0.5,0.75", help="relative depths or block indices")
    p.add_argument("--alphas", default="0.05,0.1,0.2", help="relative alphas")
    p.add_argument("--conditions", default="gratitude,anger,apology")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the rule uses 1)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--skip-per-config-ours", action="store_true", help="only batched vs generate()")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"benchmarks/steer.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def per_config_generate(bridge, prompts, configs, max_new_tokens: int, window: int) -> list:
    """Baseline: one hook + one bridge.generate (left-padded batch, KV cache) per config."""
    import torch

    from circuitflow import store
    from circuitflow.core.generation import eos_ids, truncate_at_eos
    from circuitflow.core.hooks import attach_bridge
    from circuitflow.core.tokens import left_pad, pad_id

    ids, mask = left_pad([p.ids for p in prompts], pad_id(bridge.tokenizer))
    lengths = mask.sum(1)
    P = ids.shape[1]
    stop = eos_ids(bridge)
    out = {}
    for j, config in enumerate(configs):
        hooks = []
        if config.steered:
            vec = torch.from_numpy(config.vector()).float()
            steer_cols = (
                torch.arange(P)[None, :]
                >= torch.maximum(P - lengths + 1, torch.full_like(lengths, P - window))[:, None]
            )

            def add(x, vec=vec, cols=steer_cols):
                if x.shape[1] > 1:  # the prompt pass: the last `window` real tokens
                    return x + cols[..., None].to(x.dtype) * vec.to(x.dtype)
                return x + vec.to(x.dtype)  # each decoding step: the new position

            hooks = [(store.hook_name(config.layer, "hook_resid_pre"), add)]
        with attach_bridge(bridge, hooks):
            tokens = bridge.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_at_eos=False,
                use_past_kv_cache=True,
                attention_mask=mask,
                verbose=False,
                return_type="tokens",
            )
        for i in range(len(prompts)):
            out[(i, j)] = truncate_at_eos(tokens[i, P:].tolist(), stop)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_dir = args.model_dir
    model = model_dir.name
    paths = {
        "model": model_dir,
        "dataset": ROOT / f"results/datasets/{args.dataset}",
        "activations": ROOT / f"results/activations/{args.dataset}/{model}.zarr",
        "vectors": ROOT / f"results/vectors/{args.dataset}/{model}.zarr",
    }
    for name, path in paths.items():
        if not path.exists():
            target = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            fail(f"{path}: no {name}; " + MAKE_HINT.format(target=target, root=ROOT))
    import torch

    from circuitflow import models, steering, store
    from circuitflow.core.layers import resolve_layers

    torch.set_num_threads(args.threads)
    layers_spec = [_number(x) for x in args.layers.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    conditions = args.conditions.split(",")
    bridge = models.load_bridge(model_dir, dtype=args.dtype)
    layers = list(resolve_layers(layers_spec, bridge.cfg.n_layers, "--layers", model))
    params = steering.SteeringParams(
        layers=tuple(layers),
        alphas_relative=tuple(alphas),
        conditions=tuple(conditions),
        random_seeds=(),
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
        window=args.window,
        batch_size=args.batch_size,
    )
    directions, _, norms = steering.load_directions(
        paths["vectors"], paths["activations"], layers, conditions, params.position
    )
    configs = steering.build_configs(params, layers, directions, {}, norms, bridge.cfg.d_model)
    rows = store.read_samples(paths["dataset"])
    chosen = steering.select_prompts(rows, "neutral", args.n_prompts)
    prompts = steering.encode_prompts(bridge.tokenizer, chosen, "{text}", prepend_bos=True)
    T, W = args.max_new_tokens, args.window
    n_rows = len(prompts) * len(configs)
    print(
        f"steering benchmark: {model}, {len(prompts)} prompts x {len(configs)} configurations "
        f"({len(layers)} layers {layers} x {len(alphas)} alphas {alphas} x {len(conditions)} "
        f"directions + unsteered) = {n_rows} generations of {T} tokens, window {W}, "
        f"torch threads {args.threads}, {args.dtype}",
        flush=True,
    )

    # warm-up (first forward passes allocate; not timed)
    steering.run_sweep(bridge, prompts[:2], configs[:2], 2, W, args.batch_size, progress=False)
    per_config_generate(bridge, prompts[:2], configs[1:2], 2, W)

    timings = {}
    t0 = time.perf_counter()
    batched = steering.run_sweep(bridge, prompts, configs, T, W, args.batch_size, progress=False)
    timings["batched"] = time.perf_counter() - t0
    print(f"batched run_sweep: {timings['batched']:.1f} s", flush=True)

    t0 = time.perf_counter()
    baseline = per_config_generate(bridge, prompts, configs, T, W)
    timings["per_config_generate"] = time.perf_counter() - t0
    print(f"one generate() per configuration: {timings['per_config_generate']:.1f} s", flush=True)

    if not args.skip_per_config_ours:
        t0 = time.perf_counter()
        for config in configs:
            steering.run_sweep(bridge, prompts, [config], T, W, args.batch_size, progress=False)
        timings["per_config_ours"] = time.perf_counter() - t0
        print(f"one run_sweep per configuration: {timings['per_config_ours']:.1f} s", flush=True)

    by_pair = {
        (i, j): g.tokens for (i, j), g in zip(_pairs(prompts, configs), batched, strict=True)
    }
    same = sum(by_pair[k] == baseline[k] for k in by_pair)
    speedup = timings["per_config_generate"] / timings["batched"]
    print()
    print(f"speedup vs one generate() per configuration: {speedup:.1f}x   (goal >= {GOAL:g}x)")
    if "per_config_ours" in timings:
        print(
            "speedup vs one batched loop per configuration: "
            f"{timings['per_config_ours'] / timings['batched']:.1f}x"
        )
    note = "" if same == n_rows else " (rest: float rounding across batch shapes, greedy near-ties)"
    print(f"identical generations (batched vs generate() per configuration): {same}/{n_rows}{note}")
    results = {
        "model": model,
        "n_prompts": len(prompts),
        "n_configs": len(configs),
        "layers": layers,
        "alphas_relative": alphas,
        "conditions": conditions,
        "max_new_tokens": T,
        "window": W,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "dtype": args.dtype,
        "seconds": timings,
        "speedup_vs_generate": speedup,
        "identical_generations": same,
        "generations": n_rows,
        "goal": GOAL,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _pairs(prompts, configs):
    return [(i, j) for i in range(len(prompts)) for j in range(len(configs))]


if __name__ == "__main__":
    main()
