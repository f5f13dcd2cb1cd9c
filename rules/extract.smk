rule extract_activations:
    """Residual stream (3 positions), per-head attention output and per-token residuals -> Zarr."""
    input:
        dataset=store.DATASET_DIR,
        model=store.MODEL_DIR,
    output:
        directory(store.ACTIVATIONS),
    log:
        "logs/extract_activations/{dataset}/{model}.log",
    cache: "omit-software"
    conda:
        "../envs/circuitflow.yaml"
    threads: all_cores(0.5)
    resources:
        mem_mb=8000,
        gpu=lambda wc: int(model_entry(wc.model)["device"].startswith("cuda")),
    params:
        dataset="{dataset}",
        model="{model}",
        dtype=lambda wc: model_entry(wc.model)["dtype"],
        device=lambda wc: model_entry(wc.model)["device"],
        prepend_bos=lambda wc: model_entry(wc.model)["prepend_bos"],
        per_token_layers=lambda wc: model_entry(wc.model)["per_token_layers"],
        extract=config["extract"],
    script:
        "../workflow_scripts/extract_activations.py"
