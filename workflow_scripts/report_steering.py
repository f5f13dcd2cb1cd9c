"""plot_steering: effect_sizes.csv -> results/plots/steering/{dataset}__{metric}.png."""

from pathlib import Path

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(smk.input[0])
    alpha = smk.params.alpha
    for dataset in smk.params.datasets:
        rows = table[(table.dataset == dataset) & (table.phase == "steering")]
        if rows.empty:  # e.g. an image dataset: no steering phase
            continue
        for metric in smk.params.metrics:
            fig = report.steering_heatmap(rows, metric, alpha=alpha)
            report.save(fig, out / f"{dataset}__{metric}.png")


run_logged(snakemake, main)  # noqa: F821
