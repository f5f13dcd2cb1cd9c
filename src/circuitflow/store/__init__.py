"""Artifact layer: the on-disk layout every phase shares, manifests and content hashes.

Phases talk to each other only through the paths and array names defined here.

A phase with per-unit results may also write a tidy ``measurements.csv`` (layout under
``MEASUREMENTS_FILE`` below): the statistics phase turns every one declared in
``rules/common.smk`` (``measurements_targets()``) into effect-size rows.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from circuitflow.store.manifests import (  # noqa: F401 - the artifact layer's API
    MANIFEST,
    MANIFEST_ATTR,
    NOT_CONTENT,
    PARTIAL_SUFFIX,
    WORK_DIR,
    ZARR_METADATA,
    ZARR_SUFFIX,
    ArtifactError,
    artifact_key,
    artifacts_under,
    canonical_json,
    claimed,
    code_version,
    has_manifest,
    input_key,
    input_keys,
    is_zarr_store,
    keyable_inputs,
    manifest_path,
    read_manifest,
    remove_manifest,
    remove_partial,
    remove_stale_manifest,
    sha256_file,
    sha256_json,
    update_manifest,
    verify,
    verify_inputs,
    verify_tree,
    work_dir,
    write_manifest,
)

# ---------------------------------------------------------------- layout
MODEL_DIR = "resources/models/{model}"
DATASET_DIR = "results/datasets/{dataset}"
ACTIVATIONS = "results/activations/{dataset}/{model}.zarr"
VECTORS = "results/vectors/{dataset}/{model}.zarr"
SAE_DIR = "results/sae/{dataset}/{model}/{hook}/{architecture}"
ALIGNMENT = "results/alignment/{dataset}/{model_a}__{model_b}.csv"
PATCHING_DIR = "results/patching/{dataset}/{model}"
ATTRIBUTION_DIR = "results/attribution/{dataset}/{model}"
STEERING_DIR = "results/steering/{dataset}/{model}"
# the projector study: per trained VLM (its folder is MODEL_DIR, with TRAINING_CURVE inside)
# the held-out evaluation, and the pairwise comparison of every VLM of one caption dataset
PROJECTOR_DIR = "results/projectors/{dataset}/{model}"
PROJECTOR_COMPARISON = "results/projectors/{dataset}/comparison"
TRAINING_CURVE = "training.csv"
EFFECT_SIZES = "results/stats/effect_sizes.csv"
POWER_ANALYSIS = "results/stats/power_analysis.csv"
K_SELECTION = "results/stats/k_selection.csv"
ALIGNMENT_BOOTSTRAP = "results/alignment/{dataset}/{model_a}__{model_b}.bootstrap.csv"
ALIGNMENT_SUMMARIES = "results/alignment/{dataset}/{model_a}__{model_b}.summaries.csv"
VECTORS_MEASUREMENTS = "results/vectors/{dataset}/{model}.measurements.csv"
VECTORS_SPECIFICITY = "results/vectors/{dataset}/{model}.specificity.csv"
# Generic per-unit measurements any phase may write (inside its artifact directory, declared
# in rules/common.smk measurements_targets()); results/stats/effect_sizes.csv consumes them.
# One row per measured value, columns (circuitflow.stats.MEASUREMENT_COLUMNS):
#   phase, dataset, model, layer (int or empty), site, position, condition,
#   setting (free "key=value ..." text naming the knobs, may be empty), metric,
#   arm (treatment | baseline | control), unit (id of the prompt / image / pair), value.
# Rows sharing every column but arm, unit, value form one group; stats compares treatment
# with baseline (comparison vs_baseline) and with control (vs_random_control): paired
# (ttest_rel, Cohen's d_z) on the units both arms share, else independent (Welch, Hedges' g).
# Several values of one unit in an arm (e.g. control seeds) are averaged first.
# Optional columns (MEASUREMENT_OPTIONAL), each constant within a group:
#   unit_kind (UNIT_KINDS: what one independent unit is; named in the effect row's test,
#   e.g. "ttest_rel by frame"), note (a flag copied into the effect row's note, e.g.
#   "fluency outside band"), design (MEASUREMENT_DESIGNS: empty = paired or independent as
#   above; "rank" = Mann-Whitney U and AUROC of the two arms' values), family_part and
#   n_family_part (as in summaries below: hypotheses of one part of a family).
MEASUREMENTS_FILE = "measurements.csv"
MEASUREMENT_COLUMNS = [
    "phase",
    "dataset",
    "model",
    "layer",
    "site",
    "position",
    "condition",
    "setting",
    "metric",
    "arm",
    "unit",
    "value",
]
MEASUREMENT_OPTIONAL = ["unit_kind", "note", "design", "family_part", "n_family_part"]
UNIT_KINDS = ("prompt", "frame", "photo", "sample")
RANK_DESIGN = "rank"
MEASUREMENT_DESIGNS = ("", RANK_DESIGN)
# Per-comparison summaries (designs without per-unit values): the group columns above plus
# comparison, design (single_case | auroc | permutation), value (the observed statistic),
# reference_mean, reference_sd, n_reference (the reference draws or the baseline group),
# n_reference_ge (permutation: draws >= value); optionally n_treatment, mean_treatment,
# mean_baseline, family_part, n_family_part (hypotheses of one part of a family: a family's
# n_family is their sum over its distinct parts, e.g. every live feature of every SAE), and
# note (copied into the effect row's note).
SUMMARY_COLUMNS = [
    *[c for c in MEASUREMENT_COLUMNS if c not in ("arm", "unit", "value")],
    "comparison",
    "design",
    "value",
    "reference_mean",
    "reference_sd",
    "n_reference",
    "n_reference_ge",
]
SUMMARY_OPTIONAL = [
    "n_treatment",
    "mean_treatment",
    "mean_baseline",
    "family_part",
    "n_family_part",
    "note",
]
SUMMARIES_FILE = "summaries.csv"
LOGS = "logs/{rule}/{key}.log"
SAMPLES_FILE = "samples.jsonl"

# Activation store: one array per hook point at sample level, dims (sample, position, d_model);
# per-head attention output at the last token, dims (sample, head, d_model); per-token
# residuals in the group TOKENS_GROUP, dims (token, d_model), indexed by token_sample/position.
POSITIONS = ("last", "trigger_mean", "mean")
SITES = ("hook_resid_pre", "hook_resid_post")
# Vision stores: CNN stage outputs are ``blocks.{i}.hook_out``; ViT towers use the residual
# names; towers of a VLM other than the language model carry a prefix (``vision.blocks.3...``).
# A VLM's projector output is one site between its tower and its language model:
# ``projector.hook_out`` (the image tokens the LM reads in place of its input embeddings) parses
# as layer 0 of its own stage, site ``projector.hook_out``. Hooks run in stage order (STAGES:
# the towers' blocks, the projector, the LM's blocks), then by layer.
VISION_SITES = ("hook_out",)
TOWERS = ("vision", "qformer", "perceiver")
PROJECTOR = "projector"
PROJECTOR_HOOK = f"{PROJECTOR}.hook_out"
STAGES = (*TOWERS, PROJECTOR, "")  # "" = the model's own (language model / encoder) blocks
# The direction variables of a vectors store, by contrast (config key direction_contrast):
# emotion vs neutral (a shared "emotional register" axis dominates it), emotion vs the other
# emotions (specificity), and the multinomial probe's direction.
DIRECTION_VARIABLES = {
    "vs_neutral": "direction",
    "vs_others": "direction_vs_others",
    "probe": "direction_probe",
}
# Graded image attributes: the ``attribute`` coordinate of image datasets, with a ``level``.
GRADED_ATTRIBUTES = ("exposure", "contrast", "tone", "saturation", "color_cast", "tilt")
VISION_POSITIONS = ("mean", "center", "max")  # pooled over the spatial grid (CNN, ViT patches)
HEAD_SITE = "attn.hook_result"
TOKENS_GROUP = "tokens"
SAMPLE_COORDS = ("label", "split", "frame_id")  # plus the index coordinate "sample" (ids)


def as_measurements(frame, **const):
    """``frame`` (a DataFrame) with the columns ``const`` set and every missing measurement
    column empty, in :data:`MEASUREMENT_COLUMNS` order, then the optional columns it has
    (:data:`MEASUREMENT_OPTIONAL`); ``frame`` is modified in place."""
    for key, value in const.items():
        frame[key] = value
    for col in MEASUREMENT_COLUMNS:
        if col not in frame:
            frame[col] = "" if col not in ("layer", "value") else np.nan
    return frame[MEASUREMENT_COLUMNS + [c for c in MEASUREMENT_OPTIONAL if c in frame]]


def measurements_file(path: str | os.PathLike) -> Path:
    """The measurements.csv of an artifact: the file itself, or the one inside a directory."""
    path = Path(path)
    return path if path.suffix == ".csv" else path / MEASUREMENTS_FILE


def summaries_file(path: str | os.PathLike) -> Path:
    """The summaries.csv of an artifact: the file itself, or the one inside a directory."""
    path = Path(path)
    return path if path.suffix == ".csv" else path / SUMMARIES_FILE


def hook_name(layer: int, site: str) -> str:
    """TransformerLens hook name, e.g. ``blocks.8.hook_resid_pre``; a site with a tower prefix
    (``vision.hook_resid_post``) names that tower's block: ``vision.blocks.8.hook_resid_post``;
    the projector's site is its hook (``projector.hook_out``, layer 0)."""
    tower, _, rest = site.partition(".")
    if tower == PROJECTOR and rest:
        if layer != 0:
            raise ValueError(f"{site} is one site: layer 0, not {layer}")
        return site
    if tower in TOWERS and rest:
        return f"{tower}.blocks.{layer}.{rest}"
    return f"blocks.{layer}.{site}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """Inverse of :func:`hook_name`: ``blocks.8.hook_resid_pre`` -> ``(8, "hook_resid_pre")``,
    ``vision.blocks.2.hook_resid_post`` -> ``(2, "vision.hook_resid_post")``,
    ``projector.hook_out`` -> ``(0, "projector.hook_out")``."""
    stage, _, rest = name.partition(".")
    if stage == PROJECTOR and rest.startswith("hook_") and "." not in rest:
        return 0, name
    tower = ""
    if stage in TOWERS:
        tower, name = stage, rest
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"not a block hook name: {name!r} (expected blocks.<layer>.<site>)")
    return int(parts[1]), f"{tower}.{parts[2]}" if tower else parts[2]


def layer_and_site(name: str) -> tuple[int, str]:
    """:func:`parse_hook_name`, or ``(-1, name)`` for a hook outside the blocks
    (``hook_embed``, ``ln_final.hook_normalized``): the layer and site columns of a listing."""
    try:
        return parse_hook_name(name)
    except ValueError:
        return -1, name


def safe_name(name: str) -> str:
    """Model names as path components: ``/`` becomes ``_``."""
    return name.replace("/", "_")


# ---------------------------------------------------------------- datasets
def read_samples(dataset_dir: str | os.PathLike) -> list[dict]:
    """Rows of a built dataset (``samples.jsonl``): sample_id, text, label, split, span, ..."""
    path = Path(dataset_dir) / SAMPLES_FILE
    with open(path) as f:
        return [json.loads(line) for line in f]


def write_samples(dataset_dir: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    path = Path(dataset_dir) / SAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=False, ensure_ascii=True) + "\n")
    return path


# ---------------------------------------------------------------- Zarr stores
# Snakemake marks a directory() output with a .snakemake_timestamp file; in a Zarr store it is
# expected, so listing the store's members says nothing about it.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")


def ignore_unstable_dtype_warning() -> None:
    # Fixed-width unicode coordinates are not yet in the zarr v3 spec; xarray reads them fine.
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")


def _hook_sort_key(name: str):
    order = {"hook_resid_pre": 0, "attn.hook_result": 1, "hook_resid_post": 2}
    layer, site = parse_hook_name(name)
    stage, _, bare = site.partition(".")
    if stage not in STAGES[:-1]:  # the model's own blocks (``attn.`` is no stage)
        stage, bare = "", site
    return STAGES.index(stage), layer, order.get(bare, 3), site


def forward_order(names: Iterable[str]) -> list[str]:
    """Hook names in forward order: a VLM's tower blocks, its projector, its LM blocks; within
    a stage by layer, then resid_pre, heads, resid_post."""
    return sorted(set(names), key=_hook_sort_key)


def activation_hooks(
    path: str | os.PathLike, sites: Iterable[str] = SITES + VISION_SITES
) -> list[str]:
    """Sample-level residual hook arrays of an activation store, in forward order (tower
    prefixes of vision stores, e.g. ``vision.hook_resid_post``, and a VLM's
    ``projector.hook_out`` match their bare site)."""
    import zarr

    sites = set(sites)
    root = zarr.open_group(Path(path), mode="r")
    names = [
        name
        for name in root.array_keys()
        if name.startswith(("blocks.", f"{PROJECTOR}.", *(f"{t}.blocks." for t in TOWERS)))
        and parse_hook_name(name)[1].rpartition(".")[2] in sites
    ]
    return forward_order(names)


def read_array(path: str | os.PathLike, name: str) -> np.ndarray:
    """One array of a store as a numpy array (float arrays as float32)."""
    import zarr

    arr = zarr.open_group(Path(path), mode="r")[name][...]
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


def read_sample_coords(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``sample`` ids plus the per-sample coordinates (label, split, frame_id)."""
    return {key: read_array(path, key) for key in ("sample", *SAMPLE_COORDS)}


def write_dataset(path: str | os.PathLike, ds) -> None:
    """Write an xarray Dataset as a Zarr v3 store (no consolidated metadata, float32 data)."""
    ignore_unstable_dtype_warning()
    ds.to_zarr(Path(path), mode="w", zarr_format=3, consolidated=False)


def vectors_dataset(
    hooks: list[str],
    conditions: list[str],
    coords: dict[str, np.ndarray],
    arrays: dict[str, tuple[list[str], np.ndarray]],
    attrs: dict,
    positions: list[str] | None = None,
):
    """The vectors store as an xarray Dataset: ``arrays`` maps name -> (dims, values) over the
    dims hook, position, condition, component, sample, d_model (and hook_b / condition_b for
    pairwise matrices)."""
    import xarray as xr

    layers = [parse_hook_name(h)[0] for h in hooks]
    sites = [parse_hook_name(h)[1] for h in hooks]
    ds = xr.Dataset(
        {
            name: (dims, np.asarray(values, dtype=np.float32))
            for name, (dims, values) in arrays.items()
        },
        coords={
            "hook": hooks,
            "layer": ("hook", np.asarray(layers)),
            "site": ("hook", np.asarray(sites)),
            "position": list(POSITIONS if positions is None else positions),
            "condition": conditions,
            "sample": coords["sample"],
            **{key: ("sample", coords[key]) for key in SAMPLE_COORDS},
        },
        attrs=attrs,
    )
    for dim in ("hook_b", "condition_b"):
        if dim in ds.dims:
            ds = ds.assign_coords({dim: ds[dim.removesuffix("_b")].values})
    return ds


def open_dataset(path: str | os.PathLike, group: str | None = None):
    """An xarray view of a store (activations, vectors), without its manifest attribute."""
    import xarray as xr

    ds = xr.open_zarr(Path(path), group=group, consolidated=False)
    ds.attrs.pop(MANIFEST_ATTR, None)
    return ds


# ---------------------------------------------------------------- vision (images)
IMAGES_FILE = "images.zarr"  # in a dataset dir: uint8 array "images" (sample, y, x, channel)
PROBES_DIR = "results/vectors/{dataset}/{model}.probes"  # probes.csv + measurements.csv
DESCRIBE = "resources/models/{model}.hooks.csv"


def write_images(dataset_dir: str | os.PathLike, images: np.ndarray, chunk: int = 32) -> Path:
    """Stimuli of an image dataset as one uint8 Zarr array; row i = ``image_index`` i."""
    import zarr
    from zarr.codecs import BloscCodec

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 [sample, y, x, 3], got {images.dtype} {images.shape}"
        )
    path = Path(dataset_dir) / IMAGES_FILE
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.create_array(
        "images",
        data=images,
        chunks=(min(chunk, len(images)), *images.shape[1:]),
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
        dimension_names=["sample", "y", "x", "channel"],
    )
    return path


def read_images(dataset_dir: str | os.PathLike, indices=None) -> np.ndarray:
    """uint8 [sample, y, x, 3] stimuli of an image dataset (all, or the given rows)."""
    import zarr

    arr = zarr.open_group(Path(dataset_dir) / IMAGES_FILE, mode="r")["images"]
    return arr[...] if indices is None else arr.get_orthogonal_selection(np.asarray(indices))


def store_positions(path: str | os.PathLike) -> list[str]:
    """Pooled positions of an activation store (text: POSITIONS; images: VISION_POSITIONS)."""
    import zarr

    root = zarr.open_group(Path(path), mode="r")
    if "position" in root.array_keys():
        return [str(x) for x in root["position"][...]]
    return list(POSITIONS)
