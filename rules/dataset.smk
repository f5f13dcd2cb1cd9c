rule build_prompts:
    """Validated emotion prompts (or a text table: JSONL, CSV, TSV, Parquet, save_to_disk
    folder, columns mapped in config) + expanded counterfactual frames, split train/test; for a
    calibration copy ({dataset}.permuted{seed}), the same rows with permuted labels."""
    input:
        unpack(dataset_sources),
    output:
        directory(store.DATASET_DIR),
    log:
        "logs/build_prompts/{dataset}.log",
    wildcard_constraints:
        dataset=_only(PROMPT_DATASETS + CALIBRATION_DATASETS),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        test_fraction=lambda wc: dataset_entry(wc.dataset)["test_fraction"],
        table_spec=lambda wc: table_spec(dataset_entry(wc.dataset)),
        permute_labels=lambda wc: dataset_entry(wc.dataset).get("permute_labels"),
        seed=config["seed"],
    script:
        "../workflow_scripts/dataset_build_prompts.py"


# ---- vision ----
rule build_images:
    """Aesthetic counterfactuals of real photographs (one attribute per variant, graded levels),
    a scored CSV manifest (PARA / AADB), or image-caption pairs (augmented views with templated
    captions, or a user CSV); split by source photograph."""
    input:
        unpack(image_sources),
    output:
        directory(store.DATASET_DIR),
    log:
        "logs/build_images/{dataset}.log",
    wildcard_constraints:
        dataset=_only(IMAGE_DATASETS + CAPTION_DATASETS),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        kind=lambda wc: dataset_entry(wc.dataset)["kind"],
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        images=lambda wc: dataset_entry(wc.dataset)["images"],
        manifest=lambda wc: dataset_entry(wc.dataset).get("manifest", {}),
        captions=lambda wc: dataset_entry(wc.dataset)["captions"],
        test_fraction=lambda wc: dataset_entry(wc.dataset)["test_fraction"],
        seed=config["seed"],
    script:
        "../workflow_scripts/dataset_build_images.py"
