"""train_projector: the caption dataset's train photos -> an assembled VLM folder
(resources/models/{model}: projector weights, vlm_config.json naming its parts, the training
curve) + manifest."""

import time

import numpy as np
import pandas as pd

from circuitflow import devices, projectors, store
from circuitflow.models.projectors import n_parameters
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    cfg = p.projectors
    rows = store.read_samples(smk.input.dataset)
    train = [r for r in rows if r["split"] == "train"]
    if not train:
        raise ValueError(f"{smk.input.dataset}: no train-split captions to train the projector on")
    images = store.read_images(smk.input.dataset, np.array([r["image_index"] for r in train]))
    t0 = time.perf_counter()
    vlm = projectors.AssembledVLM.from_parts(
        smk.input.encoder,
        smk.input.lm,
        projector=p.architecture,
        encoder_hook=cfg["encoder_hook"],
        image_size=cfg["image_size"],
        projector_params={"n_out": p.n_out, "hidden": cfg["hidden"], "depth": cfg["depth"]},
        seed=p.seed,
    ).to(devices.job_device(p.device))
    load_s = time.perf_counter() - t0
    train_cfg = projectors.ProjectorTrainConfig.from_config(cfg, seed=p.seed)
    vlm, curve = projectors.train_projector(vlm, images, [r["caption"] for r in train], train_cfg)
    out = vlm.save(smk.output[0])
    pd.DataFrame(curve).to_csv(out / store.TRAINING_CURVE, index=False, float_format="%.6g")
    first, last = curve[0]["loss"], curve[-1]["loss"]
    print(f"{p.model}: {len(train)} train captions, loss {first:.3f} -> {last:.3f}")
    store.write_manifest(
        out,
        kind="model",
        inputs=dict(smk.input.items()),
        params={
            "model": p.model,
            "architecture": p.architecture,
            "n_out": p.n_out,
            "seed": p.seed,
            "projectors": {
                k: v
                for k, v in cfg.items()
                if k not in ("architectures", "seeds", "n_out", "n_out_sweep")
            },
        },
        seeds={"projector_init": p.seed, "caption_order": p.seed},
        extra={
            "family": "vlm",
            "backend": "assembled",
            "n_train_captions": len(train),
            "n_train_photos": len({r["source"] for r in train}),
            "n_projector_params": n_parameters(vlm.projector),
            "n_image_tokens": vlm.n_image_tokens,
            "loss_first": first,
            "loss_last": last,
            "load_s": round(load_s, 2),
            "train_s": curve[-1]["seconds"],
        },
    )


run_logged(snakemake, main)  # noqa: F821
