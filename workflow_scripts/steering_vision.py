"""steer_vision: model + image activations + vectors + probes -> results/steering/{dataset}/
{model}/ (samples.csv: readout shift per pair x hook x alpha x direction, controls matched in
the variance they carry; measurements.csv: the same per source photo for effect_sizes)."""

import time
from pathlib import Path

import pandas as pd

from circuitflow import devices, steering, store
from circuitflow.models import readout as ro
from circuitflow.workflow import run_logged

DESCRIPTIONS = "descriptions.csv"


def main(smk):
    p = smk.params
    rcfg = ro.ReadoutConfig.from_config(p.vision)
    cfg = steering.VisionSteerConfig.from_config(p.vision)
    acts = smk.input.activations
    # without the probe, the hooks before the last are steered, read at the CLIP embedding
    run = ro.load_run_inputs(
        rcfg,
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
    steer = steering.steer_hooks(hooks, readout, cfg.layers)
    directions = ro.store_directions(smk.input.vectors, steer, rcfg.attributes, cfg.position)
    # train-split pooled activations at each steered hook: the steering scale and the
    # covariance the matched controls are drawn from
    control_x = ro.train_pooled(acts, steer, cfg.position)
    norms = {h: steering.mean_pooled_norm(x) for h, x in control_x.items()}
    images = store.read_images(smk.input.dataset)
    start = time.perf_counter()
    table = steering.run_steering(
        vm, images, pairs, readouts, directions, steer, norms, cfg, p.seed, hooks, clip, control_x
    )
    seconds = round(time.perf_counter() - start, 1)
    t = pd.DataFrame(table)
    t.insert(0, "model", p.model)
    t.insert(0, "dataset", p.dataset)
    t.to_csv(smk.output.samples, index=False, float_format="%.6g")
    measured = steering.image_measurement_rows(table, p.dataset, p.model, cfg.position)
    described = Path(smk.output.samples).with_name(DESCRIPTIONS)
    described.unlink(missing_ok=True)
    if cfg.describe_tokens and vm.backend == "hf":
        tower = steering.description_hooks(hooks, steer, readout)
        if tower:
            tower_dirs = ro.store_directions(
                smk.input.vectors, tower, rcfg.attributes, cfg.position
            )
            tower_x = ro.train_pooled(acts, tower, cfg.position)
            tower_norms = {h: steering.mean_pooled_norm(x) for h, x in tower_x.items()}
            prompt = steering.description_prompt_ids(smk.input.model, cfg.describe_prompt)
            rows_d = steering.run_descriptions(
                vm,
                images,
                pairs,
                tower_dirs,
                tower,
                tower_norms,
                cfg,
                cfg.describe_tokens,
                prompt,
                p.seed,
                all_hooks=hooks,
                control_x=tower_x,
            )
            d = pd.DataFrame(rows_d)
            d.insert(0, "model", p.model)
            d.insert(0, "dataset", p.dataset)
            d.to_csv(described, index=False, float_format="%.6g")
            measured += steering.description_measurement_rows(
                rows_d, p.dataset, p.model, cfg.position
            )
    m = pd.DataFrame(measured)
    m.to_csv(smk.output.measurements, index=False, float_format="%.6g")
    summary = t.groupby(["readout_kind", "arm", "attribute", "alpha", "layer"])["gap_closed"]
    summary = summary.median()
    print(summary.unstack("layer").round(2).to_string())
    store.write_manifest(
        Path(smk.output.samples).parent,
        kind="steering_vision",
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
                "hooks": steer,
                "seconds": seconds,
            }
        },
    )


run_logged(snakemake, main)  # noqa: F821
