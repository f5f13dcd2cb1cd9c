rule effect_sizes:
    """Tidy effect-size table: one row per phase x model x layer x site x position x condition."""
    input:
        vectors=expand(store.VECTORS, dataset=DATASETS, model=MODELS),
    output:
        EFFECT_SIZES,
    params:
        datasets=DATASETS,
        models=MODELS,
        baselines={name: entry["baseline"] for name, entry in config["datasets"].items()},
        seed=config["seed"],
        stats=config["stats"],
    log:
        "logs/effect_sizes/effect_sizes.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/stats_effect_sizes.py"
