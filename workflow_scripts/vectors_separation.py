"""separation: vectors store -> results/vectors/{dataset}/{model}.measurements.csv and
.specificity.csv.

Measurements (circuitflow.store MEASUREMENTS layout, one row per test sample):
- projection_on_mean_diff (setting contrast=vs_neutral): condition vs baseline test samples
  along the train-split emotion-vs-neutral direction;
- specificity_projection (setting contrast=<kind>): condition vs the other conditions' test
  samples along each contrast's direction, every hook; the hook chosen by train-split CV
  again with setting "contrast=<kind> selected=train_cv".
specificity.csv: per condition x contrast x position, the chosen hook, its CV AUROC (train
split) and its held-out AUROC (test split).
"""

import pandas as pd

from circuitflow import store, vectors
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    ds = store.open_dataset(smk.input[0])
    hooks = [str(h) for h in ds["hook"].values]
    positions = [str(x) for x in ds["position"].values]
    conditions = [str(x) for x in ds["condition"].values]
    common = {
        "hooks": hooks,
        "positions": positions,
        "conditions": conditions,
        "samples": ds["sample"].values.astype(str),
        "labels": ds["label"].values,
        "split": ds["split"].values,
        "dataset": p.dataset,
        "model": p.model,
    }
    cosine = ds["cosine_to_shared_axis"].sel(contrast=list(vectors.CONTRASTS)).values
    separation = vectors.separation_measurements(
        projection=ds["projection"].values,
        baseline=p.baseline,
        cosine=cosine[..., vectors.CONTRASTS.index("vs_neutral")],
        **common,
    )
    cv = ds["specificity_cv_auroc"].sel(contrast=list(vectors.CONTRASTS)).values
    selection = vectors.select_hooks(cv, hooks, positions, conditions)
    specificity, table = vectors.specificity_rows(
        projections={k: ds[vectors.projection_variable(k)].values for k in vectors.CONTRASTS},
        cosine=cosine,
        selection=selection,
        **common,
    )
    m = pd.concat([separation, specificity], ignore_index=True)
    m.to_csv(smk.output.measurements, index=False, float_format="%.7g")  # float32 projections
    table.to_csv(smk.output.specificity, index=False, float_format="%.6g")
    print(f"{len(m)} measurements; hook chosen by train-split CV, held-out AUROC:")
    if len(table):
        summary = table.groupby(["contrast", "position"])[["cv_auroc", "test_auroc"]].median()
        print(summary.to_string(float_format="%.3f"))
    inputs = {"vectors": smk.input[0]}
    params = {"dataset": p.dataset, "model": p.model, "baseline": p.baseline}
    store.write_manifest(smk.output.measurements, kind="measurements", inputs=inputs, params=params)
    store.write_manifest(smk.output.specificity, kind="specificity", inputs=inputs, params=params)


run_logged(snakemake, main)  # noqa: F821
