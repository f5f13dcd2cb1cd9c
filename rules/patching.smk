# Activation patching, head patching/ablation, directional ablation (issue 4).


rule patch_model:
    """Residual patching on counterfactual frames, head patching/ablation, directional ablation."""
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
        vectors=store.VECTORS,
        activations=store.ACTIVATIONS,
    output:
        directory(store.PATCHING_DIR),
    params:
        dataset="{dataset}",
        model="{model}",
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        prepend_bos=lambda wc: model_entry(wc.model)["prepend_bos"],
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        seed=config["seed"],
        patching=config["patching"],
    log:
        "logs/patch_model/{dataset}/{model}.log",
    threads: workflow.cores
    resources:
        mem_mb=6000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/patching_model.py"
