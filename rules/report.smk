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
        vectors=expand(store.VECTORS, dataset=DATASETS, model=MODELS),
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
        EFFECT_SIZES,
    output:
        "results/stats/summary.md",
    log:
        "logs/plots/summary.log",
    conda:
        "../envs/circuitflow.yaml"
    script:
        "../workflow_scripts/report_summary.py"
