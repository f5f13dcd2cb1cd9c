rule build_prompts:
    """Validated emotion prompts + expanded counterfactual frames, split train/test."""
    input:
        unpack(dataset_sources),
    output:
        directory(store.DATASET_DIR),
    params:
        dataset="{dataset}",
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        test_fraction=lambda wc: dataset_entry(wc.dataset)["test_fraction"],
        seed=config["seed"],
    log:
        "logs/build_prompts/{dataset}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/dataset_build_prompts.py"
