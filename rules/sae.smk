# Sparse autoencoders on per-token activations.


rule train_sae:
    """SAE on one hook's per-token residuals: SAELens-format weights, metrics (CE recovered,
    Delta CE), feature table, and measurements.csv (top features chosen on train samples,
    tested on test samples; per-prompt CE losses) for effect_sizes."""
    input:
        activations=store.ACTIVATIONS,
        model=store.MODEL_DIR,
        dataset=store.DATASET_DIR,
    output:
        directory(store.SAE_DIR),
    log:
        "logs/train_sae/{dataset}/{model}/{hook}/{architecture}.log",
    wildcard_constraints:
        hook=r"blocks\.\d+\.hook_resid_post",
        # the configured names (the schema enum, checked against the registry in a test)
        architecture=_choice(config["sae"]["architectures"]),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    # one thread per job: SAE jobs run side by side (training is single-threaded for
    # byte-identical weights; on a busy 2-core machine 2 OpenMP threads ran the CE-loss forward
    # 5x slower). Give more with --set-threads train_sae=N.
    threads: 1
    resources:
        mem_mb=6000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        # every wildcard is a param: Snakemake's cache hash ignores wildcards
        dataset="{dataset}",
        model="{model}",
        hook="{hook}",
        architecture="{architecture}",
        sae={
            key: value
            for key, value in config["sae"].items()
            if key != "architectures"
        },
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        top_features=config["stats"]["sae_top_features"],
        seed=config["seed"],
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        prepend_bos=lambda wc: model_entry(wc.model)["prepend_bos"],
    script:
        "../workflow_scripts/sae_train.py"
