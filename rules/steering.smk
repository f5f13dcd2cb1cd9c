# Steering sweeps with evaluators and variance-matched random controls (issue 4).
rule steer_sweep:
    """Batched greedy generation: layers x alphas x directions (steering.direction_contrast)
    + random controls matched in the variance they carry, scored; fluency.csv per
    configuration, and a note in measurements.csv where fluency leaves the unsteered band.
    """
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
        activations=store.ACTIVATIONS,
        vectors=store.VECTORS,
    output:
        directory(store.STEERING_DIR),
    log:
        "logs/steer_sweep/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    # No benchmark: (Snakemake forbids it beside cache:); timings are in the manifest summary.
    # One thread per job, so the models' jobs run side by side: decoding steps are small and
    # scale poorly across threads (on a busy shared 2-core machine 1 thread ran 3-8x faster
    # than 2; idle, 2 threads were 1.5x faster for a single job).
    threads: 1
    resources:
        mem_mb=8000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        dataset="{dataset}",
        model="{model}",
        labels=lambda wc: dataset_entry(wc.dataset)["labels"],
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        prepend_bos=lambda wc: model_entry(wc.model)["prepend_bos"],
        steering=lambda wc: phase_config("steering", wc.dataset),
        metrics=config["stats"]["steering_metrics"],
        seed=config["seed"],
    script:
        "../workflow_scripts/steering_sweep.py"


# ---- vision ----
rule steer_vision:
    """Add alpha x the attribute direction (towards the original) at hooks before the readout
    to each poor variant; shift of the attribute probe's readout vs random directions.
    """
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
        activations=store.ACTIVATIONS,
        vectors=store.VECTORS,
        probes=f"{store.PROBES_DIR}/probes.csv",
    output:
        samples=f"{store.STEERING_DIR}/samples.csv",
        measurements=f"{store.STEERING_DIR}/{store.MEASUREMENTS_FILE}",
    log:
        "logs/steer_vision/{dataset}/{model}.log",
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
        "../workflow_scripts/steering_vision.py"
