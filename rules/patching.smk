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
    log:
        "logs/patch_model/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: all_cores()
    resources:
        mem_mb=6000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        dataset="{dataset}",
        model="{model}",
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        prepend_bos=lambda wc: model_entry(wc.model)["prepend_bos"],
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        seed=config["seed"],
        patching=lambda wc: phase_config("patching", wc.dataset),
    script:
        "../workflow_scripts/patching_model.py"


# ---- vision ----
rule patch_vision:
    """Patch the original photo's activations (the attribute direction's component, or the
    whole hook output) into its poor variants at each hook up to the readout; recovery of the
    attribute probe's readout vs random-direction controls."""
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
        activations=store.ACTIVATIONS,
        vectors=store.VECTORS,
        probes=f"{store.PROBES_DIR}/probes.csv",
    output:
        recovery=f"{store.PATCHING_DIR}/recovery.csv",
        measurements=f"{store.PATCHING_DIR}/{store.MEASUREMENTS_FILE}",
    log:
        "logs/patch_vision/{dataset}/{model}.log",
    wildcard_constraints:
        dataset=_only(IMAGE_DATASETS),
        model=_only(VISION_MODELS),
    conda:
        "../envs/circuitflow.yaml"
    # half the cores each, so patching and steering of a model run side by side
    threads: all_cores(0.5)
    resources:
        mem_mb=4000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        dataset="{dataset}",
        model="{model}",
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        vision=config["vision"],
        seed=config["seed"],
    script:
        "../workflow_scripts/patching_vision.py"
