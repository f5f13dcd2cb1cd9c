# Path helpers, wildcard constraints and input functions shared by every phase.
import re
from pathlib import Path

from circuitflow import store

MODELS = list(config["models"])
DATASETS = list(config["datasets"])
EFFECT_SIZES = store.EFFECT_SIZES


def _choice(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    model=_choice(MODELS),
    dataset=_choice(DATASETS),


def model_entry(model):
    return config["models"][model]


def dataset_entry(dataset):
    return config["datasets"][dataset]


def dataset_sources(wildcards):
    entry = dataset_entry(wildcards.dataset)
    return {key: entry[key] for key in ("prompts", "frames") if key in entry}


def check_config():
    """Cross-key checks the schema cannot express; one line naming the key."""
    for name, entry in config["datasets"].items():
        if entry["baseline"] not in entry["labels"]:
            raise WorkflowError(
                f"config key datasets.{name}.baseline: {entry['baseline']!r} is not one of "
                f"labels {entry['labels']}"
            )
        if not ("prompts" in entry or "frames" in entry):
            raise WorkflowError(
                f"config key datasets.{name}: give prompts and/or frames (JSONL paths)"
            )
        for key in ("prompts", "frames"):
            if key in entry and not Path(entry[key]).exists():
                raise WorkflowError(
                    f"config key datasets.{name}.{key}: file {entry[key]} does not exist"
                )


check_config()


def per_token_hooks(model):
    return [store.hook_name(layer, "hook_resid_post") for layer in model_entry(model)["per_token_layers"]]


def sae_targets():
    return [
        store.SAE_DIR.format(dataset=d, model=m, hook=h, architecture=a)
        for d in DATASETS
        for m in MODELS
        for h in per_token_hooks(m)
        for a in config["sae"]["architectures"]
    ]


def alignment_pairs():
    if "pairs" in config["alignment"]:
        return [tuple(p) for p in config["alignment"]["pairs"]]
    return [(a, b) for i, a in enumerate(MODELS) for b in MODELS[i + 1 :]]


def alignment_targets():
    return [
        store.ALIGNMENT.format(dataset=d, model_a=a, model_b=b)
        for d in DATASETS
        for a, b in alignment_pairs()
    ]


def patching_targets():
    return [store.PATCHING_DIR.format(dataset=d, model=m) for d in DATASETS for m in MODELS]


def steering_targets():
    return [store.STEERING_DIR.format(dataset=d, model=m) for d in DATASETS for m in MODELS]
