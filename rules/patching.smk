# Attribution patching of the full grid, and exact activation patching, head patching /
# ablation and directional ablation.


rule attribution_patching:
    """Attribution patching (AtP): first-order estimates of patching every residual site, MLP
    output and attention head for every pair, and the screen of what exact patching runs.
    """
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
    output:
        directory(store.ATTRIBUTION_DIR),
    log:
        "logs/attribution_patching/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: all_cores(0.5)
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
        "../workflow_scripts/patching_attribution.py"


rule patch_model:
    """Residual patching on counterfactual frames, head patching/ablation, directional ablation;
    with patching.attribution.enabled, on the sites and heads the AtP screen chose, plus the
    exact full grid on the validation frames (agreement.csv)."""
    input:
        unpack(screen_input),
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
    threads: all_cores(0.5)
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
    attribute probe's readout vs random-direction controls. VLMs read out in the LM: each
    LM head's hook_z (AtP screen on train pairs, top-k patched exactly on test pairs) vs a
    same-norm random difference in that head, and its attention mass on the image tokens.
    """
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
        activations=store.ACTIVATIONS,
        vectors=store.VECTORS,
        probes=f"{store.PROBES_DIR}/probes.csv",
    output:
        recovery=f"{store.PATCHING_DIR}/recovery.csv",
        measurements=f"{store.PATCHING_DIR}/{store.MEASUREMENTS_FILE}",
        heads=f"{store.PATCHING_DIR}/heads.csv",
        head_recovery=f"{store.PATCHING_DIR}/head_recovery.csv",
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
