"""plot_patching: patching CSVs + effect_sizes.csv -> layer x position and layer x head
heatmaps, results/plots/patching/{dataset}__{model}__{positions|heads}.png."""

from pathlib import Path

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(smk.input.effects)
    alpha = smk.params.alpha
    for path in smk.input.patching:
        residual = pd.read_csv(f"{path}/residual.csv")
        ranking = pd.read_csv(f"{path}/heads_ranking.csv")
        dataset, model = Path(path).parent.name, Path(path).name
        rows = table[table.dataset == dataset]
        fig = report.patching_position_heatmap(residual, rows, model, alpha=alpha)
        report.save(fig, out / f"{dataset}__{model}__positions.png")
        report.save(
            report.head_heatmap(ranking, rows, model, alpha=alpha),
            out / f"{dataset}__{model}__heads.png",
        )


run_logged(snakemake, main)  # noqa: F821
