"""patch_vision: model + image activations + vectors + probes -> results/patching/{dataset}/
{model}/ (recovery.csv: readouts and recovery per pair x hook x mode x arm; measurements.csv:
the same as per-pair measurements for effect_sizes)."""

import time
from pathlib import Path

import pandas as pd

from circuitflow import patching_vision as pv
from circuitflow import store, vision
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    cfg = pv.VisionPatchConfig.from_config(p.vision)
    acts = smk.input.activations
    vm = vision.load_vision_model(smk.input.model, p.model, dtype=p.dtype, device=p.device)
    hooks = pv.forward_hooks(vm, acts)
    readout = pv.readout_hook(hooks, cfg.readout, p.model)
    readouts = pv.load_readouts(
        acts, smk.input.probes, cfg.attributes, readout, cfg.position, p.baseline
    )
    rows = store.read_samples(smk.input.dataset)
    pairs = pv.select_pairs(rows, cfg.attributes, cfg.split, cfg.levels, p.baseline)
    if not pairs:
        raise pv.VisionPatchingError(
            f"dataset {p.dataset!r}: no (poor, original) pairs of {list(cfg.attributes)} in "
            f"split {cfg.split!r}; set vision.split: all or add the attributes' labels"
        )
    patch_hooks = pv.select_hooks(hooks[: hooks.index(readout) + 1], cfg.layers)
    directions = pv.store_directions(smk.input.vectors, patch_hooks, cfg.attributes, cfg.position)
    images = store.read_images(smk.input.dataset)
    start = time.perf_counter()
    table = pv.run_patching(vm, images, pairs, readouts, directions, patch_hooks, cfg, p.seed)
    seconds = round(time.perf_counter() - start, 1)
    t = pd.DataFrame(table)
    t.insert(0, "readout_r2", t["attribute"].map({a: r.score for a, r in readouts.items()}))
    t.insert(0, "readout", readout)
    t.insert(0, "model", p.model)
    t.insert(0, "dataset", p.dataset)
    t.to_csv(smk.output.recovery, index=False, float_format="%.6g")
    m = pd.DataFrame(pv.measurement_rows(table, p.dataset, p.model, cfg.position, readout))
    m.to_csv(smk.output.measurements, index=False, float_format="%.6g")
    valid = t[t["valid"]]
    summary = valid.groupby(["mode", "arm", "attribute", "layer"])["recovery"].median()
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
                "pairs": len(pairs),
                "hooks": patch_hooks,
                "seconds": seconds,
            }
        },
    )


run_logged(snakemake, main)  # noqa: F821
