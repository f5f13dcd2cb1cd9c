"""effect_sizes: every phase's measurements and summaries -> results/stats/effect_sizes.csv.

Two generic inputs (layouts in circuitflow.store): ``measurements.csv`` (per-unit values:
paired, independent or rank designs) and ``summaries.csv`` (one observed value per comparison:
single-case and permutation designs). Comparisons that cannot be tested stay as rows (p = 1,
the reason in ``note``) and are listed in the log. Plus a manifest sidecar.
"""

from pathlib import Path

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def read_csv(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; rebuild its phase with snakemake")
    return pd.read_csv(path, keep_default_na=True, float_precision="round_trip")


def measurements(smk):
    """Long per-unit measurements of every phase with per-sample data."""
    frames = []
    for path in smk.input.measurements:
        path = store.measurements_file(path)
        frames.append(stats.validate_measurements(read_csv(path), source=str(path)))
    frames = [stats.validate_measurements(f, source="adapter") for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def summaries(smk):
    """Per-comparison summaries of every phase without per-unit values."""
    frames = []
    for path in smk.input.summaries:
        path = store.summaries_file(path)
        frame = read_csv(path)
        if len(frame):
            frames.append(stats.validate_summaries(frame, source=str(path)))
    return pd.concat(frames, ignore_index=True) if frames else None


def main(smk):
    p = smk.params
    s = p.stats
    boot = {
        "seed": p.seed,
        "n_resamples": s["bootstrap_resamples"],
        "confidence_level": s["confidence_level"],
    }
    rows, skipped = [], []
    m = measurements(smk)
    if m is not None:
        new, skipped = stats.effect_rows(m, min_n=s["min_n"], headline_n=s["headline_n"], **boot)
        rows += new
        print(
            f"measurements: {len(m)} values -> {len(new)} rows, of which {len(skipped)} "
            "untested (p = 1, reason in note)"
        )
    summ = summaries(smk)
    if summ is not None:
        new, skip = stats.summary_rows(summ, confidence_level=s["confidence_level"])
        rows += new
        skipped += skip
        print(f"summaries: {len(summ)} comparisons -> {len(new)} rows, {len(skip)} untested")
    table = stats.finalize(rows)
    table.to_csv(smk.output[0], index=False, float_format="%.6g")
    for line in skipped:
        print(f"untested: {line}")
    print(f"{len(table)} rows; {int((table.p_fdr_bh < 0.05).sum())} with p_fdr_bh < 0.05")
    store.write_manifest(
        smk.output[0],
        kind="effect_sizes",
        inputs={name: list(smk.input[name]) for name in smk.input.keys()},
        params={"stats": dict(s)},
        seeds={"bootstrap": p.seed},
        extra={"n_rows": len(table), "n_untested": len(skipped)},
    )


run_logged(snakemake, main)  # noqa: F821
