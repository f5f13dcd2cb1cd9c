"""train_sae: per-token activations -> results/sae/{dataset}/{model}/{hook}/{architecture}.

Trains on the train-split tokens; reconstruction metrics, dead features, CE-loss recovered,
Delta CE and the feature x label table use the test split. The top features per emotion are
chosen on the train samples (``auroc_train`` and ``selected`` in features.csv) and tested on
the test samples. Writes the SAELens-format SAE (safetensors + cfg.json), metrics.json,
features.csv, measurements.csv (the chosen features' per-sample max activations, design rank;
the per-prompt CE losses with and without the SAE) and the manifest.
"""

import json

import numpy as np
import pandas as pd

from circuitflow import devices, models, sae, store
from circuitflow.core.tokens import tokenize
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    out = smk.output[0]
    clock = sae.timer()
    times = {}
    tokens = sae.read_tokens(smk.input.activations, p.hook)
    rows = {row["sample_id"]: row for row in store.read_samples(smk.input.dataset)}
    missing = [sid for sid in tokens.sample_ids if sid not in rows]
    if missing:
        raise ValueError(
            f"{smk.input.activations}: sample {missing[0]} is not in {smk.input.dataset}; "
            "rebuild the activations"
        )
    samples = [rows[sid] for sid in tokens.sample_ids]
    train, test = tokens.token_mask("train"), tokens.token_mask("test")
    if not train.any() or not test.any():
        raise ValueError(f"dataset {p.dataset}: the SAE needs tokens of both train and test splits")
    cfg = sae.SAETrainConfig.from_config(p.sae, tokens.x.shape[1], p.architecture, p.seed)
    print(f"training {cfg} on {int(train.sum())} tokens", flush=True)
    model = sae.train_sae(tokens.x[train], cfg)
    times["train"] = clock()
    held_out = sae.reconstruction_metrics(model, tokens.x[test])
    on_train = sae.reconstruction_metrics(model, tokens.x[train])
    times["metrics"] = clock()

    bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=devices.job_device(p.device))
    test_samples = np.flatnonzero(tokens.splits == "test")
    chosen = test_samples[sae.choose_prompts(len(test_samples), p.sae["ce_loss_prompts"], p.seed)]
    toks = tokenize(bridge.tokenizer, [samples[i] for i in chosen], p.prepend_bos)
    for i, t in zip(chosen, toks, strict=True):
        stored = tokens.token_id[tokens.sample_index == i]
        if not np.array_equal(stored, t.ids[t.first :]):
            raise ValueError(
                f"{smk.input.activations}: sample {tokens.sample_ids[i]} was stored with other "
                f"tokens than {smk.input.model}'s tokenizer gives; rebuild the activations"
            )
    ce = sae.ce_loss_recovered(
        bridge, [t.ids for t in toks], p.hook, model.reconstruct, first=toks[0].first
    )
    times["ce_loss"] = clock()

    test_index = np.flatnonzero(test)
    local = np.searchsorted(test_samples, tokens.sample_index[test_index])
    f_test = model.encode(tokens.x[test_index])
    table = sae.feature_table(
        f_test,
        local,
        tokens.token_id[test_index],
        [samples[i] for i in test_samples],
        p.labels,
        p.baseline,
        decode=lambda token: bridge.tokenizer.decode([token]),
    )
    # choose on the train samples, test on the test samples
    train_samples = np.flatnonzero(tokens.splits == "train")
    train_index = np.flatnonzero(train)
    smax_train = sae.sample_max_activations(
        model,
        tokens.x[train_index],
        np.searchsorted(train_samples, tokens.sample_index[train_index]),
        len(train_samples),
    )
    train_labels = [samples[i]["label"] for i in train_samples]
    chosen_features, n_live = sae.select_features(
        smax_train, train_labels, p.labels, p.baseline, top_n=p.top_features
    )
    table = sae.annotate_selection(
        table, sae.label_aurocs(smax_train, train_labels, p.labels, p.baseline), chosen_features
    )
    smax_test = sae.per_sample_max(f_test, local, len(test_samples)).numpy()
    times["features"] = clock()

    metrics = {
        "dataset": p.dataset,
        "model": p.model,
        "hook": p.hook,
        "architecture": p.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "held_out": held_out.as_dict(),
        "train": on_train.as_dict(),
        "ce_loss": ce.as_dict(),
        "n_training_steps": model.n_steps,
        "n_training_tokens": model.n_training_tokens,
        "activation_scaling_factor": model.scaling_factor,
        "final_loss": float(np.mean(model.loss_history[-10:])),
    }
    measurements = pd.concat(
        [
            sae.feature_measurements(
                chosen_features,
                smax_test,
                [tokens.sample_ids[i] for i in test_samples],
                [samples[i]["label"] for i in test_samples],
                p.baseline,
                metrics,
                n_family_part=n_live,
            ),
            sae.ce_measurements(ce, [tokens.sample_ids[i] for i in chosen], metrics),
        ],
        ignore_index=True,
    )
    metadata = {
        "model_name": p.model,
        "hook_name": p.hook,
        "hook_head_index": None,
        "prepend_bos": p.prepend_bos,
        "dataset_path": str(smk.input.dataset),
        "dataset": p.dataset,
        "context_size": int(tokens.position.max()) + 1,  # longest prompt, BOS included
        "seed": p.seed,
        "ce_loss_recovered": ce.ce_loss_recovered,
        "delta_ce": ce.delta_ce,
        "evaluated_on": "test split",
    }
    sae.write_sae_folder(model, out, metadata, held_out, on_train, metrics, table, measurements)
    store.write_manifest(
        out,
        kind="sae",
        inputs={
            "activations": smk.input.activations,
            "model": smk.input.model,
            "dataset": smk.input.dataset,
        },
        params={
            "dataset": p.dataset,
            "model": p.model,
            "hook": p.hook,
            "architecture": p.architecture,
            "sae": dict(p.sae),
            "labels": list(p.labels),
            "baseline": p.baseline,
            "top_features": p.top_features,
            "dtype": p.dtype,
            "prepend_bos": p.prepend_bos,
        },
        seeds={"seed": p.seed},
        extra={
            "summary": {"held_out": held_out.as_dict(), "ce_loss": ce.as_dict()},
            "features": {"chosen_on": "train split", "tested_on": "test split", "n_live": n_live},
        },
    )
    times["total"] = clock()
    print(json.dumps({"metrics": metrics, "seconds_since_start": times}, indent=2))


run_logged(snakemake, main)  # noqa: F821
