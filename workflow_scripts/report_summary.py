"""summary: effect_sizes.csv (+ power, k selection, calibration) -> results/stats/summary.md."""

from pathlib import Path

import pandas as pd

from circuitflow import report, store
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
        headline_n=smk.params.headline_n,
    )
    Path(smk.output[0]).write_text(text)
    store.write_manifest(  # a rerun leaves no stale manifest
        smk.output[0],
        kind="summary",
        inputs=store.keyable_inputs(smk.input),
        params={"alpha": smk.params.alpha, "headline_n": smk.params.headline_n},
    )


run_logged(snakemake, main)  # noqa: F821
