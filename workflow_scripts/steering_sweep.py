"""steer_sweep: model + vectors + activations -> results/steering/{dataset}/{model}/samples.csv
(+ fluency.csv per configuration, measurements.csv per prompt for effect_sizes).

One batched greedy generation per group of (prompt, configuration) rows: unsteered baseline,
layer x alpha x direction (emotion directions of steering.direction_contrast, PCA components,
seeded variance-matched random controls), then every evaluator's per-sample scores; a
configuration outside the fluency band of the unsteered run gets a note in measurements.csv.
"""

import json
from pathlib import Path

import pandas as pd

from circuitflow import devices, models, steering, store
from circuitflow.workflow import run_logged

SAMPLES = "samples.csv"
FLUENCY = "fluency.csv"


def main(smk):
    p = smk.params
    params = steering.SteeringParams.from_config(p.steering)
    rows = store.read_samples(smk.input.dataset)
    bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=devices.job_device(p.device))
    table, summary = steering.sweep_table(
        bridge,
        rows,
        params,
        dataset=p.dataset,
        model=p.model,
        labels=p.labels,
        baseline=p.baseline,
        vectors_path=smk.input.vectors,
        activations_path=smk.input.activations,
        prepend_bos=p.prepend_bos,
        base_seed=p.seed,
        device=devices.job_device(p.device),
    )
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / SAMPLES, index=False, float_format="%.6g")
    # the statistics phase's input, from the table as written
    written = pd.read_csv(out / SAMPLES, float_precision="round_trip")
    band = params.fluency_band()
    fluency = steering.fluency_table(written, band)
    fluency.to_csv(out / FLUENCY, index=False, float_format="%.6g")
    summary["outside_fluency_band"] = int((fluency["note"] != "").sum())
    steering.sample_measurements(written, p.metrics, band).to_csv(
        out / store.MEASUREMENTS_FILE, index=False
    )
    print(json.dumps(summary))
    store.write_manifest(
        out,
        kind="steering",
        inputs={
            "dataset": smk.input.dataset,
            "model": smk.input.model,
            "activations": smk.input.activations,
            "vectors": smk.input.vectors,
        },
        params={
            "dataset": p.dataset,
            "model": p.model,
            "dtype": p.dtype,
            "prepend_bos": p.prepend_bos,
            "baseline": p.baseline,
            "steering": dict(p.steering),
            "metrics": list(p.metrics),
        },
        seeds={"random_directions": list(params.random_seeds), "base": p.seed},
        extra={"summary": summary},
    )


run_logged(snakemake, main)  # noqa: F821
