rule prepare_model:
    """Plain HF folder (bf16 safetensors + tokenizer) from a packaged GGUF, hub id or folder."""
    output:
        directory(store.MODEL_DIR),
    log:
        "logs/prepare_model/{model}.log",
    wildcard_constraints:
        model=_only(PREPARED_MODELS),
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    resources:
        mem_mb=6000,
    params:
        model="{model}",
        source=lambda wc: model_entry(wc.model)["source"],
        family=lambda wc: model_entry(wc.model)["family"],
        backend=lambda wc: model_entry(wc.model)["backend"],
    script:
        "../workflow_scripts/models_prepare.py"


rule describe_model:
    """Hookable layer names and shapes of a prepared model (vision: token grid, width)."""
    input:
        model=store.MODEL_DIR,
    output:
        store.DESCRIBE,
    log:
        "logs/describe_model/{model}.log",
    conda:
        "../envs/circuitflow.yaml"
    resources:
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        model="{model}",
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
    script:
        "../workflow_scripts/models_describe.py"
