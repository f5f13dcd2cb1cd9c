"""extract_activations: dataset + prepared model -> results/activations/{dataset}/{model}.zarr."""

import json
from pathlib import Path

from circuitflow import extract, models, store
from circuitflow.vision import VISION_CONFIG
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    rows = store.read_samples(smk.input.dataset)
    if (Path(smk.input.model) / VISION_CONFIG).exists():  # a prepared vision encoder / VLM
        return main_vision(smk, rows)
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


def main_vision(smk, rows):
    """Images through a vision encoder / VLM into the same store layout (circuitflow.vision)."""
    import zarr

    from circuitflow import vision

    p = smk.params
    vm = vision.load_vision_model(smk.input.model, p.model, p.dtype, p.device)
    layers = p.extract["layers"]
    images = zarr.open_group(f"{smk.input.dataset}/{store.IMAGES_FILE}", mode="r")["images"]
    info = vision.extract_images_to_zarr(
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
