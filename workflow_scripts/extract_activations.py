"""extract_activations: dataset + prepared model -> results/activations/{dataset}/{model}.zarr."""

import json

import zarr

from circuitflow import devices, extract, models, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = store.read_samples(smk.input.dataset)
    model = models.load_model(smk.input.model, p.model, p.dtype, devices.job_device(p.device))
    if isinstance(model, models.VisionModel):
        return main_vision(smk, rows, model)
    bridge = model
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
    inputs = {"dataset": smk.input.dataset, "model": smk.input.model}
    params = {
        "dataset": p.dataset,
        "model": p.model,
        "dtype": p.dtype,
        "prepend_bos": p.prepend_bos,
        "per_token_layers": list(p.per_token_layers),
        "extract": dict(p.extract),
    }
    work = store.work_dir(smk.output[0], "activations", inputs, params)
    info = extract.extract_to_zarr(bridge, rows, cfg, smk.output[0], work_dir=work)
    print(json.dumps({k: v for k, v in info.items() if k != "hooks"}))
    store.write_manifest(
        smk.output[0], kind="activations", inputs=inputs, params=params, extra={"summary": info}
    )


def main_vision(smk, rows, vm):
    """Images through a vision encoder / VLM into the same store layout."""
    p = smk.params
    layers = p.extract["layers"]
    images = zarr.open_group(f"{smk.input.dataset}/{store.IMAGES_FILE}", mode="r")["images"]
    info = extract.extract_images_to_zarr(
        vm,
        rows,
        images[...],
        smk.output[0],
        layers=None if layers == "all" else list(layers),
        per_token_layers=list(p.per_token_layers),
        batch_size=p.extract["batch_size"],
        store_dtype=p.extract["store_dtype"],
        compression_level=p.extract["compression_level"],
    )
    print(json.dumps({k: v for k, v in info.items() if k not in ("hooks", "shapes")}))
    store.write_manifest(
        smk.output[0],
        kind="activations",
        inputs={"dataset": smk.input.dataset, "model": smk.input.model},
        params={
            "dataset": p.dataset,
            "model": p.model,
            "dtype": p.dtype,
            "per_token_layers": list(p.per_token_layers),
            "extract": dict(p.extract),
        },
        extra={"summary": info},
    )


run_logged(snakemake, main)  # noqa: F821
