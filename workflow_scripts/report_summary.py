"""summary: effect_sizes.csv (+ power, k selection, calibration) -> results/stats/summary.md."""

from pathlib import Path

import pandas as pd

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    table = pd.read_csv(smk.input.effects)
    power = pd.read_csv(smk.input.power).rename(columns=lambda c: c.replace(".", "_"))
    k_selection = pd.read_csv(smk.input.k_selection)
    calibration = smk.input.get("calibration")
    text = report.summary_markdown(
        table,
        alpha=smk.params.alpha,
        power=power,
        k_selection=k_selection,
        calibration=None if calibration is None else pd.read_csv(calibration),
    )
    Path(smk.output[0]).write_text(text)


run_logged(snakemake, main)  # noqa: F821
