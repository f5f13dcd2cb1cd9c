"""describe_model: prepared model -> resources/models/{model}.hooks.csv (hook names, shapes)."""

import pandas as pd

from circuitflow import vision
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    if p.family == "causal-lm":
        from circuitflow import models

        bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=p.device)
        rows = [
            {"hook": name, "module": type(point).__name__}
            for name, point in sorted(bridge.hook_dict.items())
        ]
    else:
        vm = vision.load_vision_model(smk.input.model, p.model, p.dtype, p.device)
        rows = vision.describe(vm)
    pd.DataFrame(rows).to_csv(smk.output[0], index=False)
    print(f"{len(rows)} hook points")


run_logged(snakemake, main)  # noqa: F821
