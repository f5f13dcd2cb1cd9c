rule directions:
    """Directions per hook x position x condition (train split): vs the baseline (mean
    difference), vs the other conditions, the multinomial probe's; projections, the shared
    axis and each direction's cosine to it, the train-split CV specificity AUROC."""
    input:
        dataset=store.DATASET_DIR,
        activations=store.ACTIVATIONS,
    output:
        directory(store.VECTORS),
    log:
        "logs/directions/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        model="{model}",
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        k_max=config["vectors"]["k_max"],
        seed=config["seed"],
        specificity={
            key.removeprefix("specificity_"): value
            for key, value in config["vectors"].items()
            if key.startswith("specificity_")
        },
    script:
        "../workflow_scripts/vectors_directions.py"


rule separation:
    """Held-out projections as per-sample measurements for the statistics phase: condition vs
    baseline along the mean difference, condition vs the other conditions along every
    contrast's direction (each hook, and the hook chosen by train-split CV)."""
    input:
        store.VECTORS,
    output:
        measurements=store.VECTORS_MEASUREMENTS,
        specificity=store.VECTORS_SPECIFICITY,
    log:
        "logs/separation/{dataset}/{model}.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        model="{model}",
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
    script:
        "../workflow_scripts/vectors_separation.py"


# ---- vision ----
rule probes:
    """Linear probes per attribute x hook x position (held-out R² / accuracy, split by source
    photo) + per-image losses vs a constant baseline and shuffled-target controls."""
    input:
        dataset=store.DATASET_DIR,
        activations=store.ACTIVATIONS,
    output:
        probes=f"{store.PROBES_DIR}/probes.csv",
        measurements=f"{store.PROBES_DIR}/{store.MEASUREMENTS_FILE}",
    log:
        "logs/probes/{dataset}/{model}.log",
    wildcard_constraints:
        dataset=_only(IMAGE_DATASETS),
        model=_only(VISION_MODELS),
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        model="{model}",
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        n_controls=config["vectors"]["probe_controls"],
        seed=config["seed"],
    script:
        "../workflow_scripts/vectors_probes.py"
