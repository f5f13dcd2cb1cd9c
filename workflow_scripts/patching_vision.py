"""patch_vision: model + image activations + vectors + probes -> results/patching/{dataset}/
{model}/ (recovery.csv: readouts and recovery per pair x hook x mode x arm; for a VLM read out
in its LM, head_recovery.csv: per test pair x screened LM head x arm, and heads.csv: per
attribute x head the attention mass on image tokens, AtP screen score and recovery;
measurements.csv: both as per-pair measurements for effect_sizes)."""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from circuitflow import devices, store
from circuitflow.models import readout as ro
from circuitflow.models import take_images
from circuitflow.patching import vision as pv
from circuitflow.patching import vision_heads as vh
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
    m = pv.image_measurement_rows(table, p.dataset, p.model, cfg.position, readout)
    head_rows, heads, head_seconds = _heads(smk, run, cfg, images)
    m += vh.head_measurement_rows(head_rows, p.dataset, p.model, cfg.position, readout)
    pd.DataFrame(m).to_csv(smk.output.measurements, index=False, float_format="%.6g")
    pd.DataFrame(head_rows, columns=vh.PAIR_COLUMNS).to_csv(
        smk.output.head_recovery, index=False, float_format="%.6g"
    )
    heads.to_csv(smk.output.heads, index=False, float_format="%.6g")
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
                "head_seconds": head_seconds,
                "heads_selected": int(heads["selected"].sum()) if len(heads) else 0,
            }
        },
    )


def _heads(smk, run, cfg, images):
    """Head patching of a VLM's LM heads before the readout: (exact rows, heads.csv table,
    seconds); nothing when the readout is not an LM hook or top_k is 0."""
    hcfg = vh.VisionHeadConfig.from_config(smk.params.vision)
    empty = pd.DataFrame(columns=vh.HEAD_COLUMNS)
    on = hcfg.top_k > 0 and bool(run.readouts)
    runner = ro.runner_for(run.vm, run.readouts, None, cfg.position) if on else None
    sites = vh.head_sites(run.vm, runner.readout) if on else []
    if not sites or not hcfg.top_k:
        print("head patching: off (no LM head before the probe readout, or heads.top_k 0)")
        return [], empty, 0.0
    start = time.perf_counter()
    rows = store.read_samples(smk.input.dataset)
    base = smk.params.baseline
    train = ro.select_pairs(rows, cfg.attributes, "train", cfg.levels, base)
    test = ro.select_pairs(rows, cfg.attributes, "test", cfg.levels, base)
    if not train or not test:
        print(f"head patching: {len(train)} train / {len(test)} test pairs; skipped")
        return [], empty, 0.0
    screen = vh.screen_heads(
        run.vm, images, train, run.readouts, cfg.position, cfg.min_gap, cfg.batch_size
    )
    ranked = vh.rank_heads(screen, hcfg.top_k)
    chosen = ranked[ranked["selected"]] if len(ranked) else ranked
    selected = {
        a: [(int(r.layer), int(r.head)) for r in g.itertuples()]
        for a, g in chosen.groupby("attribute")
    }
    head_rows = vh.run_head_patching(
        run.vm, images, test, run.readouts, selected, cfg.position, cfg.min_gap,
        hcfg.random_seeds, smk.params.seed, cfg.batch_size,
    )  # fmt: skip
    goods = np.array(sorted({p.good for p in test}))
    mass = vh.attention_mass(runner, sites, runner.pixels(take_images(images, goods)))
    uniform = vh.uniform_image_mass(runner.image_mask(1)[0])
    heads = vh.heads_table(ranked, head_rows, mass.mean(0), uniform)
    seconds = round(time.perf_counter() - start, 1)
    top = heads[heads["selected"]] if len(heads) else heads
    print(f"head patching ({seconds} s): screened on {len(train)} train pairs, top heads:")
    print(top.round(3).to_string(index=False))
    return head_rows, heads, seconds


run_logged(snakemake, main)  # noqa: F821
