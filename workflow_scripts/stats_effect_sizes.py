"""effect_sizes: every phase's artifacts -> results/stats/effect_sizes.csv (+ manifest sidecar).

vectors stores (held-out separability), patching CSVs (residual recovery, head patching and
ablation, directional ablation), steering samples.csv (steered vs unsteered and vs random
controls), alignment CSVs (overlap vs random subspaces and shuffled maps), SAE feature tables
(feature AUROC) and any measurements.csv (the generic per-unit layout of circuitflow.store).
"""

import json
from pathlib import Path

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged

PATCHING_FILES = ("residual.csv", "heads.csv", "directional_ablation.csv")


def read_csv(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; rebuild its phase with snakemake")
    return pd.read_csv(path, keep_default_na=True)


def vectors_rows(paths, p):
    rows = []
    for path in paths:
        ds = store.open_dataset(path)
        rows += stats.separation_rows(
            projection=ds["projection"].values,
            hooks=[str(h) for h in ds["hook"].values],
            positions=[str(x) for x in ds["position"].values],
            conditions=[str(x) for x in ds["condition"].values],
            labels=ds["label"].values,
            split=ds["split"].values,
            baseline=ds.attrs["baseline"],
            dataset=ds.attrs["dataset"],
            model=ds.attrs["model"],
            seed=p.seed,
            n_resamples=p.stats["bootstrap_resamples"],
            confidence_level=p.stats["confidence_level"],
            min_n=p.stats["min_n"],
        )
    return rows


def measurements(smk, p):
    """Long per-unit measurements of every phase with per-sample data."""
    frames = []
    for path in smk.input.patching:
        frames.append(stats.patching_residual_measurements(read_csv(f"{path}/residual.csv")))
        frames.append(stats.patching_head_measurements(read_csv(f"{path}/heads.csv")))
        frames.append(
            stats.directional_ablation_measurements(read_csv(f"{path}/directional_ablation.csv"))
        )
    for path in smk.input.steering:
        frames.append(
            stats.steering_measurements(
                read_csv(f"{path}/samples.csv"), p.stats["steering_metrics"]
            )
        )
    for path in smk.input.measurements:
        frames.append(stats.validate_measurements(read_csv(path), source=str(path)))
    frames = [stats.validate_measurements(f, source="adapter") for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def main(smk):
    p = smk.params
    s = p.stats
    boot = {
        "seed": p.seed,
        "n_resamples": s["bootstrap_resamples"],
        "confidence_level": s["confidence_level"],
    }
    rows = vectors_rows(smk.input.vectors, p)
    print(f"vectors: {len(rows)} rows")
    m = measurements(smk, p)
    skipped = []
    if m is not None:
        new, skipped = stats.effect_rows(m, min_n=s["min_n"], **boot)
        rows += new
        print(
            f"measurements: {len(m)} values -> {len(new)} rows, {len(skipped)} comparisons left out"
        )
    for path in smk.input.alignment:
        table = read_csv(path)
        manifest = store.read_manifest(path)
        table["n_random"] = manifest["params"]["alignment"]["n_random"]
        table["n_shuffles"] = manifest["params"]["alignment"]["n_shuffles"]
        new, skip = stats.alignment_rows(table, ks=s["alignment_k"])
        rows += new
        skipped += skip
        print(f"{path}: {len(new)} rows")
    sae_rows = []
    for path in smk.input.sae:
        metrics = json.loads(Path(f"{path}/metrics.json").read_text())
        baseline = p.baselines[metrics["dataset"]]
        sae_rows += stats.sae_feature_rows(
            read_csv(f"{path}/features.csv"),
            metrics,
            baseline,
            top_n=s["sae_top_features"],
            confidence_level=s["confidence_level"],
        )
    rows += stats.sae_family_sizes(sae_rows)
    print(f"sae: {len(sae_rows)} rows")
    table = stats.finalize(rows)
    table.to_csv(smk.output[0], index=False, float_format="%.6g")
    for line in skipped:
        print(f"left out: {line}")
    print(f"{len(table)} rows; {int((table.p_fdr_bh < 0.05).sum())} with p_fdr_bh < 0.05")
    store.write_manifest(
        smk.output[0],
        kind="effect_sizes",
        inputs={name: list(smk.input[name]) for name in smk.input.keys()},
        params={"stats": dict(s), "baselines": dict(p.baselines)},
        seeds={"bootstrap": p.seed},
        extra={"n_rows": len(table), "n_left_out": len(skipped)},
    )


run_logged(snakemake, main)  # noqa: F821
