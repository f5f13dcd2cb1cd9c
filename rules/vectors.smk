rule directions:
    """Mean-difference direction per hook x position x condition (train split) + projections."""
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
    script:
        "../workflow_scripts/vectors_directions.py"


rule separation:
    """Held-out projections on each direction as per-sample measurements (condition vs
    baseline test samples) for the statistics phase."""
    input:
        store.VECTORS,
    output:
        store.VECTORS_MEASUREMENTS,
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
