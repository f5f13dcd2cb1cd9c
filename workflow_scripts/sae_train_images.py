"""train_image_sae: a vision model's tokens at one hook over an image dataset ->
results/sae/{dataset}/{model}/{hook}/{architecture}.

Trains on the train photos' tokens; reconstruction metrics use the test photos'. Features are
chosen per graded-attribute label on the train photos and tested on the test photos (unit =
source photo), and the same choice and test run on labels permuted within each photo (the
null). Writes the SAELens-format SAE, metrics.json, features.csv (feature x condition AUROCs),
measurements.csv and the manifest.
"""

import json

import numpy as np
import pandas as pd

from circuitflow import devices, models, sae, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    out = smk.output[0]
    clock = sae.timer()
    times = {}
    rows = store.read_samples(smk.input.dataset)
    conditions = sae.graded_conditions(rows, p.labels, p.baseline)
    if not conditions:
        raise ValueError(
            f"dataset {p.dataset}: no label edits a graded attribute "
            f"({', '.join(store.GRADED_ATTRIBUTES)}); add e.g. exposure_low to its labels"
        )
    labels = np.array([r["label"] for r in rows])
    frames = np.array([str(r["frame_id"]) for r in rows])
    splits = np.array([r["split"] for r in rows])
    ids = [r["sample_id"] for r in rows]
    vm = models.load_vision_model(
        smk.input.model, p.model, dtype=p.dtype, device=devices.job_device(p.device)
    )
    tokens = sae.capture_tokens(vm, rows, store.read_images(smk.input.dataset), p.hook, p.batch)
    del vm
    times["capture"] = clock()
    token_split = splits[tokens.sample_index]
    train, test = token_split == "train", token_split == "test"
    if not train.any() or not test.any():
        raise ValueError(f"dataset {p.dataset}: the SAE needs photos of both train and test splits")
    cfg = sae.SAETrainConfig.from_config(p.sae, tokens.x.shape[1], p.architecture, p.seed)
    print(f"training {cfg} on {int(train.sum())} tokens (grid {tokens.grid})", flush=True)
    model = sae.train_sae(tokens.x[train], cfg)
    times["train"] = clock()
    held_out = sae.reconstruction_metrics(model, tokens.x[test])
    on_train = sae.reconstruction_metrics(model, tokens.x[train])
    smax = sae.sample_max_activations(model, tokens.x, tokens.sample_index, len(rows))

    metrics = {
        "dataset": p.dataset,
        "model": p.model,
        "hook": p.hook,
        "architecture": p.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "n_tokens_per_image": int(len(tokens.x) // len(rows)),
        "held_out": held_out.as_dict(),
        "train": on_train.as_dict(),
        "n_training_steps": model.n_steps,
        "n_training_tokens": model.n_training_tokens,
        "activation_scaling_factor": model.scaling_factor,
        "final_loss": float(np.mean(model.loss_history[-10:])),
        "n_photos": {s: len(set(frames[splits == s])) for s in ("train", "test")},
    }
    tests = sae.feature_tests(smax, labels, frames, splits, conditions, p.baseline, p.top_features)
    measurements = [sae.photo_measurements(tests, smax, frames, splits, p.baseline, metrics)]
    nulls = {}
    for i in range(p.null_permutations):
        seed = p.seed + i
        permuted = sae.permute_within(labels, frames, seed)
        null = sae.feature_tests(
            smax, permuted, frames, splits, conditions, p.baseline, p.top_features
        )
        measurements.append(
            sae.photo_measurements(null, smax, frames, splits, p.baseline, metrics, seed)
        )
        nulls[f"permuted{seed}"] = {"n_live": null.n_live, **sae.best_aurocs(null, conditions)}
    metrics["features"] = {
        "chosen_on": "train photos",
        "tested_on": "test photos",
        "n_live": tests.n_live,
        "conditions": sae.best_aurocs(tests, conditions),
        "null": nulls,
    }
    table = sae.image_feature_table(
        tests, smax, conditions, ids, frames, splits, held_out.fire_rate
    )
    times["features"] = clock()

    metadata = {
        "model_name": p.model,
        "hook_name": p.hook,
        "hook_head_index": None,
        "prepend_bos": False,
        "dataset_path": str(smk.input.dataset),
        "dataset": p.dataset,
        "context_size": metrics["n_tokens_per_image"],  # tokens per image
        "seed": p.seed,
        "evaluated_on": "test photos",
    }
    measurements = pd.concat(measurements, ignore_index=True)
    sae.write_sae_folder(model, out, metadata, held_out, on_train, metrics, table, measurements)
    store.write_manifest(
        out,
        kind="sae",
        inputs={"model": smk.input.model, "dataset": smk.input.dataset},
        params={
            "dataset": p.dataset,
            "model": p.model,
            "hook": p.hook,
            "architecture": p.architecture,
            "sae": dict(p.sae),
            "labels": list(p.labels),
            "baseline": p.baseline,
            "top_features": p.top_features,
            "null_permutations": p.null_permutations,
            "dtype": p.dtype,
        },
        seeds={"seed": p.seed},
        extra={"summary": {"held_out": held_out.as_dict(), "features": metrics["features"]}},
    )
    times["total"] = clock()
    print(json.dumps({"metrics": metrics, "seconds_since_start": times}, indent=2))


run_logged(snakemake, main)  # noqa: F821
