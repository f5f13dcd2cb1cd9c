"""Manifests and content hashes of artifacts: write, read, verify (one artifact or a results
tree), the keys that identify a piece of work, and the work folders of resumable jobs.

Re-exported by :mod:`circuitflow.store`; phases use it as ``store.write_manifest`` etc.
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

# Resumable work of a running job, outside its outputs (Snakemake deletes those when a job
# fails or was killed), keyed like the artifact it will become (store.work_dir).
WORK_DIR = ".snakemake/circuitflow/work/{artifact}/{key}"

MANIFEST = "manifest.json"
# Files inside an artifact directory that are not part of its content.
NOT_CONTENT = {MANIFEST, ".snakemake_timestamp"}


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
    src = Path(__file__).resolve().parents[1]
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
    if path.is_dir():  # a plain folder (e.g. of photos): its files' names and contents
        files = {str(f.relative_to(path)): sha256_file(f) for f in _artifact_files(path)}
        if files:
            return "sha256:" + sha256_json(files)
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
    return {"inputs": [p for p in paths if has_manifest(p) or p.exists()]}


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
