"""plot_cosines: vectors stores -> emotion cosine panel + one layer-cosine heatmap per model."""

from pathlib import Path

import numpy as np

from circuitflow import report, store
from circuitflow.workflow import run_logged


def main(smk):
    panels = {}
    layer_dir = Path(smk.output.layers)
    layer_dir.mkdir(parents=True, exist_ok=True)
    for path in smk.input.vectors:
        ds = store.open_dataset(path)
        positions = [str(p) for p in ds.position.values]
        # text: last token; images: the first pooled readout (spatial mean)
        ds = ds.sel(position="last" if "last" in positions else positions[0])
        name = f"{ds.attrs['dataset']}/{ds.attrs['model']}"
        conditions = [str(c) for c in ds.condition.values]
        resid_post = ds.site == "hook_resid_post"
        post = ds.sel(hook=resid_post) if bool(resid_post.any()) else ds
        # layer with the largest mean separation norm; directions are unit, so use raw norms
        best = str(post.hook.values[int(np.argmax(post["norm"].mean("condition").values))])
        panels[name] = (conditions, ds["cosine_conditions"].sel(hook=best).values, best)
        for condition in conditions:
            cos = ds["cosine_hooks"].sel(condition=condition).values
            fig = report.layer_cosines(name, [str(h) for h in ds.hook.values], cos, condition)
            report.save(
                fig, layer_dir / f"{ds.attrs['dataset']}__{ds.attrs['model']}__{condition}.png"
            )
    report.save(report.cosine_matrices(panels), smk.output.emotions)


run_logged(snakemake, main)
