"""plot_projectors: every VLM's held-out evaluation and training curve -> results/plots/projectors/
(scores.png: NLL and retrieval by projector with photo-level CIs and the mismatched-image null;
training.png: the training curves)."""

from pathlib import Path

import pandas as pd

from circuitflow import report, store
from circuitflow.workflow import run_logged


def main(smk):
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    evaluations, curves = [], []
    for path in smk.input.evaluations:
        model = Path(path).name
        arch = smk.params.vlms[model][0]
        evaluations.append(pd.read_csv(Path(path) / "evaluation.csv").assign(architecture=arch))
        curves.append(pd.read_csv(Path(path) / store.TRAINING_CURVE).assign(model=model))
    table = pd.concat(evaluations, ignore_index=True)
    chance = float(table.filter(like="chance_").iloc[0].mean())
    report.save(report.projector_scores(table, chance), out / "scores.png")
    report.save(report.training_curves(pd.concat(curves, ignore_index=True)), out / "training.png")


run_logged(snakemake, main)  # noqa: F821
