"""DAG-scale benchmark: how fast Snakemake plans the workflow, and what a small change reruns.

Measured in one run, each against a named baseline:

- dry-run time and job count of a large config (configs/large-sweep.yaml with a third text
  model, every layer, 10 relative steering alphas, 4 labels) vs the default config's dry run
  (baseline); goal: large dry run under 5 s;
- with ``--workdir`` (a finished run of the default target): the no-op rerun time (a dry run
  that finds nothing to do) and the jobs a changed steering alpha reruns, by rule; goal:
  steering and the statistics downstream of it only.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dag.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dag.py --workdir .   # after `make run`
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET = "results/stats/effect_sizes.csv"
GOAL_S = 5.0
LARGE_ALPHAS = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]
# rules a changed steering alpha may rerun: steering itself and what reads its measurements
STEERING_DOWNSTREAM = {
    "steer_sweep",
    "effect_sizes",
    "power_analysis",
    "k_selection",
    "plot_steering",
    "summary",
}


def large_config() -> dict:
    config = yaml.safe_load((ROOT / "configs" / "large-sweep.yaml").read_text())
    smollm = config["models"]["smollm2-135m"]
    config["models"]["smollm2-135m-bf16"] = {**smollm, "dtype": "bfloat16"}
    config.setdefault("extract", {})["layers"] = "all"
    steering = config.setdefault("steering", {})
    steering["alphas_relative"] = LARGE_ALPHAS
    config["datasets"]["emotion"]["labels"] = ["gratitude", "anger", "apology", "neutral"]
    return _absolute(config)


def _absolute(node):
    """Relative paths of files in the repo made absolute, so the config plans from a tmp dir."""
    if isinstance(node, dict):
        return {key: _absolute(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_absolute(value) for value in node]
    if isinstance(node, str) and "/" in node and (ROOT / node).exists():
        return str(ROOT / node)
    return node


def dry_run(workdir: Path, configfile: Path | None, repeats: int) -> tuple[float, Counter]:
    """Best wall time of ``snakemake -n`` over ``repeats``, and the planned jobs by rule."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += ["-n", TARGET, "--quiet", "rules"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    best, out = float("inf"), ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"benchmarks/dag.py: dry run failed:\n{tail}")
        out = proc.stdout + proc.stderr
    return best, _jobs(out)


def _jobs(text: str) -> Counter:
    """Jobs by rule from Snakemake's job-stats table (empty: nothing to do)."""
    jobs = Counter()
    in_table = False
    for line in text.splitlines():
        if re.match(r"^job\s+count", line.strip()):
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                jobs[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
    return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, help="a finished default run, for no-op / alpha")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        default = _absolute(yaml.safe_load((ROOT / "config.yaml").read_text()))
        (tmp / "default.yaml").write_text(yaml.safe_dump(default))
        base_s, base_jobs = dry_run(tmp, tmp / "default.yaml", args.repeats)
        (tmp / "large.yaml").write_text(yaml.safe_dump(large_config()))
        large_s, large_jobs = dry_run(tmp, tmp / "large.yaml", args.repeats)
    n_base, n_large = sum(base_jobs.values()), sum(large_jobs.values())
    print(f"default config dry run from scratch (baseline): {base_s:.2f} s, {n_base} jobs")
    shape = f"3 models x all layers x {len(LARGE_ALPHAS)} alphas x 4 labels"
    print(
        f"large config dry run from scratch ({shape}): {large_s:.2f} s, {n_large} jobs;"
        f" {large_s / base_s:.2f}x the "
        f"default's time; goal < {GOAL_S:g} s: {'met' if large_s < GOAL_S else 'MISSED'}"
    )
    if args.workdir is None:
        return 0

    work = args.workdir.resolve()
    noop_s, noop_jobs = dry_run(work, None, args.repeats)
    state = "nothing to do" if not noop_jobs else f"{sum(noop_jobs.values())} jobs pending"
    print(f"no-op rerun (dry run of a finished run): {noop_s:.2f} s, {state}")
    config = yaml.safe_load((work / "config.yaml").read_text())
    steering = config.setdefault("steering", {})
    alphas = list(steering.get("alphas_relative") or [0.1])
    alphas[-1] = round(alphas[-1] * 1.5, 6)
    steering["alphas_relative"] = alphas
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=work, delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)  # Snakemake compares params as text
    try:
        _, changed = dry_run(work, Path(f.name), 1)
    finally:
        os.unlink(f.name)
    extra = sorted(set(changed) - STEERING_DOWNSTREAM)
    listing = ", ".join(f"{rule} {n}" for rule, n in sorted(changed.items()))
    verdict = "met" if changed and not extra else f"MISSED (also {extra})" if extra else "none"
    print(f"one steering alpha changed reruns: {listing}; goal steering + stats only: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
