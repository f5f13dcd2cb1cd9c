"""plot_separability: effect_sizes.csv -> results/plots/separability_by_layer.png."""

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    table = pd.read_csv(smk.input[0])
    report.save(report.separability_by_layer(table), smk.output[0])


run_logged(snakemake, main)
