# Calibration: the text phases on permuted-label copies of each prompt dataset
# ({dataset}.permuted{seed}, rules/common.smk PERMUTED) through the same rules; their effect
# table and, per phase x metric x comparison, how often the tests reject (false positives).
# The copies reuse what labels cannot change, the activations (they depend on the texts
# only); every other job reruns through its own rule, with the layer counts of
# calibration.overrides (phase_config). train_sae retrains the same weights on a copy (training
# reads no labels); splitting its evaluation from its training would save that.


rule relabel_activations:
    """The real dataset's activation store with the permuted copy's labels (arrays
    hard-linked, the label coordinate rewritten): what extraction would give, without it.
    """
    input:
        activations=lambda wc: store.ACTIVATIONS.format(
            dataset=PERMUTED[wc.dataset][0], model=wc.model
        ),
        dataset=store.DATASET_DIR,
    output:
        directory(store.ACTIVATIONS),
    log:
        "logs/relabel_activations/{dataset}/{model}.log",
    wildcard_constraints:
        dataset=_only(CALIBRATION_DATASETS),
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        model="{model}",
        source=lambda wc: PERMUTED[wc.dataset][0],
    script:
        "../workflow_scripts/stats_relabel_activations.py"


ruleorder: relabel_activations > extract_activations


rule calibration_effect_sizes:
    """The effect-size table of the permuted copies (the effect_sizes script on their
    measurements and summaries)."""
    input:
        measurements=permuted_targets(MEASUREMENT_SOURCES),
        summaries=permuted_targets(SUMMARY_SOURCES),
    output:
        CALIBRATION_EFFECT_SIZES,
    log:
        "logs/calibration/effect_sizes.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        seed=config["seed"],
        stats=config["stats"],
    script:
        "../workflow_scripts/stats_effect_sizes.py"


rule calibration:
    """Per phase x metric x comparison on permuted labels: the share of tests with p < alpha
    and with p_fdr_bh < alpha (Clopper-Pearson CIs), and whether it stays near alpha."""
    input:
        CALIBRATION_EFFECT_SIZES,
    output:
        CALIBRATION,
    log:
        "logs/calibration/calibration.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        alpha=config["stats"]["alpha"],
        confidence_level=config["stats"]["confidence_level"],
        calibration=config["calibration"],
        datasets=CALIBRATION_DATASETS,
    script:
        "../workflow_scripts/stats_calibration.py"
