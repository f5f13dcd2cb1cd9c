"""summary: effect_sizes.csv -> results/stats/summary.md (which effects survive BH-FDR)."""

from pathlib import Path

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    table = pd.read_csv(smk.input[0])
    Path(smk.output[0]).write_text(report.summary_markdown(table))


run_logged(snakemake, main)
