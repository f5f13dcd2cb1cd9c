"""Extraction benchmark: circuitflow.extract.extract_to_zarr versus a seed-style full cache.

Measures, in one run and on one loaded model, tokens/s and bytes on disk of

- ours: ``extract_to_zarr`` with the extract settings of ``config.yaml`` (schema defaults
  applied: all layers, resid_pre + resid_post at 3 positions, per-head results, per-token
  layers of the model entry, float16 Blosc-zstd), over the TRAIN split;
- seed-style: one ``bridge.run_with_cache(tokens)`` per prompt keeping every hook (the full
  cache), every array moved to CPU float32 and pickled, one file per prompt. The arrays are
  pickled as numpy arrays, which is the faster choice (pickling torch tensors is ~15x slower
  on CPU), so the baseline is a generous one. It runs on the first ``--baseline-limit``
  prompts; its per-token rate and bytes per token are extrapolated to the full set.

- forward-only: the same model, the same right-padded batches in the same order and the same
  tokens, with no hooks and nothing stored (``bridge(tokens, return_type=None)``), the
  throughput ceiling of any extraction; and the same forward stopped after the last block
  that extraction needs (one hook that stops it, nothing stored), which isolates the cost of
  recording from the unembedding that extraction skips.

Goals: tokens/s ratio (ours / seed-style) >= 10x, bytes ratio <= 0.3x, ours / forward-only
tokens/s >= 0.8x.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract.py --limit 200 --baseline-limit 32
    # GPU roofline run (random init of the same shape):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract.py --device cuda --dtype bfloat16 \\
        --random-init --out results/benchmarks/extract_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_HINT = "make it with `make run` or `.venv/bin/snakemake --cores 2 {target}` in {root}"
TOKENS_PER_S_GOAL = 10.0  # ours / seed-style, at least
BYTES_GOAL = 0.3  # ours / seed-style, at most
FORWARD_GOAL = 0.8  # ours / forward-only tokens/s, at least


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=ROOT / "resources/models/smollm2-135m", type=Path)
    p.add_argument("--model", default=None, help="config.yaml model entry (default: folder name)")
    p.add_argument("--dataset-dir", default=ROOT / "results/datasets/emotion", type=Path)
    p.add_argument("--dataset", default="emotion", help="config.yaml dataset entry")
    p.add_argument("--config", default=ROOT / "config.yaml", type=Path)
    p.add_argument(
        "--from-sources",
        action="store_true",
        help="build the rows from the dataset's prompt/frame sources (no results/datasets needed)",
    )
    p.add_argument("--limit", type=int, default=None, help="train prompts to use (default: all)")
    p.add_argument("--baseline-limit", type=int, default=64, help="prompts for the seed-style run")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--random-init",
        action="store_true",
        help="randomly initialised model with the config of --model-dir (GPU roofline run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 bf16 dense peak")
    p.add_argument("--tmp-dir", default=None, help="where the temporary outputs go")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    if args.baseline_limit < 1:
        p.error(f"--baseline-limit must be >= 1, got {args.baseline_limit}")
    return args


def make_hint(path: Path, default: str) -> str:
    path = Path(os.path.abspath(path))  # not resolve(): outputs may be cache symlinks
    target = path.relative_to(ROOT) if path.is_relative_to(ROOT) else default
    return MAKE_HINT.format(target=target, root=ROOT)


def fail(message: str) -> None:
    print(f"benchmarks/extract.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def dir_bytes(path: str | os.PathLike) -> int:
    """Sum of file sizes under ``path`` (apparent sizes, as os.walk finds them)."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def load_config(path: Path) -> dict:
    """config.yaml with the schema's defaults filled in, as the Snakefile does."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, schema=str(ROOT / "schemas/config.schema.yaml"), set_default=True)
    return config


def load_rows(args, config: dict) -> list[dict]:
    from circuitflow import datasets, store

    if args.from_sources:
        entry = config["datasets"][args.dataset]
        sources = {k: ROOT / entry[k] for k in ("prompts", "frames") if entry.get(k)}
        rows = datasets.build_prompt_dataset(
            sources.get("prompts"),
            sources.get("frames"),
            entry["labels"],
            entry["test_fraction"],
            config["seed"],
        )
    else:
        if not (args.dataset_dir / store.SAMPLES_FILE).exists():
            fail(
                f"{args.dataset_dir}: no built dataset; "
                + make_hint(args.dataset_dir, "results/datasets/<dataset>")
                + ", or pass --from-sources"
            )
        rows = store.read_samples(args.dataset_dir)
    train = [r for r in rows if r["split"] == "train"]
    if not train:
        fail(f"dataset {args.dataset!r}: no rows in the train split")
    return train[: args.limit] if args.limit else train


def random_init_folder(model_dir: Path, out: Path, seed: int) -> Path:
    """A randomly initialised model of ``model_dir``'s config, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def model_shape(model_dir: Path) -> dict:
    """Parameter counts from the config, on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    embed = {id(p) for p in model.get_input_embeddings().parameters()}
    out_emb = model.get_output_embeddings()
    if out_emb is not None:
        embed |= {id(p) for p in out_emb.parameters()}
    params = list(model.parameters())  # tied weights appear once
    text = cfg.get_text_config()
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return {
        "n_params": sum(p.numel() for p in params),
        "n_non_embedding_params": sum(p.numel() for p in params if id(p) not in embed),
        "n_layers": text.num_hidden_layers,
        "d_attn": n_heads * head_dim,
    }


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_ours(bridge, rows, cfg, workdir: Path, device: str) -> dict:
    from circuitflow import extract

    warm = workdir / "warmup.zarr"
    extract.extract_to_zarr(bridge, rows[: cfg.batch_size], cfg, warm, progress=False)
    sync(device)
    out = workdir / "ours.zarr"
    t0 = time.perf_counter()
    info = extract.extract_to_zarr(bridge, rows, cfg, out, progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "prompts": info["n_samples"],
        "tokens": info["n_tokens"],
        "seconds": seconds,
        "bytes": dir_bytes(out),
        "measured_prompts": info["n_samples"],
    }


def extraction_batches(toks, cfg) -> list[list[int]]:
    """The batches extract_to_zarr runs: per chunk of samples, sorted by length."""
    n = len(toks)
    chunk = min(cfg.chunk_samples, n)
    out = []
    for c0 in range(0, n, chunk):
        idx = sorted(range(c0, min(n, c0 + chunk)), key=lambda i: (len(toks[i].ids), i))
        out += [idx[b : b + cfg.batch_size] for b in range(0, len(idx), cfg.batch_size)]
    return out


def run_forward_only(bridge, toks, cfg, device: str, stop_after: str | None = None) -> dict:
    """Plain forwards over the extraction's batches; ``stop_after``: a hook name at which a
    hook stops the pass (the last block extraction reads), else the full forward."""
    import torch

    from circuitflow.core.hooks import StopForward, attach_bridge, run_to_stop
    from circuitflow.core.tokens import pad_id, right_pad

    pad = pad_id(bridge.tokenizer)
    batches = [
        torch.as_tensor(right_pad([toks[i].ids for i in sel], pad)[0]).to(device)
        for sel in extraction_batches(toks, cfg)
    ]

    def stop(x):
        raise StopForward

    hooks = [] if stop_after is None else [(stop_after, stop)]
    with torch.no_grad(), attach_bridge(bridge, hooks):
        run_to_stop(bridge, batches[0], return_type=None)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for ids in batches:
            run_to_stop(bridge, ids, return_type=None)
        sync(device)
        seconds = time.perf_counter() - t0
    n_tokens = int(sum(len(t.ids) for t in toks))
    return {
        "prompts": len(toks),
        "tokens": n_tokens,
        "seconds": seconds,
        "bytes": 0,
        "measured_prompts": len(toks),
    }


def seed_style_one(bridge, ids, device: str, path: Path) -> None:
    """The baseline for one prompt: full cache -> CPU float32 -> one pickle file."""
    import torch

    tokens = torch.from_numpy(ids)[None].to(device)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    arrays = {name: t.detach().to("cpu", torch.float32).numpy() for name, t in cache.items()}
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=pickle.HIGHEST_PROTOCOL)


def run_seed_style(bridge, toks, n: int, workdir: Path, device: str) -> dict:
    warm = workdir / "warmup"
    warm.mkdir()
    seed_style_one(bridge, toks[0].ids, device, warm / "0.pkl")
    sync(device)
    out = workdir / "seed_style"
    out.mkdir()
    t0 = time.perf_counter()
    for i, t in enumerate(toks[:n]):
        seed_style_one(bridge, t.ids, device, out / f"{i:06d}.pkl")
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "prompts": n,
        "tokens": int(sum(len(t.ids) for t in toks[:n])),
        "seconds": seconds,
        "bytes": dir_bytes(out),
        "measured_prompts": n,
    }


def scaled(measured: dict, prompts: int, tokens: int) -> dict:
    """A measured subset scaled to ``tokens`` at its own per-token rate and bytes per token."""
    per_token_s = measured["seconds"] / measured["tokens"]
    per_token_b = measured["bytes"] / measured["tokens"]
    return {
        "prompts": prompts,
        "tokens": tokens,
        "seconds": per_token_s * tokens,
        "bytes": int(round(per_token_b * tokens)),
        "measured_prompts": measured["prompts"],
        "measured_tokens": measured["tokens"],
        "measured_seconds": measured["seconds"],
        "measured_bytes": measured["bytes"],
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def print_table(results: dict) -> None:
    head = ("method", "prompts", "tokens", "seconds", "tokens/s", "bytes", "bytes/token")
    lines = []
    for name, r in results.items():
        lines.append(
            (
                name,
                str(r["prompts"]),
                str(r["tokens"]),
                f"{r['seconds']:.2f}",
                f"{r['tokens'] / r['seconds']:,.0f}",
                human_bytes(r["bytes"]),
                human_bytes(r["bytes"] / r["tokens"]),
            )
        )
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    for row in [head, *lines]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not (args.model_dir / "config.json").exists():
        fail(
            f"{args.model_dir}: no prepared model; "
            + make_hint(args.model_dir, "resources/models/<model>")
        )
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device visible to torch; use --device cpu")

    from circuitflow import extract, models, store
    from circuitflow.core import tokens

    config = load_config(args.config)
    model_name = args.model or args.model_dir.name
    if model_name not in config["models"]:
        fail(
            f"model {model_name!r} is not in {args.config}; pass --model, one of "
            + ", ".join(config["models"])
        )
    if args.dataset not in config["datasets"]:
        fail(
            f"dataset {args.dataset!r} is not in {args.config}; one of "
            + ", ".join(config["datasets"])
        )
    entry = config["models"][model_name]
    rows = load_rows(args, config)

    with tempfile.TemporaryDirectory(prefix="circuitflow-bench-", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir
        if args.random_init:
            model_dir = random_init_folder(args.model_dir, tmp / "random-init", args.seed)
        bridge = models.load_bridge(model_dir, dtype=args.dtype, device=args.device)
        settings = dict(config["extract"])
        layers = settings.pop("layers")
        cfg = extract.ExtractConfig(
            n_layers=bridge.cfg.n_layers,
            layers=None if layers == "all" else tuple(layers),
            sites=tuple(settings.pop("sites")),
            per_token_layers=tuple(entry.get("per_token_layers", ())),
            prepend_bos=entry.get("prepend_bos", True),
            model_name=model_name,
            **settings,
        )
        toks = tokens.tokenize(bridge.tokenizer, rows, cfg.prepend_bos)
        n_base = min(args.baseline_limit, len(rows))

        ours_dir, seed_dir = tmp / "ours", tmp / "seed"
        ours_dir.mkdir()
        seed_dir.mkdir()
        ours = run_ours(bridge, rows, cfg, ours_dir, args.device)
        forward = run_forward_only(bridge, toks, cfg, args.device)
        last_hook = max(cfg.hooks(), key=lambda h: store.parse_hook_name(h)[0])
        last_layer = store.parse_hook_name(last_hook)[0]
        forward_stop = run_forward_only(
            bridge, toks, cfg, args.device, store.hook_name(last_layer, "hook_resid_post")
        )
        seed_measured = run_seed_style(bridge, toks, n_base, seed_dir, args.device)

    seed = scaled(seed_measured, ours["prompts"], ours["tokens"])
    rate = {
        k: r["tokens"] / r["seconds"]
        for k, r in (("ours", ours), ("seed", seed), ("forward", forward), ("stop", forward_stop))
    }
    tok_ratio = rate["ours"] / rate["seed"]
    forward_ratio = rate["ours"] / rate["forward"]
    stop_ratio = rate["ours"] / rate["stop"]
    bytes_ratio = ours["bytes"] / seed["bytes"]

    tag = f"{model_name}{' (random init)' if args.random_init else ''}"
    print(
        f"\nextraction benchmark: {tag}, {args.dataset} train split, {ours['prompts']} prompts, "
        f"{ours['tokens']} tokens (BOS included), device {args.device}, dtype {args.dtype}"
    )
    print(
        f"ours: extract_to_zarr, layers={layers}, sites={list(cfg.sites)}, heads at every layer, "
        f"per_token_layers={list(cfg.per_token_layers)}, batch {cfg.batch_size}, "
        f"{cfg.store_dtype} blosc-zstd-{cfg.compression_level}"
    )
    print("seed-style: run_with_cache per prompt, every hook, CPU float32, one pickle per prompt")
    print(
        "forward-only: the same batches, no hooks, nothing stored; (to block "
        f"{last_layer}): stopped after blocks.{last_layer}.hook_resid_post"
    )
    print()
    subset = n_base < ours["prompts"]
    fwd = {"forward-only": forward, f"forward-only (to block {last_layer})": forward_stop}
    if subset:
        print_table(
            {
                "ours": ours,
                **fwd,
                "seed-style (scaled)": seed,
                "seed-style (measured)": seed_measured,
            }
        )
    else:
        print_table({"ours": ours, **fwd, "seed-style": seed_measured})
    if subset:
        print(
            f"\nNOTE: seed-style was measured on a subset of {n_base} prompts "
            f"({seed_measured['tokens']} tokens) and scaled to {ours['tokens']} tokens at its "
            "measured tokens/s and bytes/token (row 'seed-style (scaled)')."
        )
    print()
    print(
        f"tokens/s ratio (ours / seed-style): {tok_ratio:.1f}x   (goal >= {TOKENS_PER_S_GOAL:g}x)"
    )
    print(f"bytes ratio (ours / seed-style): {bytes_ratio:.4f}x   (goal <= {BYTES_GOAL:g}x)")
    print(
        f"tokens/s ratio (ours / forward-only): {forward_ratio:.2f}x   (goal >= {FORWARD_GOAL:g}x);"
        f" ours / forward-only to block {last_layer}: {stop_ratio:.2f}x"
    )

    roofline = None
    if args.device == "cuda":
        shape = model_shape(args.model_dir)
        mean_len = ours["tokens"] / ours["prompts"]
        # Causal attention, per token: QK^T + AV over ~mean_len/2 keys = 2 * n_layers * L * d_attn.
        attn = 2 * shape["n_layers"] * mean_len * shape["d_attn"]
        flops_per_token = 2 * shape["n_non_embedding_params"] + attn
        peak = args.peak_tflops * 1e12 / flops_per_token
        roofline = {
            **shape,
            "mean_tokens_per_prompt": mean_len,
            "attention_flops_per_token": attn,
            "flops_per_token": flops_per_token,
            "peak_tflops": args.peak_tflops,
            "roofline_tokens_per_s": peak,
            "achieved_fraction": rate["ours"] / peak,
            "device_name": torch.cuda.get_device_name(),
        }
        print(
            f"\nroofline ({roofline['device_name']}, {args.peak_tflops:g} TFLOP/s peak): "
            f"{flops_per_token / 1e6:.1f} MFLOP/token = "
            f"2 x {shape['n_non_embedding_params'] / 1e6:.1f}M "
            f"non-embedding params + {attn / 1e6:.2f}M attention (L={mean_len:.1f})"
        )
        print(
            f"achieved {rate['ours']:,.0f} tokens/s vs roofline {peak:,.0f} tokens/s "
            f"({100 * roofline['achieved_fraction']:.2f}% of peak)"
        )

    results = {
        "model": model_name,
        "model_dir": str(args.model_dir),
        "random_init": args.random_init,
        "dataset": args.dataset,
        "split": "train",
        "device": args.device,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "extract_config": {
            "layers": layers,
            "sites": list(cfg.sites),
            "per_token_layers": list(cfg.per_token_layers),
            "batch_size": cfg.batch_size,
            "chunk_samples": cfg.chunk_samples,
            "store_dtype": cfg.store_dtype,
            "compression_level": cfg.compression_level,
            "prepend_bos": cfg.prepend_bos,
        },
        "ours": {**ours, "tokens_per_s": rate["ours"]},
        "seed_style": {**seed, "tokens_per_s": rate["seed"], "scaled": subset},
        "forward_only": {**forward, "tokens_per_s": rate["forward"]},
        "forward_only_to_last_block": {**forward_stop, "tokens_per_s": rate["stop"]},
        "tokens_per_s_ratio": tok_ratio,
        "bytes_ratio": bytes_ratio,
        "forward_only_ratio": forward_ratio,
        "forward_only_to_last_block_ratio": stop_ratio,
        "goals": {
            "tokens_per_s_ratio_min": TOKENS_PER_S_GOAL,
            "bytes_ratio_max": BYTES_GOAL,
            "forward_only_ratio_min": FORWARD_GOAL,
        },
        "meets_goals": tok_ratio >= TOKENS_PER_S_GOAL
        and bytes_ratio <= BYTES_GOAL
        and forward_ratio >= FORWARD_GOAL,
        "roofline": roofline,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
