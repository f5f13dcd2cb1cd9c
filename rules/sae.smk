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
        dataset=_only(PROMPT_DATASETS + CALIBRATION_DATASETS),
        model=_only(TEXT_MODELS),
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
            if key not in ("architectures", "images")
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


rule train_image_sae:
    """SAE on one hook's image tokens (a vision encoder's grid or patches, a VLM's projector or
    LM image tokens), captured over the dataset's images: SAELens-format weights, metrics,
    feature x attribute AUROCs, and measurements.csv for effect_sizes (features chosen on
    train photos, tested on test photos, unit = photo; the same on labels permuted within
    photos: the null)."""
    input:
        model=store.MODEL_DIR,
        dataset=store.DATASET_DIR,
    output:
        directory(store.SAE_DIR),
    log:
        "logs/train_image_sae/{dataset}/{model}/{hook}/{architecture}.log",
    wildcard_constraints:
        dataset=_only(IMAGE_DATASETS),
        model=_only(VISION_MODELS),
        hook=r"(vision\.)?blocks\.\d+\.[A-Za-z0-9_.]+|projector\.hook_out",
        architecture=_choice(config["sae"]["images"]["architectures"]),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        # every wildcard is a param: Snakemake's cache hash ignores wildcards
        dataset="{dataset}",
        model="{model}",
        hook="{hook}",
        architecture="{architecture}",
        sae=image_sae_settings(),
        null_permutations=config["sae"]["images"]["null_permutations"],
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        top_features=config["stats"]["sae_top_features"],
        seed=config["seed"],
        batch=config["extract"]["batch_size"],
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
    script:
        "../workflow_scripts/sae_train_images.py"
