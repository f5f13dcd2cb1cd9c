rule plot_separability:
    """Separability-by-layer lines from the effect-size table."""
    input:
        EFFECT_SIZES,
    output:
        report(
            "results/plots/separability_by_layer.png",
            caption="captions/separability.rst",
            category="Representation",
            labels={"figure": "separability by layer"},
        ),
    log:
        "logs/plots/separability_by_layer.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/report_separability.py"


rule plot_cosines:
    """Emotion x emotion and layer x layer cosine matrices of the directions."""
    input:
        vectors=vectors_targets(),
    output:
        emotions=report(
            "results/plots/cosine_emotions.png",
            caption="captions/cosines.rst",
            category="Representation",
            labels={"figure": "emotion cosines"},
        ),
        layers=report(
            directory("results/plots/cosine_layers"),
            patterns=["{name}.png"],
            caption="captions/layer_cosines.rst",
            category="Representation",
            labels={"figure": "layer cosines"},
        ),
    log:
        "logs/plots/cosines.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/report_cosines.py"


rule summary:
    """Plain-words summary of which effects survive BH-FDR, per model."""
    input:
        effects=EFFECT_SIZES,
        power=store.POWER_ANALYSIS,
        k_selection=store.K_SELECTION,
        calibration=CALIBRATION,
    output:
        "results/stats/summary.md",
    log:
        "logs/plots/summary.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        alpha=config["stats"]["alpha"],
        headline_n=config["stats"]["headline_n"],
    script:
        "../workflow_scripts/report_summary.py"


rule plot_steering:
    """Layer x alpha heatmaps of steering effects (d_z vs unsteered) per evaluator metric."""
    input:
        EFFECT_SIZES,
    output:
        report(
            directory("results/plots/steering"),
            patterns=["{name}.png"],
            caption="captions/steering.rst",
            category="Causal",
            subcategory="Steering",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/steering.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        datasets=PROMPT_DATASETS,  # image datasets' steering is in plot_vision
        metrics=config["stats"]["steering_metrics"],
        alpha=config["stats"]["alpha"],
    script:
        "../workflow_scripts/report_steering.py"


rule plot_patching:
    """Layer x position (residual) and layer x head heatmaps of patching and ablation."""
    input:
        effects=EFFECT_SIZES,
        patching=patching_targets(),
    output:
        report(
            directory("results/plots/patching"),
            patterns=["{name}.png"],
            caption="captions/patching.rst",
            category="Causal",
            subcategory="Patching",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/patching.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        alpha=config["stats"]["alpha"],
    script:
        "../workflow_scripts/report_patching.py"


rule plot_alignment:
    """Overlap-vs-k curves before/after alignment with the random-subspace band."""
    input:
        alignment=alignment_targets(),
    output:
        report(
            directory("results/plots/alignment"),
            patterns=["{name}.png"],
            caption="captions/alignment.rst",
            category="Representation",
            subcategory="Alignment",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/alignment.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        site=(config["alignment"].get("grid_sites") or config["alignment"]["sites"])[0],
    script:
        "../workflow_scripts/report_alignment.py"


rule plot_sae:
    """Held-out metrics of every sparse autoencoder."""
    input:
        sae=sae_targets(),
    output:
        report(
            "results/plots/sae_metrics.png",
            caption="captions/sae.rst",
            category="Representation",
            subcategory="SAE",
            labels={"figure": "SAE metrics"},
        ),
    log:
        "logs/plots/sae_metrics.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/report_sae.py"


# ---- vision ----
rule plot_vision:
    """Probe score by layer, stimulus grids, patching recovery and steering shift by layer."""
    input:
        **vision_report_inputs(),
    output:
        report(
            directory("results/plots/vision"),
            patterns=["{name}.png"],
            caption="captions/vision.rst",
            category="Vision",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/vision.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/report_vision.py"


rule plot_projectors:
    """Held-out caption NLL and retrieval by projector (CIs over photos, mismatched-image
    null), and the training curves."""
    input:
        evaluations=projector_eval_targets(),
    output:
        report(
            directory("results/plots/projectors"),
            patterns=["{name}.png"],
            caption="captions/projectors.rst",
            category="Projectors",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/projectors.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        vlms=PROJECTOR_VLMS,
    script:
        "../workflow_scripts/report_projectors.py"


# ---- the report page: one section per question, and the SAE feature cards ----
REPORT_INDEX = "results/report/index.html"
FEATURE_CARDS = "results/report/features/{dataset}/{model}/{hook}/{architecture}"


# one card folder per trained text SAE (none with report.feature_cards: 0)
FEATURE_CARD_TARGETS = (
    [
        FEATURE_CARDS.format(
            **dict(
                zip(("dataset", "model", "hook", "architecture"), Path(t).parts[-4:])
            )
        )
        for t in sae_targets()
    ]
    if config["report"]["feature_cards"]
    else []
)


rule feature_cards:
    """Neuronpedia-style cards of one SAE's top features per condition: top-activating test
    samples with their tokens shaded, activation histogram, logit effect (W_dec @ W_U),
    held-out AUROC with CI and corrected p."""
    input:
        sae=store.SAE_DIR,
        activations=store.ACTIVATIONS,
        model=store.MODEL_DIR,
        dataset=store.DATASET_DIR,
        effects=EFFECT_SIZES,
    output:
        directory(FEATURE_CARDS),
    log:
        "logs/feature_cards/{dataset}/{model}/{hook}/{architecture}.log",
    wildcard_constraints:
        hook=r"blocks\.\d+\.hook_resid_post",
        architecture=_choice(config["sae"]["architectures"]),
    conda:
        "../envs/circuitflow.yaml"
    resources:
        mem_mb=4000,
    params:
        dataset="{dataset}",
        model="{model}",
        hook="{hook}",
        architecture="{architecture}",
        baseline=lambda wc: dataset_entry(wc.dataset)["baseline"],
        report=config["report"],
        headline_n=config["stats"]["headline_n"],
        index=REPORT_INDEX,
    script:
        "../workflow_scripts/report_feature_cards.py"


rule report_index:
    """results/report/index.html: per research question the verdict in one sentence (null,
    test, units), its figure, the supporting rows (n < stats.headline_n flagged) and the rows
    used; links the full effect table and the feature cards."""
    input:
        **(
            {
                "projectors": store.PROJECTOR_COMPARISON.format(
                    dataset=PROJECTORS["dataset"]
                )
            }
            if PROJECTOR_VLMS
            else {}
        ),
        effects=EFFECT_SIZES,
        cards=FEATURE_CARD_TARGETS,
    output:
        index=REPORT_INDEX,
        answers=report(
            directory("results/report/answers"),
            patterns=["{name}.png"],
            caption="captions/answers.rst",
            category="Answers",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/report/index.log",
    conda:
        "../envs/circuitflow.yaml"
    params:
        kinds={d: dataset_entry(d)["kind"] for d in DATASETS},
        report=config["report"],
        alpha=config["stats"]["alpha"],
        headline_n=config["stats"]["headline_n"],
    script:
        "../workflow_scripts/report_index.py"
