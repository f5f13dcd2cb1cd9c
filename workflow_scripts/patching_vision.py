"""patch_vision: model + image activations + vectors + probes -> results/patching/{dataset}/
{model}/ (recovery.csv: readouts and recovery per pair x hook x mode x arm; measurements.csv:
the same as per-pair measurements for effect_sizes)."""

import time
from pathlib import Path

import pandas as pd

from circuitflow import devices, store
from circuitflow.models import readout as ro
from circuitflow.patching import vision as pv
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    cfg = pv.VisionPatchConfig.from_config(p.vision)
    acts = smk.input.activations
    run = ro.load_run_inputs(
        cfg,
        smk.input.model,
        acts,
        smk.input.probes,
        smk.input.dataset,
        dataset=p.dataset,
        model=p.model,
        baseline=p.baseline,
        dtype=p.dtype,
        device=devices.job_device(p.device),
    )
    vm, hooks, kinds, readout = run.vm, run.hooks, run.kinds, run.readout
    readouts, clip, pairs = run.readouts, run.clip, run.pairs
    patch_hooks = pv.select_hooks(hooks[: hooks.index(readout) + 1], cfg.layers)
    directions = ro.store_directions(smk.input.vectors, patch_hooks, cfg.attributes, cfg.position)
    images = store.read_images(smk.input.dataset)
    start = time.perf_counter()
    control_x = ro.train_pooled(acts, patch_hooks, cfg.position)
    table = pv.run_image_patching(
        vm, images, pairs, readouts, directions, patch_hooks, cfg, p.seed, clip, control_x
    )
    seconds = round(time.perf_counter() - start, 1)
    t = pd.DataFrame(table)
    r2 = t["attribute"].map({a: r.score for a, r in readouts.items()})
    t.insert(0, "readout_r2", r2.where(t["readout_kind"] == "probe"))
    t.insert(0, "readout", t["readout_kind"].where(t["readout_kind"] != "probe", readout))
    t.insert(0, "model", p.model)
    t.insert(0, "dataset", p.dataset)
    t.to_csv(smk.output.recovery, index=False, float_format="%.6g")
    m = pd.DataFrame(pv.image_measurement_rows(table, p.dataset, p.model, cfg.position, readout))
    m.to_csv(smk.output.measurements, index=False, float_format="%.6g")
    valid = t[t["valid"]]
    summary = valid.groupby(["readout_kind", "mode", "arm", "attribute", "layer"])["recovery"]
    summary = summary.median()
    print(summary.unstack("layer").round(2).to_string())
    store.write_manifest(
        Path(smk.output.recovery).parent,
        kind="patching_vision",
        inputs={
            "dataset": smk.input.dataset,
            "model": smk.input.model,
            "activations": acts,
            "vectors": smk.input.vectors,
            "probes": smk.input.probes,
        },
        params={"dataset": p.dataset, "model": p.model, "vision": p.vision},
        seeds={"controls": p.seed},
        extra={
            "summary": {
                "readout": readout,
                "readouts": list(kinds),
                "pairs": len(pairs),
                "hooks": patch_hooks,
                "seconds": seconds,
            }
        },
    )


run_logged(snakemake, main)  # noqa: F821
