# Statistics: effect sizes of every phase with corrections, power, k selection.


rule effect_sizes:
    """Tidy effect-size table: one row per phase x model x layer x site x position x condition
    x setting x comparison x metric, p corrected within phase x dataset x model x metric x
    comparison; untested comparisons stay as rows (p = 1, reason in note).
    """
    input:
        measurements=measurements_targets(),
        summaries=summaries_targets(),
    output:
        EFFECT_SIZES,
    log:
        "logs/effect_sizes/effect_sizes.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        seed=config["seed"],
        stats=config["stats"],
    script:
        "../workflow_scripts/stats_effect_sizes.py"


rule power_analysis:
    """Post-hoc power per family and the units needed for small-to-medium effects."""
    input:
        EFFECT_SIZES,
    output:
        csv=store.POWER_ANALYSIS,
        json=store.POWER_ANALYSIS.replace(".csv", ".json"),
    log:
        "logs/power_analysis/power_analysis.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        stats=config["stats"],
    script:
        "../workflow_scripts/stats_power.py"


rule k_selection:
    """Bootstrap CI of the subspace overlap at each k; k chosen on some bootstrap replicates
    (stats.k_select_fraction) among the k of stats.alignment_k and tested against the
    permuted-label null through the same map, Bonferroni over the choices."""
    input:
        tables=alignment_targets(),
        bootstrap=alignment_bootstrap_targets(),
    output:
        store.K_SELECTION,
    log:
        "logs/k_selection/k_selection.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        stats=config["stats"],
    script:
        "../workflow_scripts/stats_k_selection.py"
