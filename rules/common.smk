# Path helpers, wildcard constraints and input functions shared by every phase.
import re
from pathlib import Path

from snakemake.logging import logger

from circuitflow import store

# The projector study (rules/projectors.smk): one assembled VLM per architecture x seed,
# trained on projectors.dataset; the best joins the models as projectors.circuit_model.
# PROJECTOR_VLMS: name -> (variant, seed, architecture, n_out); the variant is what the study
# compares: the architecture, or with projectors.n_out_sweep "<architecture>-n<n_out>" for
# the projectors whose token count is set (the others keep one token per encoder token).
PROJECTORS = config["projectors"]


def _projector_variants():
    sweep = PROJECTORS["n_out_sweep"]
    if not sweep:
        return [(a, a, PROJECTORS["n_out"]) for a in PROJECTORS["architectures"]]
    from circuitflow.models.projectors import get_projector_class

    variants = []
    for arch in PROJECTORS["architectures"]:
        if "n_out" in get_projector_class(arch).PARAMS:
            variants += [(f"{arch}-n{n}", arch, n) for n in sweep]
        else:
            variants.append((arch, arch, PROJECTORS["n_out"]))
    return variants


PROJECTOR_VLMS = (
    {
        f"vlm-{variant}-s{seed}": (variant, seed, arch, n_out)
        for variant, arch, n_out in _projector_variants()
        for seed in PROJECTORS["seeds"]
    }
    if PROJECTORS["dataset"]
    else {}
)
CIRCUIT_VLM = PROJECTORS["circuit_model"] if PROJECTOR_VLMS else None
if CIRCUIT_VLM:
    lm = config["models"].get(PROJECTORS["lm"], {})
    config["models"].setdefault(
        CIRCUIT_VLM,
        {
            "source": "projectors:best",
            "family": "vlm",
            "backend": "assembled",
            "dtype": lm.get("dtype", "float32"),
            "device": lm.get("device", "cpu"),
            "prepend_bos": True,
            "per_token_layers": [],
        },
    )
MODELS = list(config["models"])
PREPARED_MODELS = [m for m in MODELS if m != CIRCUIT_VLM]  # prepare_model makes these
DATASETS = list(config["datasets"])
EFFECT_SIZES = store.EFFECT_SIZES
# Calibration (rules/calibration.smk): a permuted-label copy of each prompt dataset per seed,
# run through the same rules; name -> (real dataset, permutation seed).
PERMUTED = {
    f"{d}.permuted{s}": (d, s)
    for d in DATASETS
    if config["datasets"][d]["kind"] == "prompts"
    for s in config["calibration"]["seeds"]
}
CALIBRATION_DATASETS = list(PERMUTED)
CALIBRATION_EFFECT_SIZES = "results/stats/calibration/effect_sizes.csv"
CALIBRATION = "results/stats/calibration.csv"


def _choice(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    model=_choice(MODELS + list(PROJECTOR_VLMS)),
    dataset=_choice(DATASETS + CALIBRATION_DATASETS),


def model_entry(model):
    return config["models"][model]


def dataset_entry(dataset):
    if dataset in PERMUTED:  # the real dataset's entry, its labels permuted
        real, seed = PERMUTED[dataset]
        return {**config["datasets"][real], "permute_labels": seed}
    return config["datasets"][dataset]


def dataset_sources(wildcards):
    entry = dataset_entry(wildcards.dataset)
    return {key: entry[key] for key in ("prompts", "table", "frames") if key in entry}


TABLE_KEYS = (
    "format",
    "text_column",
    "label_column",
    "trigger_column",
    "span_column",
    "label_map",
    "multi_label",
    "trigger_phrases",
    "unmapped_labels",
    "missing_trigger",
)


def table_spec(entry):
    """The table-reading keys of a dataset entry ({} without a table)."""
    return {k: entry[k] for k in TABLE_KEYS if k in entry} if "table" in entry else {}


# ---- vision: which datasets pair with which models ----
# Prompt datasets run on causal LMs; image datasets (kind images | image_manifest) on vision
# encoders and VLMs. Text-only phases (SAE, alignment, patching, steering) use the text pairs.
PROMPT_DATASETS = [d for d in DATASETS if dataset_entry(d)["kind"] == "prompts"]
CAPTION_DATASETS = [d for d in DATASETS if dataset_entry(d)["kind"] == "captions"]
IMAGE_DATASETS = [
    d for d in DATASETS if d not in PROMPT_DATASETS and d not in CAPTION_DATASETS
]
TEXT_MODELS = [m for m in MODELS if model_entry(m)["family"] == "causal-lm"]
VISION_MODELS = [m for m in MODELS if model_entry(m)["family"] != "causal-lm"]


def _only(names):
    """Wildcard constraint matching exactly ``names`` (none: matches nothing)."""
    return _choice(names) if names else "(?!)"


def dataset_models(dataset):
    return TEXT_MODELS if dataset in PROMPT_DATASETS else VISION_MODELS


def vectors_targets():
    """Vectors stores of every (dataset, model) pair that runs: text x text, images x vision."""
    return [
        store.VECTORS.format(dataset=d, model=m)
        for d in PROMPT_DATASETS + IMAGE_DATASETS
        for m in dataset_models(d)
    ]


def probes_targets():
    return [
        f"{store.PROBES_DIR.format(dataset=d, model=m)}/{store.MEASUREMENTS_FILE}"
        for d in IMAGE_DATASETS
        for m in VISION_MODELS
    ]


def vision_patching_targets():
    return [
        f"{store.PATCHING_DIR.format(dataset=d, model=m)}/{store.MEASUREMENTS_FILE}"
        for d in IMAGE_DATASETS
        for m in VISION_MODELS
    ]


def vision_steering_targets():
    return [
        f"{store.STEERING_DIR.format(dataset=d, model=m)}/{store.MEASUREMENTS_FILE}"
        for d in IMAGE_DATASETS
        for m in VISION_MODELS
    ]


def vision_report_inputs():
    """Tables and datasets the vision plots read (rules/report.smk plot_vision)."""
    pairs = [(d, m) for d in IMAGE_DATASETS for m in VISION_MODELS]
    return {
        "probes": [
            f"{store.PROBES_DIR.format(dataset=d, model=m)}/probes.csv"
            for d, m in pairs
        ],
        "datasets": [store.DATASET_DIR.format(dataset=d) for d in IMAGE_DATASETS],
        "patching": [
            f"{store.PATCHING_DIR.format(dataset=d, model=m)}/recovery.csv"
            for d, m in pairs
        ],
        "steering": [
            f"{store.STEERING_DIR.format(dataset=d, model=m)}/samples.csv"
            for d, m in pairs
        ],
    }


def image_sources(wildcards):
    """Files and folders an image dataset reads (builtin photographs need none)."""
    entry = dataset_entry(wildcards.dataset)
    if entry["kind"] == "image_manifest":
        return {"manifest": entry["manifest"]["csv"]}
    if entry["kind"] == "captions" and entry["captions"].get("csv"):
        return {"captions": entry["captions"]["csv"]}
    paths = [
        s for s in entry["images"].get("sources", []) if not s.startswith("builtin:")
    ]
    return {f"source{i}": path for i, path in enumerate(paths)}


# ---- end vision ----


def check_config():
    """Cross-key checks the schema cannot express; one line naming the key."""
    for name, entry in config["datasets"].items():
        if entry["baseline"] not in entry["labels"]:
            raise WorkflowError(
                f"config key datasets.{name}.baseline: {entry['baseline']!r} is not one of "
                f"labels {entry['labels']}"
            )
        captions_csv = entry["kind"] == "captions" and entry["captions"].get("csv")
        if entry["kind"] in ("images", "captions") and not (
            captions_csv or entry.get("images", {}).get("sources")
        ):
            raise WorkflowError(
                f"config key datasets.{name}.images.sources: give photographs "
                "(builtin:<name>, image files or folders)"
            )
        if entry["kind"] == "image_manifest" and "manifest" not in entry:
            raise WorkflowError(
                f"config key datasets.{name}.manifest: give csv (and layout: para | aadb)"
            )
        if entry["kind"] == "prompts" and not (
            "prompts" in entry or "table" in entry or "frames" in entry
        ):
            raise WorkflowError(
                f"config key datasets.{name}: give prompts or table, and/or frames"
            )
        if "prompts" in entry and "table" in entry:
            raise WorkflowError(
                f"config key datasets.{name}: give prompts (shipped JSONL) or table, not both"
            )
        if captions_csv and not Path(captions_csv).exists():
            raise WorkflowError(
                f"config key datasets.{name}.captions.csv: file {captions_csv} does not exist"
            )
        for key in ("prompts", "table", "frames"):
            if key in entry and not Path(entry[key]).exists():
                raise WorkflowError(
                    f"config key datasets.{name}.{key}: file {entry[key]} does not exist"
                )
    for pair in config["alignment"].get("pairs", []):
        unknown = [m for m in pair if m not in TEXT_MODELS]
        if unknown:
            raise WorkflowError(
                f"config key alignment.pairs: {unknown[0]!r} in {pair} is not a causal-lm "
                f"model of this config ({', '.join(TEXT_MODELS) or 'none'})"
            )
        if pair[0] == pair[1]:
            raise WorkflowError(
                f"config key alignment.pairs: {pair} pairs a model with itself; name two "
                "causal-lm models"
            )
    check_alphas()


def check_alphas():
    """A steering sweep that runs needs one non-zero alpha (0 is the unsteered run, made
    anyway)."""
    steering = config["steering"]
    text = PROMPT_DATASETS and TEXT_MODELS
    if text and not any([*steering["alphas_relative"], *steering["alphas_raw"]]):
        raise WorkflowError(
            "config keys steering.alphas_relative and steering.alphas_raw: no non-zero "
            f"alpha ({steering['alphas_relative']} and {steering['alphas_raw']}), so no "
            "row would be steered; give one, e.g. alphas_relative: [0.25]"
        )
    vision = config["vision"]["steering"]["alphas_relative"]
    if IMAGE_DATASETS and VISION_MODELS and not any(vision):
        raise WorkflowError(
            f"config key vision.steering.alphas_relative: {vision} has no non-zero alpha, "
            "so no image would be steered; give one, e.g. [0.25]"
        )


def repeat_job_errors(log):
    """onerror: print each failed job's line (``circuitflow [rule]: ...``) again at exit, after
    Snakemake's summary, so the last line says what is wrong: the exception its log ends with.
    """
    import atexit
    import sys

    from circuitflow.core.errors import failed_job_logs, logged_error

    lines = []
    for snakemake_log in log:
        for rule, job_logs in failed_job_logs(Path(snakemake_log).read_text()):
            job_log = Path(job_logs[0]) if job_logs else None
            text = job_log.read_text() if job_log and job_log.is_file() else ""
            message = logged_error(text) or (
                "the job ended without a Python error (killed, e.g. out of memory?)"
            )
            lines.append(f"circuitflow [{rule}]: {message} (log: {job_log})")
    if lines:
        atexit.register(lambda: print("\n".join(lines), file=sys.stderr, flush=True))


def check_calibration():
    """Calibration copies must not shadow a configured dataset, and each override must give
    a valid config section once merged (one line naming the key)."""
    import jsonschema

    from circuitflow.workflow import config_schema, describe_validation_error

    clash = sorted(set(PERMUTED) & set(DATASETS))
    if clash:
        raise WorkflowError(
            f"config key datasets.{clash[0]}: the name of a calibration copy; rename the dataset"
        )
    validator = jsonschema.Draft202012Validator(config_schema())
    for section, override in config["calibration"]["overrides"].items():
        trial = {**config, section: {**config[section], **override}}
        err = jsonschema.exceptions.best_match(validator.iter_errors(trial))
        if err is not None:
            line = describe_validation_error(err)
            raise WorkflowError(line.replace(" key ", " key calibration.overrides.", 1))


check_config()
check_calibration()


def per_token_hooks(model):
    return [
        store.hook_name(layer, "hook_resid_post")
        for layer in model_entry(model)["per_token_layers"]
    ]


def sae_targets():
    """The text SAEs: prompt datasets x causal LMs x per_token_layers x architectures."""
    return [
        store.SAE_DIR.format(dataset=d, model=m, hook=h, architecture=a)
        for d in PROMPT_DATASETS
        for m in TEXT_MODELS
        for h in per_token_hooks(m)
        for a in config["sae"]["architectures"]
    ]


def image_sae_hooks(model):
    """Hooks of a vision model's image SAEs: sae.images.hooks.<model>, else a VLM's projector
    output (and its LM's per_token_layers), else a vision encoder's per_token_layers blocks.
    """
    listed = config["sae"]["images"]["hooks"]
    if model in listed:
        return list(listed[model])
    entry = model_entry(model)
    layers = entry["per_token_layers"]
    if entry["family"] == "vlm":
        lm = [store.hook_name(layer, "hook_resid_post") for layer in layers]
        return [store.PROJECTOR_HOOK, *lm]
    site = "hook_out" if entry["backend"] == "torch" else "hook_resid_post"
    return [store.hook_name(layer, site) for layer in layers]


def image_sae_targets():
    """The image SAEs: image datasets x vision models x their hooks x sae.images.architectures."""
    return [
        store.SAE_DIR.format(dataset=d, model=m, hook=h, architecture=a)
        for d in IMAGE_DATASETS
        for m in VISION_MODELS
        for h in image_sae_hooks(m)
        for a in config["sae"]["images"]["architectures"]
    ]


def image_sae_settings():
    """The sae section for image SAEs: its training keys with sae.images' in their place."""
    images = config["sae"]["images"]
    workflow_only = ("architectures", "ce_loss_prompts", "images")
    return {
        **{k: v for k, v in config["sae"].items() if k not in workflow_only},
        **{
            k: v
            for k, v in images.items()
            if k not in ("hooks", "architectures", "null_permutations")
        },
    }


def alignment_pairs():
    if "pairs" in config["alignment"]:
        return [tuple(p) for p in config["alignment"]["pairs"]]
    return [(a, b) for i, a in enumerate(TEXT_MODELS) for b in TEXT_MODELS[i + 1 :]]


def alignment_targets():
    return [
        store.ALIGNMENT.format(dataset=d, model_a=a, model_b=b)
        for d in PROMPT_DATASETS
        for a, b in alignment_pairs()
    ]


def framed_datasets():
    """Prompt datasets with counterfactual frames: patching needs them (others skip it)."""
    return [d for d in PROMPT_DATASETS if "frames" in dataset_entry(d)]


for _d in PROMPT_DATASETS:
    if "frames" not in dataset_entry(_d) and TEXT_MODELS:
        logger.info(
            f"dataset {_d}: no frames (counterfactual pairs), so patching skips it"
        )


def patching_targets():
    return [
        store.PATCHING_DIR.format(dataset=d, model=m)
        for d in framed_datasets()
        for m in TEXT_MODELS
    ]


def attribution_targets():
    """The AtP directories of the text models where patching.attribution.enabled."""
    return [
        store.ATTRIBUTION_DIR.format(dataset=d, model=m)
        for d in framed_datasets()
        for m in TEXT_MODELS
        if phase_config("patching", d)["attribution"]["enabled"]
    ]


def screen_input(wc):
    """patch_model's screen: the AtP directory of its model, where attribution is enabled."""
    if not phase_config("patching", wc.dataset)["attribution"]["enabled"]:
        return {}
    return {"screen": store.ATTRIBUTION_DIR.format(dataset=wc.dataset, model=wc.model)}


def steering_targets():
    return [
        store.STEERING_DIR.format(dataset=d, model=m)
        for d in PROMPT_DATASETS
        for m in TEXT_MODELS
    ]


def separation_targets():
    return [
        store.VECTORS_MEASUREMENTS.format(dataset=d, model=m)
        for d in PROMPT_DATASETS + IMAGE_DATASETS
        for m in dataset_models(d)
    ]


def alignment_summaries_targets():
    return [
        store.ALIGNMENT_SUMMARIES.format(dataset=d, model_a=a, model_b=b)
        for d in PROMPT_DATASETS
        for a, b in alignment_pairs()
    ]


def sae_measurements_targets():
    # directory outputs: their measurements.csv (store.measurements_file)
    return sae_targets() + image_sae_targets()


# The statistics phase's inputs: measurements.csv files (store.MEASUREMENTS_FILE layout, per
# unit) and summaries.csv files (store.SUMMARIES_FILE layout, per comparison). A phase that
# writes one appends a function returning its paths (each under results/<phase>/).
MEASUREMENT_SOURCES = [
    separation_targets,
    patching_targets,  # directory outputs: their measurements.csv (store.measurements_file)
    attribution_targets,
    steering_targets,
    probes_targets,
    vision_patching_targets,
    vision_steering_targets,
    sae_measurements_targets,
]
SUMMARY_SOURCES = [alignment_summaries_targets]


def measurements_targets():
    return [path for source in MEASUREMENT_SOURCES for path in source()]


def summaries_targets():
    return [path for source in SUMMARY_SOURCES for path in source()]


def permuted_targets(sources):
    """The calibration copies' paths of ``sources`` (MEASUREMENT_SOURCES, SUMMARY_SOURCES):
    each path results/<phase>/{dataset}/... of a permuted dataset's real one, per copy.
    """
    out = []
    for source in sources:
        for path in source():
            parts = Path(path).parts
            out += [
                str(Path(*parts[:2], name, *parts[3:]))
                for name, (real, _) in PERMUTED.items()
                if parts[2] == real
            ]
    return out


def phase_config(section, dataset):
    """config[section] for a dataset's jobs; a calibration copy's jobs take
    calibration.overrides.<section> over it (fewer layers: a bounded calibration run).
    """
    if dataset in PERMUTED:
        return _merged(
            config[section], config["calibration"]["overrides"].get(section, {})
        )
    return config[section]


def _merged(base, over):
    """``base`` with the keys of ``over``; nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merged(out[key], value)
        out[key] = value
    return out


def alignment_bootstrap_targets():
    return [
        store.ALIGNMENT_BOOTSTRAP.format(dataset=d, model_a=a, model_b=b)
        for d in PROMPT_DATASETS
        for a, b in alignment_pairs()
    ]


def _is_bootstrap_key(key):
    return key == "n_bootstrap" or key.startswith("bootstrap_")


def alignment_map_settings(dataset=None):
    """The alignment section without pairs and the bootstrap keys (they do not change maps);
    with ``dataset``, that dataset's (phase_config)."""
    section = (
        config["alignment"] if dataset is None else phase_config("alignment", dataset)
    )
    return {
        k: v for k, v in section.items() if k != "pairs" and not _is_bootstrap_key(k)
    }


def alignment_bootstrap_settings():
    return {k: v for k, v in config["alignment"].items() if _is_bootstrap_key(k)}


def all_cores(fraction=1):
    """A share of --cores for rules that use them all; 1 where Snakemake has no core count
    (``--report``, ``--lint``, ``--dag``), since those run no job."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    return max(1, int((cores or 1) * fraction))
