"""Optional MLflow tracking of finished jobs (config ``tracking.mlflow``; off by default).

After a job succeeds, :func:`track` (called by ``workflow.run_logged``) records it as one
MLflow run in the workflow's experiment: the params and seeds of its outputs' manifests, the
numeric key figures of their other fields (``summary``, ``n_rows``, ...) and the job's wall
time as metrics, its small CSV / JSON / PNG outputs and each output's manifest as artifacts,
tagged with the artifact key, the rule and the wildcards. Manifests are read through
:mod:`circuitflow.store` only. A tracking failure never fails the job: it prints one warning
line and the outputs stay as they are (MLflow only reads them).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from circuitflow import store

# manifest fields that are not key figures (the rest become metrics when numeric)
MANIFEST_FIELDS = ("kind", "key", "code_version", "inputs", "params", "seeds", "files")
ARTIFACT_SUFFIXES = (".csv", ".json", ".png")
# MLflow's limits: characters of a param / tag value, entries of one log_batch call
PARAM_CHARS = 6000
TAG_CHARS = 8000
BATCH = {"params": 100, "tags": 100, "metrics": 1000}
# an unreachable tracking server must not hold a finished job for minutes of retries
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
WARNING_CHARS = 240  # of the error's message in the warning line
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def track(smk, seconds: float | None = None, warn: Callable[[str], None] | None = None):
    """:func:`log_job` with the job's validated ``config["tracking"]`` (``smk.config`` of a
    Snakemake script job); None when ``tracking.mlflow`` is unset. Never raises."""
    try:
        settings = (getattr(smk, "config", None) or {}).get("tracking") or {}
        uri = settings.get("mlflow")
        if not uri:
            return None
        options = {
            key: settings[key] for key in ("experiment", "artifact_location", "max_artifact_mb")
        }
    except Exception as err:  # noqa: BLE001 - tracking must never fail the job
        _warn(warn, getattr(smk, "rule", "?"), "config tracking", err)
        return None
    return log_job(smk, uri, seconds=seconds, warn=warn, **options)


def log_job(
    smk,
    tracking_uri: str,
    *,
    experiment: str,
    max_artifact_mb: float,
    artifact_location: str | None = None,
    seconds: float | None = None,
    warn: Callable[[str], None] | None = None,
) -> str | None:
    """Record a finished job (``smk``: a Snakemake script object, or anything with ``rule``,
    ``output``, ``wildcards`` and optionally ``params``) as one MLflow run of ``experiment``
    at ``tracking_uri``; returns the run id, or None after printing one warning line (to
    ``warn``, else stderr). Files over ``max_artifact_mb`` MB are not logged."""
    rule = str(getattr(smk, "rule", "?"))
    client = run_id = None
    try:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError(f"{err}: pip install -r requirements.txt (mlflow-skinny)") from err
        record = job_record(smk, seconds)
        with _http_defaults(), _sqlite_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            experiment_id = _experiment_id(client, experiment, tracking_uri, artifact_location)
            run = client.create_run(
                experiment_id, run_name=record["run_name"], tags={"circuitflow.rule": rule}
            )
            run_id = run.info.run_id
            _log_batches(client, run_id, record)
            cap = float(max_artifact_mb) * 2**20
            for local, folder in artifact_files(smk.output, cap):
                client.log_artifact(run_id, str(local), folder or None)
            for name, manifest in record["zarr_manifests"].items():
                if len(store.canonical_json(manifest)) <= cap:
                    client.log_dict(run_id, manifest, name)
            client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as err:  # noqa: BLE001 - tracking must never fail the job
        if client is not None and run_id is not None:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001, S110 - the warning below says it all
                pass
        _warn(warn, rule, tracking_uri, err)
        return None


def job_record(smk, seconds: float | None = None) -> dict:
    """What a job's MLflow run holds: ``params``, ``metrics``, ``tags`` (str -> value), the
    ``run_name`` and the manifests of Zarr outputs (``zarr_manifests``: artifact name ->
    manifest), from the manifests of ``smk.output`` (outputs without one are skipped)."""
    manifests = {
        name: store.read_manifest(path)
        for name, path in named_outputs(smk.output)
        if store.has_manifest(path)
    }
    wildcards = dict(_items(getattr(smk, "wildcards", None)))
    tags = {"circuitflow.rule": str(getattr(smk, "rule", "?"))}
    tags.update({_key(k): str(v) for k, v in wildcards.items()})
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if manifests:
        first = next(iter(manifests.values()))
        tags.update(
            {
                "circuitflow.key": first["key"],
                "circuitflow.kind": first["kind"],
                "circuitflow.code_version": first["code_version"],
            }
        )
    several = len(manifests) > 1
    for name, manifest in manifests.items():
        if several:
            tags[_key(f"circuitflow.key.{name}")] = manifest["key"]
        for input_name, key in manifest.get("inputs", {}).items():
            tags[_key(f"circuitflow.input.{input_name}")] = key
        flat = dict(flatten(manifest.get("params", {})))
        flat.update(flatten(manifest.get("seeds", {}), "seeds"))
        _merge(params, {k: _text(v, PARAM_CHARS) for k, v in flat.items()}, name)
        figures = {k: v for k, v in manifest.items() if k not in MANIFEST_FIELDS}
        _merge(metrics, {k: float(v) for k, v in flatten(figures) if _is_number(v)}, name)
    if not manifests:
        scalars = {k: v for k, v in _items(getattr(smk, "params", None)) if _is_scalar(v)}
        params.update({_key(k): _text(v, PARAM_CHARS) for k, v in scalars.items()})
    if seconds is not None:
        metrics["job_seconds"] = float(seconds)
    zarr_manifests = {
        f"{_artifact_folder(path)}.manifest.json": manifests[name]
        for name, path in named_outputs(smk.output)
        if name in manifests and store.is_zarr_store(path)
    }
    run_name = " ".join([tags["circuitflow.rule"], "/".join(map(str, wildcards.values()))])
    return {
        "params": params,
        "metrics": metrics,
        "tags": {k: _text(v, TAG_CHARS) for k, v in tags.items()},
        "run_name": run_name.strip(),
        "zarr_manifests": zarr_manifests,
    }


def named_outputs(output) -> list[tuple[str, str]]:
    """``[(name, path)]`` of a job's outputs: Snakemake's output names where given, else
    the position (``"0"``, ``"1"``, ...)."""
    names: dict[str, str] = {}
    for name, value in output.items() if hasattr(output, "items") else ():
        for item in [value] if isinstance(value, str | os.PathLike) else value:
            names.setdefault(str(item), name)
    return [(names.get(str(path), str(i)), str(path)) for i, path in enumerate(output)]


def artifact_files(outputs, cap_bytes: float) -> list[tuple[Path, str]]:
    """``[(file, artifact folder)]``: the CSV / JSON / PNG files of ``outputs`` up to
    ``cap_bytes`` each (a file output with its manifest sidecar, a directory's files with
    its ``manifest.json``; a Zarr store's internals never), under the output's own path."""
    found = []
    for path in map(Path, outputs):
        if store.is_zarr_store(path) or not path.exists():
            continue
        folder = _artifact_folder(path)
        if path.is_file():
            candidates = [(path, str(Path(folder).parent))]
            sidecar = store.manifest_path(path)
            if sidecar.is_file():
                candidates.append((sidecar, str(Path(folder).parent)))
        else:
            candidates = [
                (f, (Path(folder) / f.parent.relative_to(path)).as_posix())
                for f in sorted(path.rglob("*"))
                if f.is_file() and f.name != ".snakemake_timestamp"
            ]
        found += [
            (f, "" if where == "." else where)
            for f, where in candidates
            if f.suffix in ARTIFACT_SUFFIXES and f.stat().st_size <= cap_bytes
        ]
    return found


def flatten(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted key, leaf)`` pairs of nested mappings and lists (list items by index);
    lists of scalars stay whole leaves (a param value such as ``[1, 3]``)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple) and any(isinstance(v, Mapping | list) for v in obj):
        for i, value in enumerate(obj):
            yield from flatten(value, f"{prefix}.{i}" if prefix else str(i))
    elif prefix:
        yield _key(prefix), obj


def _experiment_id(client, name: str, uri: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        location = artifact_location or _default_artifact_location(uri)
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # another job created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ValueError(f"experiment {name!r} is deleted; restore it or set tracking.experiment")
    return found.experiment_id


def _default_artifact_location(uri: str) -> str | None:
    """Beside a sqlite database (``<its folder>/mlartifacts``), not in the working directory."""
    db = _sqlite_path(uri)
    return None if db is None else (db.parent.resolve() / "mlartifacts").as_uri()


def _log_batches(client, run_id: str, record: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    params = [Param(k, v) for k, v in record["params"].items()]
    tags = [RunTag(k, v) for k, v in record["tags"].items()]
    stamp = _now_ms()
    metrics = [Metric(k, v, stamp, 0) for k, v in record["metrics"].items()]
    for kind, entries in (("params", params), ("tags", tags), ("metrics", metrics)):
        size = BATCH[kind]
        for start in range(0, len(entries), size):
            client.log_batch(run_id, **{kind: entries[start : start + size]})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _artifact_folder(path: Path | str) -> str:
    """An output's artifact name: its path relative to the working directory (as the rule
    names it), else its file name."""
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            path = Path(path.name)
    return path.as_posix()


def _merge(into: dict, new: dict, output_name: str) -> None:
    """Add ``new`` to ``into``; a key another output gave a different value is prefixed
    with this output's name."""
    for key, value in new.items():
        if key in into and into[key] != value:
            key = _key(f"{output_name}.{key}")
        into[key] = value


def _items(container) -> list[tuple[str, object]]:
    if container is None:
        return []
    if hasattr(container, "items"):
        return [(str(k), v) for k, v in container.items()]
    return [(str(k), v) for k, v in vars(container).items() if not k.startswith("_")]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _key(key: str) -> str:
    """A name MLflow accepts: unsupported characters become ``_``, at most 250 characters."""
    return _UNSAFE.sub("_", key)[:250]


def _text(value, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


@contextmanager
def _sqlite_lock(uri: str):
    """One job at a time on a sqlite database: jobs that create it side by side race in
    MLflow's schema migrations (measured: 4 parallel first jobs, all 4 failed)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def _http_defaults():
    missing = [k for k in HTTP_DEFAULTS if k not in os.environ]
    os.environ.update({k: HTTP_DEFAULTS[k] for k in missing})
    try:
        yield
    finally:
        for key in missing:
            os.environ.pop(key, None)


def _warn(warn, rule: str, where: str, err: Exception) -> None:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = message if len(message) <= WARNING_CHARS else message[: WARNING_CHARS - 3] + "..."
    line = (
        f"circuitflow [{rule}]: warning: MLflow tracking skipped ({type(err).__name__}: "
        f"{message}; {where}); the job's outputs are kept"
    )
    try:
        (warn or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
    except Exception:  # noqa: BLE001, S110 - a broken warning sink must not fail the job
        pass


__all__ = ["artifact_files", "flatten", "job_record", "log_job", "named_outputs", "track"]
