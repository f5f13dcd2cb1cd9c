"""plot_alignment: alignment CSVs -> results/plots/alignment/{dataset}__{a}__{b}.png."""

from pathlib import Path

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    for path in smk.input.alignment:
        table = pd.read_csv(path)
        name = f"{Path(path).parent.name}__{Path(path).name.removesuffix('.csv')}"
        report.save(report.overlap_vs_k(table, site=smk.params.site), out / f"{name}.png")


run_logged(snakemake, main)  # noqa: F821
