"""plot_sae: every SAE's metrics.json -> results/plots/sae_metrics.png."""

import json
from pathlib import Path

from circuitflow import report
from circuitflow.workflow import run_logged


def main(smk):
    metrics = [json.loads(Path(f"{path}/metrics.json").read_text()) for path in smk.input.sae]
    report.save(report.sae_metric_bars(metrics), smk.output[0])


run_logged(snakemake, main)  # noqa: F821
