"""Artifact layer: the on-disk layout every phase shares, manifests and content hashes.

Phases talk to each other only through the paths and array names defined here.

A phase with per-unit results may also write a tidy ``measurements.csv`` (layout under
``MEASUREMENTS_FILE`` below): the statistics phase turns every one declared in
``rules/common.smk`` (``measurements_targets()``) into effect-size rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from circuitflow import __version__

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
# Resumable work of a running job, outside its outputs (Snakemake deletes those when a job
# fails or was killed), keyed like the artifact it will become (store.work_dir).
WORK_DIR = ".snakemake/circuitflow/work/{artifact}/{key}"

MANIFEST = "manifest.json"
# Files inside an artifact directory that are not part of its content.
NOT_CONTENT = {MANIFEST, ".snakemake_timestamp"}
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
TOWERS = ("vision",)
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


def safe_name(name: str) -> str:
    """Model names as path components: ``/`` becomes ``_``."""
    return name.replace("/", "_")


# ---------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} in a manifest")


def code_version() -> str:
    """Package version plus a hash of the library's source, so manifests name the exact code."""
    src = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------- manifests
# A Zarr store keeps its manifest in the root group's attributes (``zarr.json``), so xarray and
# zarr open it without stray files; the root metadata is hashed without that attribute.
ZARR_SUFFIX = ".zarr"
ZARR_METADATA = "zarr.json"
MANIFEST_ATTR = "circuitflow_manifest"
PARTIAL_SUFFIX = ".partial"  # zarr's in-flight chunk writes, left behind by a killed job


def is_zarr_store(artifact: str | os.PathLike) -> bool:
    return Path(artifact).suffix == ZARR_SUFFIX


def manifest_path(artifact: str | os.PathLike) -> Path:
    """Where an artifact's manifest lives: a Zarr store's root ``zarr.json`` (attribute
    ``circuitflow_manifest``), a directory's ``manifest.json``, a file's ``.manifest.json``."""
    artifact = Path(artifact)
    if is_zarr_store(artifact):
        return artifact / ZARR_METADATA
    if artifact.is_dir() or (not artifact.is_file() and artifact.suffix == ""):
        return artifact / MANIFEST
    return artifact.with_name(artifact.name + ".manifest.json")


def _artifact_files(artifact: Path) -> list[Path]:
    if artifact.is_file():
        return [artifact]
    return sorted(p for p in artifact.rglob("*") if p.is_file() and p.name not in NOT_CONTENT)


def _zarr_root_metadata(artifact: Path) -> dict:
    path = artifact / ZARR_METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Zarr root metadata; rebuild {artifact} with snakemake")
    return json.loads(path.read_text())


def _file_digest(artifact: Path, path: Path) -> str:
    """sha256 of a file; a store's root metadata is hashed without its manifest attribute."""
    if is_zarr_store(artifact) and path == artifact / ZARR_METADATA:
        meta = _zarr_root_metadata(artifact)
        meta.get("attributes", {}).pop(MANIFEST_ATTR, None)
        return sha256_json(meta)
    return sha256_file(path)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _store_manifest(artifact: Path, manifest: dict) -> None:
    if is_zarr_store(artifact):
        meta = _zarr_root_metadata(artifact)
        meta.setdefault("attributes", {})[MANIFEST_ATTR] = manifest
        _write_json_atomic(artifact / ZARR_METADATA, meta)
    else:
        _write_json_atomic(manifest_path(artifact), manifest)


def input_key(path: str | os.PathLike) -> str:
    """Key of an input: its manifest key when it is an artifact, else the file's sha256."""
    path = Path(path)
    if has_manifest(path):
        return read_manifest(path)["key"]
    if path.is_file():
        return "sha256:" + sha256_file(path)
    raise FileNotFoundError(f"{path}: input has neither a manifest nor file content to hash")


def artifact_key(kind: str, input_keys: Mapping[str, str], params: Mapping, seeds: Mapping) -> str:
    """Identity of a piece of work: hash of what it is, its inputs, params, seeds and code."""
    return sha256_json(
        {
            "kind": kind,
            "inputs": dict(input_keys),
            "params": params,
            "seeds": seeds,
            "code_version": code_version(),
        }
    )


def input_keys(
    inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike]] | None,
) -> dict[str, str]:
    """``{name: key}`` of a job's inputs (a list of inputs is keyed ``name[i]``)."""
    keys: dict[str, str] = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, str | os.PathLike):
            keys[name] = input_key(value)
        else:
            for i, item in enumerate(value):
                keys[f"{name}[{i}]"] = input_key(item)
    return keys


def work_dir(artifact: str | os.PathLike, kind: str, inputs=None, params=None, seeds=None) -> Path:
    """The folder where the job writing ``artifact`` keeps what a rerun after a kill can
    reuse: one per artifact key, so a change of input, param, seed or code never resumes
    stale work (the stale folders of that artifact are deleted)."""
    params = json.loads(canonical_json(params or {}))
    seeds = json.loads(canonical_json(seeds or {}))
    key = artifact_key(kind, input_keys(inputs), params, seeds)
    folder = Path(WORK_DIR.format(artifact=Path(artifact).as_posix().strip("/"), key=key))
    if folder.parent.is_dir():
        for stale in folder.parent.iterdir():
            if stale.name != key:
                remove_partial(stale)
    return folder


def write_manifest(
    artifact: str | os.PathLike,
    kind: str,
    inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike]] | None = None,
    params: Mapping | None = None,
    seeds: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """Hash every file of ``artifact`` and write its manifest; returns the manifest."""
    artifact = Path(artifact)
    keys = input_keys(inputs)
    params = json.loads(canonical_json(params or {}))
    seeds = json.loads(canonical_json(seeds or {}))
    root = artifact if artifact.is_dir() else artifact.parent
    manifest = {
        "kind": kind,
        "key": artifact_key(kind, keys, params, seeds),
        "code_version": code_version(),
        "inputs": keys,
        "params": params,
        "seeds": seeds,
        "files": {
            p.relative_to(root).as_posix(): _file_digest(artifact, p)
            for p in _artifact_files(artifact)
        },
    }
    if extra:
        manifest.update(json.loads(canonical_json(extra)))
    _store_manifest(artifact, manifest)
    return manifest


def update_manifest(artifact: str | os.PathLike, **fields) -> dict:
    """Add or replace top-level fields of an existing manifest (e.g. the device a job used);
    the files and key stay as written."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    manifest.update(json.loads(canonical_json(fields)))
    _store_manifest(artifact, manifest)
    return manifest


def remove_manifest(artifact: str | os.PathLike) -> None:
    """Drop an artifact's manifest (a store copied from another keeps none of its source's)."""
    artifact = Path(artifact)
    if is_zarr_store(artifact):
        meta = _zarr_root_metadata(artifact)
        if meta.get("attributes", {}).pop(MANIFEST_ATTR, None) is not None:
            _write_json_atomic(artifact / ZARR_METADATA, meta)
    else:
        manifest_path(artifact).unlink(missing_ok=True)


def remove_stale_manifest(output: str | os.PathLike) -> None:
    """Delete the sidecar a file output's previous run left (Snakemake deletes the output
    before rerunning its job, not the sidecar beside it)."""
    sidecar = manifest_path(output)
    if sidecar.name != MANIFEST and sidecar.name != ZARR_METADATA:
        sidecar.unlink(missing_ok=True)


def has_manifest(artifact: str | os.PathLike) -> bool:
    artifact = Path(artifact)
    if is_zarr_store(artifact):
        path = artifact / ZARR_METADATA
        return path.is_file() and MANIFEST_ATTR in json.loads(path.read_text()).get(
            "attributes", {}
        )
    return manifest_path(artifact).is_file()


def read_manifest(artifact: str | os.PathLike) -> dict:
    artifact = Path(artifact)
    if not has_manifest(artifact):
        where = (
            f"{artifact / ZARR_METADATA} (attribute {MANIFEST_ATTR})"
            if is_zarr_store(artifact)
            else str(manifest_path(artifact))
        )
        raise FileNotFoundError(f"{where}: no manifest; rebuild {artifact} with snakemake")
    if is_zarr_store(artifact):
        return _zarr_root_metadata(artifact)["attributes"][MANIFEST_ATTR]
    return json.loads(manifest_path(artifact).read_text())


def verify(artifact: str | os.PathLike) -> list[str]:
    """Re-hash an artifact's files; one line per file that changed, vanished or appeared."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    root = artifact if artifact.is_dir() else artifact.parent
    problems = []
    recorded = manifest["files"]
    for rel, digest in sorted(recorded.items()):
        path = root / rel
        if not path.exists():
            problems.append(f"missing: {path}")
        elif _file_digest(artifact, path) != digest:
            problems.append(f"changed: {path}")
    if artifact.is_dir():
        for path in _artifact_files(artifact):
            if path.relative_to(root).as_posix() not in recorded:
                problems.append(f"unexpected: {path}")
    return problems


def verify_inputs(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse a job's inputs that carry a manifest which does not verify (a changed, deleted
    or added file): raise one line naming the artifact, its first problem, and the fix."""
    seen = set()
    for path in paths:
        path = Path(path)
        if path in seen or not has_manifest(path):
            continue
        seen.add(path)
        problems = verify(path)
        if problems:
            cached = (
                f" and the cache entry it links to ({path.resolve()})" if path.is_symlink() else ""
            )
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ArtifactError(
                f"input {path} does not match its manifest: {problems[0]}{more}; "
                f"delete {path}{cached} and rerun snakemake to rebuild it"
            )


def claimed(path: str | os.PathLike) -> bool:
    """True when ``path`` has a manifest or lies inside an artifact (a directory with
    ``manifest.json`` or a Zarr store) whose manifest lists it."""
    path = Path(path)
    if has_manifest(path):
        return True
    return any(is_zarr_store(parent) or (parent / MANIFEST).is_file() for parent in path.parents)


def keyable_inputs(paths: Iterable[str | os.PathLike]) -> dict[str, list[Path]]:
    """A job's inputs that have a key (an artifact, or a file), for a manifest's ``inputs``."""
    paths = [Path(p) for p in paths]
    return {"inputs": [p for p in paths if has_manifest(p) or p.is_file()]}


def artifacts_under(top: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Walk a results tree: the artifacts in it (Zarr stores, directories with a manifest,
    files with a sidecar), and the files no artifact claims (sidecars without their file
    included), both sorted."""
    top = Path(top)
    found, unclaimed = [], []
    for folder, dirs, files in os.walk(top, followlinks=True):
        here = Path(folder)
        if here != top and (is_zarr_store(here) or MANIFEST in files):
            found.append(here)
            dirs[:] = []
            continue
        dirs.sort()
        for name in files:
            path = here / name
            if name.endswith(".manifest.json"):
                target = path.with_name(name.removesuffix(".manifest.json"))
                (found if target.is_file() else unclaimed).append(
                    target if target.is_file() else path
                )
            elif name not in NOT_CONTENT and not manifest_path(path).is_file():
                unclaimed.append(path)
    return sorted(found), sorted(unclaimed)


def verify_tree(top: str | os.PathLike) -> tuple[int, list[str]]:
    """Verify every artifact under ``top``: (number of artifacts, one line per problem:
    changed, missing or unexpected files, stores without a manifest, unclaimed files)."""
    found, unclaimed = artifacts_under(top)
    problems = []
    for artifact in found:
        if not has_manifest(artifact):
            problems.append(f"no manifest: {artifact} (rebuild it with snakemake)")
            continue
        problems += verify(artifact)
    for path in unclaimed:
        if path.name.endswith(".manifest.json"):
            problems.append(f"missing: {path.with_name(path.name.removesuffix('.manifest.json'))}")
        else:
            problems.append(f"unexpected: {path} (no artifact's manifest lists it)")
    return len(found), problems


class ArtifactError(RuntimeError):
    """An artifact on disk is not what its manifest says."""


def remove_partial(path: str | os.PathLike) -> None:
    """Delete a half-written artifact so no later run trusts it."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


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
def ignore_unstable_dtype_warning() -> None:
    # Fixed-width unicode coordinates are not yet in the zarr v3 spec; xarray reads them fine.
    import warnings

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
