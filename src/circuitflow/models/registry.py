"""Model backends as registered variants, the way TransformerLens registers architectures.

A backend knows how to turn a config entry into a prepared folder (``prepare``), load that
folder (``load``), list its hook points (``describe``) and whether it serves a source when
the config says ``backend: auto`` (``claims``). Scripts ask the registry; nothing else
branches on backend names. To add one: subclass :class:`Backend` in its own module, then
``register_backend(MyBackend())`` and import the module in ``circuitflow/models/__init__.py``.
``auto`` asks the specific backends first, then the fallbacks (``fallback = True``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from circuitflow.core.errors import CircuitflowError, ConfigError

FAMILIES = ("causal-lm", "vision-encoder", "vlm")
DTYPES = ("float32", "bfloat16", "float16")
AUTO = "auto"
FACTS_FILE = "circuitflow_model.json"  # in every prepared folder: backend, family, facts


class ModelSourceError(CircuitflowError, RuntimeError):
    """A model's weights cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``config['models']``."""

    name: str
    source: str
    family: str = "causal-lm"
    backend: str = AUTO
    dtype: str = "float32"
    device: str = "cpu"
    prepend_bos: bool = True
    per_token_layers: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for key, value, options in (
            ("family", self.family, FAMILIES),
            ("backend", self.backend, backend_choices()),
            ("dtype", self.dtype, DTYPES),
        ):
            if value not in options:
                raise ConfigError(
                    f"models.{self.name}.{key}: {value!r} is not one of {', '.join(options)}"
                )

    @classmethod
    def from_config(cls, name: str, entry: dict) -> ModelSpec:
        entry = dict(entry)
        entry["per_token_layers"] = tuple(entry.get("per_token_layers", ()))
        return cls(name=name, **entry)


class Backend:
    """One way of preparing, loading and hooking models of some families."""

    name: str = ""
    families: tuple[str, ...] = ()
    fallback: bool = False  # ``auto`` tries fallbacks only after every specific backend

    def claims(self, spec: ModelSpec) -> bool:
        """Whether ``backend: auto`` picks this backend for ``spec``."""
        raise NotImplementedError

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        """Write the prepared folder ``out``; return its facts (JSON-able)."""
        raise NotImplementedError

    def load(self, model_dir: Path, name: str, dtype: str, device: str):
        """The loaded model, in eval mode."""
        raise NotImplementedError

    def describe(self, model) -> list[dict]:
        """One row per hook point: its name first, then what a user needs to pick it."""
        raise NotImplementedError


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` under ``backend.name`` (the config value ``models.<name>.backend``)."""
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """Registered backends in registration order."""
    return tuple(_REGISTRY)


def backend_choices() -> tuple[str, ...]:
    """Every valid value of ``models.<name>.backend``: ``auto`` then the registered names."""
    return (AUTO, *_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ModelSourceError(
            f"unknown model backend {name!r}; registered: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[name]


def resolve_backend(spec: ModelSpec) -> Backend:
    """The backend ``spec`` names, or for ``auto`` the first registered one that claims it."""
    if spec.backend != AUTO:
        backend = get_backend(spec.backend)
        if spec.family not in backend.families:
            raise ModelSourceError(
                f"model {spec.name!r}: backend {spec.backend!r} does not load {spec.family} "
                f"models; it loads {', '.join(backend.families)} (or use backend: auto)"
            )
        return backend
    for backend in sorted(_REGISTRY.values(), key=lambda b: b.fallback):
        if spec.family in backend.families and backend.claims(spec):
            return backend
    raise ModelSourceError(
        f"model {spec.name!r}: no backend serves family {spec.family!r} from {spec.source!r}; "
        f"set models.{spec.name}.backend to one of {', '.join(_REGISTRY)}"
    )


def prepare_model(spec: ModelSpec, out_dir: str | os.PathLike) -> dict:
    """Write ``resources/models/{model}/`` for ``spec`` and its facts file; returns the facts."""
    backend = resolve_backend(spec)
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        facts = backend.prepare(spec, out)
    except BaseException:
        if created:  # leave no partial folder a later run would trust
            shutil.rmtree(out, ignore_errors=True)
        raise
    facts.update({"backend": backend.name, "family": spec.family})
    (out / FACTS_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return facts


def model_facts(model_dir: str | os.PathLike, name: str = "model") -> dict:
    """The facts a prepared folder records (backend, family, sizes)."""
    path = Path(model_dir) / FACTS_FILE
    if not path.exists():
        raise ModelSourceError(
            f"{model_dir}: not a prepared model folder (no {FACTS_FILE}); run snakemake on "
            f"resources/models/{name} first"
        )
    return json.loads(path.read_text())


def _preparing_backend(model_dir: str | os.PathLike, name: str) -> Backend:
    """The registered backend a prepared folder's facts name."""
    backend = model_facts(model_dir, name).get("backend")
    if backend not in _REGISTRY:
        raise ModelSourceError(
            f"{model_dir}: model {name!r} was prepared by backend {backend!r}, which is not "
            f"registered ({', '.join(_REGISTRY)}); prepare it again (snakemake {model_dir} "
            "--forcerun prepare_model)"
        )
    return _REGISTRY[backend]


def load_model(
    model_dir: str | os.PathLike, name: str = "model", dtype: str = "float32", device: str = "cpu"
):
    """Load a prepared folder with the backend that prepared it."""
    return _preparing_backend(model_dir, name).load(Path(model_dir), name, dtype, device)


def describe_model(model_dir: str | os.PathLike, model, name: str = "model") -> list[dict]:
    """Hook-point rows of a loaded model (see :meth:`Backend.describe`)."""
    return _preparing_backend(model_dir, name).describe(model)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (hub look-ups would fail or retry for ~30 s)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
