# Input functions and checks of the projector study (rules/projectors.smk).


def check_projectors():
    """Cross-key checks of the projectors section; one line naming the key."""
    if not PROJECTOR_VLMS:
        return
    checks = [
        (
            "dataset",
            PROJECTORS["dataset"],
            CAPTION_DATASETS,
            "a dataset of kind captions",
        ),
        (
            "encoder",
            PROJECTORS["encoder"],
            _family("vision-encoder"),
            "a vision-encoder model",
        ),
        ("lm", PROJECTORS["lm"], _family("causal-lm"), "a causal-lm model"),
    ]
    if PROJECTORS["score_model"] is not None:
        checks.append(
            (
                "score_model",
                PROJECTORS["score_model"],
                [m for m in _family("vision-encoder") if _is_open_clip(m)],
                "an open_clip vision-encoder model",
            )
        )
    for key, value, allowed, what in checks:
        if value not in allowed:
            raise WorkflowError(
                f"config key projectors.{key}: {value!r} is not {what} of this config "
                f"({', '.join(allowed) or 'none'})"
            )


def _is_open_clip(model):
    from circuitflow.models.open_clip import is_open_clip_source

    entry = model_entry(model)
    if entry["backend"] == "auto":
        return is_open_clip_source(entry["source"])
    return entry["backend"] == "open_clip"


def _family(family):
    return [m for m in PREPARED_MODELS if model_entry(m)["family"] == family]


check_projectors()


def projector_eval_targets():
    return [
        store.PROJECTOR_DIR.format(dataset=PROJECTORS["dataset"], model=m)
        for m in PROJECTOR_VLMS
    ]


def projector_measurement_targets():
    """Every VLM's held-out evaluation and the pairwise comparison (measurements.csv)."""
    if not PROJECTOR_VLMS:
        return []
    comparison = store.PROJECTOR_COMPARISON.format(dataset=PROJECTORS["dataset"])
    return [*projector_eval_targets(), comparison]


MEASUREMENT_SOURCES.append(projector_measurement_targets)


# the keys only evaluation reads: changing one reruns evaluate_projector, not training
EVALUATION_KEYS = ("eval_batch_size", "eval_views", "describe_tokens", "score_model")
TRAINING_SETTINGS = {k: v for k, v in PROJECTORS.items() if k not in EVALUATION_KEYS}


def projector_score_model(wc):
    """The prepared open_clip folder that scores the descriptions, when configured."""
    name = PROJECTORS["score_model"]
    return {"score_model": store.MODEL_DIR.format(model=name)} if name else {}


def projector_parts(wc):
    return {
        "dataset": store.DATASET_DIR.format(dataset=PROJECTORS["dataset"]),
        "encoder": store.MODEL_DIR.format(model=PROJECTORS["encoder"]),
        "lm": store.MODEL_DIR.format(model=PROJECTORS["lm"]),
    }
