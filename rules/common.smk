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
