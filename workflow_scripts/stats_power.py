"""power_analysis: effect_sizes.csv -> results/stats/power_analysis.csv + .json (per family)."""

import json

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def main(smk):
    s = smk.params.stats
    table = pd.read_csv(smk.input[0], keep_default_na=True)
    power = stats.power_table(table, alpha=s["alpha"], power=s["power"], targets=s["power_effects"])
    power.to_csv(smk.output.csv, index=False, float_format="%.6g")
    settings = {"alpha": s["alpha"], "power": s["power"], "effects": list(s["power_effects"])}
    records = json.loads(power.to_json(orient="records", double_precision=6))
    with open(smk.output.json, "w") as f:
        json.dump({"settings": settings, "families": records}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(power)} families")
    for out in (smk.output.csv, smk.output.json):
        store.write_manifest(
            out, kind="power_analysis", inputs={"effect_sizes": smk.input[0]}, params=settings
        )


run_logged(snakemake, main)  # noqa: F821
