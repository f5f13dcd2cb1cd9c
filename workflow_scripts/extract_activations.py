"""extract_activations: dataset + prepared model -> results/activations/{dataset}/{model}.zarr."""

import json

from circuitflow import extract, models, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = store.read_samples(smk.input.dataset)
    bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=p.device)
    settings = dict(p.extract)
    layers = settings.pop("layers")
    cfg = extract.ExtractConfig(
        n_layers=bridge.cfg.n_layers,
        layers=None if layers == "all" else tuple(layers),
        head_layers=None,
        per_token_layers=tuple(p.per_token_layers),
        prepend_bos=p.prepend_bos,
        model_name=p.model,
        sites=tuple(settings.pop("sites")),
        **settings,
    )
    info = extract.extract_to_zarr(bridge, rows, cfg, smk.output[0])
    print(json.dumps({k: v for k, v in info.items() if k != "hooks"}))
    store.write_manifest(
        smk.output[0],
        kind="activations",
        inputs={"dataset": smk.input.dataset, "model": smk.input.model},
        params={
            "dataset": p.dataset,
            "model": p.model,
            "dtype": p.dtype,
            "prepend_bos": p.prepend_bos,
            "per_token_layers": list(p.per_token_layers),
            "extract": dict(p.extract),
        },
        extra={"summary": info},
    )


run_logged(snakemake, main)  # noqa: F821
