"""calibration: the permuted copies' effect table -> results/stats/calibration.csv (per phase x
metric x comparison: rates of p < alpha and p_fdr_bh < alpha with Clopper-Pearson CIs, pass)."""

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    effects = pd.read_csv(smk.input[0], keep_default_na=False, na_values=[""])
    table = stats.calibration_table(
        effects,
        alpha=p.alpha,
        max_rate=p.calibration["max_rate"],
        confidence_level=p.confidence_level,
    )
    table.to_csv(smk.output[0], index=False, float_format="%.6g")
    for r in table.itertuples():
        print(
            f"{r.phase} {r.metric} {r.comparison} ({r.null}): {r.n_p}/{r.n} p < {p.alpha} "
            f"[{r.rate_p_ci_low:.3f}, {r.rate_p_ci_high:.3f}], {r.n_fdr} FDR survivors: "
            f"{r.verdict}"
        )
    failing = stats.failing_phases(table)
    print(f"phases failing calibration: {', '.join(failing) or 'none'}")
    store.write_manifest(
        smk.output[0],
        kind="calibration",
        inputs={"effects": smk.input[0]},
        params={
            "alpha": p.alpha,
            "confidence_level": p.confidence_level,
            "calibration": dict(p.calibration),
            "datasets": list(p.datasets),
        },
        extra={"n_rows": len(table), "failing_phases": failing},
    )


run_logged(snakemake, main)  # noqa: F821
