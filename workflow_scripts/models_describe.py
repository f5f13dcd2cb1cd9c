"""describe_model: prepared model -> resources/models/{model}.hooks.csv (hook names, shapes)."""

import pandas as pd

from circuitflow import devices, models
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    model = models.load_model(smk.input.model, p.model, p.dtype, devices.job_device(p.device))
    rows = models.describe_model(smk.input.model, model)
    pd.DataFrame(rows).to_csv(smk.output[0], index=False)
    print(f"{len(rows)} hook points")


run_logged(snakemake, main)  # noqa: F821
