rule directions:
    """Mean-difference direction per hook x position x condition (train split) + projections."""
    input:
        dataset=store.DATASET_DIR,
        activations=store.ACTIVATIONS,
    output:
        directory(store.VECTORS),
    params:
        dataset="{dataset}",
        model="{model}",
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        k_max=config["vectors"]["k_max"],
    log:
        "logs/directions/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/vectors_directions.py"
