# Cross-model alignment and k-sweep (issue 3): maps learned on neutral samples, emotion-subspace
# overlap after mapping against nulls that go through the same map (shuffled pairings, permuted
# labels), CKA and mutual k-NN against shuffled pairings, in one tidy CSV + summaries; and a
# bootstrap over samples of the overlaps (issue 5, input of the k selection).


rule align_models:
    """Procrustes / ridge / CCA maps model_a -> model_b on train neutral samples; mean cos² of
    principal angles between mapped and target emotion subspaces for k = 1..k_max; at matched
    depths and k in stats.alignment_k, the shuffled-pairing and permuted-label nulls, and
    debiased CKA / mutual k-NN of the test samples (summaries: design permutation)."""
    input:
        activations_a=lambda wc: store.ACTIVATIONS.format(
            dataset=wc.dataset, model=wc.model_a
        ),
        activations_b=lambda wc: store.ACTIVATIONS.format(
            dataset=wc.dataset, model=wc.model_b
        ),
        vectors_a=lambda wc: store.VECTORS.format(dataset=wc.dataset, model=wc.model_a),
        vectors_b=lambda wc: store.VECTORS.format(dataset=wc.dataset, model=wc.model_b),
    output:
        table=store.ALIGNMENT,
        summaries=store.ALIGNMENT_SUMMARIES,
    log:
        "logs/align_models/{dataset}/{model_a}__{model_b}.log",
    wildcard_constraints:
        model_a=_choice(MODELS),
        model_b=_choice(MODELS),
    conda:
        "../envs/circuitflow.yaml"
    threads: 1
    params:
        dataset="{dataset}",
        model_a="{model_a}",
        model_b="{model_b}",
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        alignment=lambda wc: alignment_map_settings(wc.dataset),
        summary_k=config["stats"]["alignment_k"],
        k_max=config["alignment"].get("k_max", config["vectors"]["k_max"]),
        seed=config["seed"],
    script:
        "../workflow_scripts/alignment_align_models.py"


rule alignment_bootstrap:
    """Bootstrap over train samples of the subspace overlaps (subspaces and maps refit per
    replicate) for the layer pairs of alignment.bootstrap_*: input of the k selection.
    """
    input:
        table=store.ALIGNMENT,
        activations_a=lambda wc: store.ACTIVATIONS.format(
            dataset=wc.dataset, model=wc.model_a
        ),
        activations_b=lambda wc: store.ACTIVATIONS.format(
            dataset=wc.dataset, model=wc.model_b
        ),
    output:
        store.ALIGNMENT_BOOTSTRAP,
    log:
        "logs/alignment_bootstrap/{dataset}/{model_a}__{model_b}.log",
    wildcard_constraints:
        model_a=_choice(MODELS),
        model_b=_choice(MODELS),
    conda:
        "../envs/circuitflow.yaml"
    threads: 1
    params:
        dataset="{dataset}",
        model_a="{model_a}",
        model_b="{model_b}",
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        alignment=lambda wc: alignment_map_settings(wc.dataset),
        bootstrap=alignment_bootstrap_settings(),
        k_max=config["alignment"].get("k_max", config["vectors"]["k_max"]),
        seed=config["seed"],
    script:
        "../workflow_scripts/alignment_bootstrap.py"
