"""plot_cosines: vectors stores -> emotion cosine panel + one layer-cosine heatmap per model."""

from pathlib import Path

from circuitflow import report, store
from circuitflow.workflow import run_logged


def main(smk):
    panels = {}
    layer_dir = Path(smk.output.layers)
    layer_dir.mkdir(parents=True, exist_ok=True)
    for path in smk.input.vectors:
        ds = store.open_dataset(path).sel(position="last")
        name = f"{ds.attrs['dataset']}/{ds.attrs['model']}"
        conditions = [str(c) for c in ds.condition.values]
        post = ds.sel(hook=ds.site == "hook_resid_post")
        # layer with the largest mean separation norm; directions are unit, so use raw norms
        best = str(post.hook.values[int(post["norm"].mean("condition").argmax())])
        panels[name] = (conditions, ds["cosine_conditions"].sel(hook=best).values, best)
        for condition in conditions:
            cos = ds["cosine_hooks"].sel(condition=condition).values
            fig = report.layer_cosines(name, [str(h) for h in ds.hook.values], cos, condition)
            report.save(
                fig, layer_dir / f"{ds.attrs['dataset']}__{ds.attrs['model']}__{condition}.png"
            )
    report.save(report.cosine_matrices(panels), smk.output.emotions)


run_logged(snakemake, main)
