"""plot_vision: probes.csv, patching recovery.csv, steering samples.csv and the image datasets
-> results/plots/vision/*.png (probe score by layer, where each attribute becomes decodable
along tower -> projector -> LM, stimulus grids, patching recovery and steering shift by
layer)."""

from pathlib import Path

import pandas as pd

from circuitflow import report, store
from circuitflow.workflow import run_logged


def main(smk):
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    if smk.input.probes:
        probes = pd.concat([pd.read_csv(p) for p in smk.input.probes])
        for dataset, part in probes.groupby("dataset"):
            report.save(report.probe_scores_by_layer(part), out / f"{dataset}__probes.png")
            fig = report.decodability_by_stage(part)
            report.save(fig, out / f"{dataset}__decodability.png")
            first = report.first_decodable(part[part.position == "mean"])
            print(first.to_string(index=False))
    for path in smk.input.datasets:
        rows = store.read_samples(path)
        if not rows or "image_index" not in rows[0]:
            continue
        source = rows[0]["frame_id"]
        fig = report.stimulus_grid(rows, store.read_images(path), source)
        report.save(fig, out / f"{Path(path).name}__stimuli.png")
    for path in smk.input.patching:
        t = pd.read_csv(path)
        t = t[t["valid"] & (t["mode"] == "direction")]
        kinds = t["readout_kind"] if "readout_kind" in t else pd.Series("probe", index=t.index)
        for kind, part in t.groupby(kinds):  # probe, clip_prompts (open_clip models)
            suffix = "" if kind == "probe" else f"_{kind}"
            name = f"{t.dataset.iloc[0]}__{t.model.iloc[0]}__patching{suffix}"
            fig = report.vision_effect_by_layer(
                part,
                "recovery",
                f"{t.model.iloc[0]}: direction patch, readout {part.readout.iloc[0]}",
                "recovery of the readout",
            )
            report.save(fig, out / f"{name}.png")
    for path in smk.input.steering:
        t = pd.read_csv(path)
        kinds = t["readout_kind"] if "readout_kind" in t else pd.Series("probe", index=t.index)
        for (kind, alpha), part in t.groupby([kinds, "alpha"]):
            suffix = "" if kind == "probe" else f"_{kind}"
            name = f"{t.dataset.iloc[0]}__{t.model.iloc[0]}__steering_alpha{alpha:g}{suffix}"
            fig = report.vision_effect_by_layer(
                part,
                "gap_closed",
                f"{t.model.iloc[0]}: steering alpha {alpha:g}, readout {part.readout.iloc[0]}",
                "fraction of the gap to the original closed",
            )
            report.save(fig, out / f"{name}.png")


run_logged(snakemake, main)  # noqa: F821
