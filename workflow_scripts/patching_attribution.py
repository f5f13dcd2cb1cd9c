"""attribution_patching: frames + model -> results/attribution/{dataset}/{model}/.

attribution.csv.gz (AtP estimate of every residual site, MLP output and head per pair),
screen.csv (the candidates exact patching runs: top and seeded check), measurements.csv
(the estimates on the exact patching frames, per frame, for effect_sizes), manifest.json.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see patching_model.py

import pandas as pd

from circuitflow import devices, models, patching, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    out = Path(smk.output[0])
    rows = store.read_samples(smk.input.dataset)
    cfg = patching.PatchConfig.from_params(p.patching, p.seed)
    acfg = patching.AttributionConfig.from_config(cfg.attribution)
    bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=devices.job_device(p.device))
    result = patching.run_attribution(
        bridge, rows, cfg, p.labels, p.baseline, prepend_bos=p.prepend_bos, model_name=p.model
    )
    info = result["info"]
    table = result["attribution"]
    table.insert(0, "model", p.model)
    table.insert(0, "dataset", p.dataset)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(
        out / patching.ATTRIBUTION_FILE,
        index=False,
        float_format="%.6g",
        compression={"method": "gzip", "mtime": 0},  # no timestamp: reruns give the same bytes
    )
    chosen = patching.screen(table, acfg, p.seed)
    chosen.to_csv(out / patching.SCREEN_FILE, index=False, float_format="%.6g")
    tested = [f for f in info["exact_frames"] if f not in set(info["screen_frames"])]
    m = patching.attribution_measurements(table, tested)
    m.to_csv(out / store.MEASUREMENTS_FILE, index=False, float_format="%.6g")
    info["n_rows"] = len(table)
    info["n_frames_tested"] = len(tested)
    print(pd.Series(info).to_string())
    print(chosen[chosen["chosen"] != ""].to_string())
    store.write_manifest(
        out,
        kind="attribution",
        inputs={"dataset": smk.input.dataset, "model": smk.input.model},
        params=patching.manifest_params(p),
        seeds={"seed": p.seed},
        extra={"run": info},
    )


run_logged(snakemake, main)  # noqa: F821
