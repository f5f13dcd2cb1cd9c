# The projector study: assembled VLMs (frozen encoder -> trained projector -> frozen LM),
# trained on a caption dataset, evaluated on its test photos against mismatched-image nulls,
# compared pairwise; the best joins the models as projectors.circuit_model (family vlm).
# Input functions: rules/common_projectors.smk.


rule train_projector:
    """One projector (architecture x seed) between the frozen encoder's tokens and the
    frozen LM, trained on the caption dataset's train photos -> an assembled VLM folder
    (loadable as family vlm) with its training curve."""
    input:
        unpack(projector_parts),
    output:
        directory(store.MODEL_DIR),
    log:
        "logs/train_projector/{model}.log",
    wildcard_constraints:
        model=_only(list(PROJECTOR_VLMS)),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        gpu=lambda wc: int(model_entry(PROJECTORS["lm"])["device"].startswith("cuda")),
    params:
        model="{model}",
        architecture=lambda wc: PROJECTOR_VLMS[wc.model][2],
        n_out=lambda wc: PROJECTOR_VLMS[wc.model][3],
        seed=lambda wc: PROJECTOR_VLMS[wc.model][1],
        projectors=TRAINING_SETTINGS,
        device=lambda wc: model_entry(PROJECTORS["lm"])["device"],
    script:
        "../workflow_scripts/projectors_train.py"


rule evaluate_projector:
    """Held-out caption NLL, caption retrieval against one-attribute distractors, the
    attribute words of greedy descriptions and (projectors.score_model) their SigLIP score,
    per test image, each against the same VLM with a mismatched image (another photo's);
    units = source photos."""
    input:
        unpack(projector_score_model),
        model=store.MODEL_DIR,
        dataset=store.DATASET_DIR,
    output:
        directory(store.PROJECTOR_DIR),
    log:
        "logs/evaluate_projector/{dataset}/{model}.log",
    wildcard_constraints:
        model=_only(list(PROJECTOR_VLMS)),
        dataset=_only(CAPTION_DATASETS),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        gpu=lambda wc: int(model_entry(PROJECTORS["lm"])["device"].startswith("cuda")),
    params:
        dataset="{dataset}",
        model="{model}",
        projectors=PROJECTORS,
        entry=lambda wc: dataset_entry(wc.dataset),
        seed=config["seed"],
        device=lambda wc: model_entry(PROJECTORS["lm"])["device"],
    script:
        "../workflow_scripts/projectors_evaluate.py"


rule compare_projectors:
    """Pairwise comparison of the trained VLMs (paired over test photos, seeds averaged) and
    their ranking by the image gain in held-out caption NLL (mismatched image - own image).
    """
    input:
        evaluations=projector_eval_targets(),
    output:
        directory(store.PROJECTOR_COMPARISON),
    log:
        "logs/compare_projectors/{dataset}.log",
    wildcard_constraints:
        dataset=_only(CAPTION_DATASETS),
    conda:
        "../envs/circuitflow.yaml"
    params:
        dataset="{dataset}",
        vlms=PROJECTOR_VLMS,
    script:
        "../workflow_scripts/projectors_compare.py"


rule select_projector:
    """The VLM with the largest image gain in held-out caption NLL, copied to
    projectors.circuit_model, the model the image datasets' phases run inside."""
    input:
        comparison=store.PROJECTOR_COMPARISON.format(
            dataset=PROJECTORS["dataset"] or "none"
        ),
        vlms=[store.MODEL_DIR.format(model=m) for m in PROJECTOR_VLMS],
    output:
        directory(store.MODEL_DIR),
    log:
        "logs/select_projector/{model}.log",
    wildcard_constraints:
        model=_only([CIRCUIT_VLM] if CIRCUIT_VLM else []),
    conda:
        "../envs/circuitflow.yaml"
    params:
        model="{model}",
    script:
        "../workflow_scripts/projectors_select.py"
