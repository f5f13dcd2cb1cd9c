"""A finished results tree for notebooks: ``circuitflow.open_results("results/")``.

Everything loads on first use: the effect table (and any other CSV) as a pandas DataFrame,
each Zarr store as an xarray Dataset keyed ``(dataset, model)`` (through
:func:`circuitflow.store.open_dataset`, itself lazy), each SAE as a SAELens object loaded by
``sae_lens.SAE.load_from_disk`` keyed ``(dataset, model, hook, architecture)``. Paths come
from the layout in :mod:`circuitflow.store`; a missing piece raises one line naming the path
and the command that makes it.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path

from circuitflow import store
from circuitflow.core.errors import CircuitflowError

RESULTS = "results"  # the first component of every store.* results path
SAE_CFG = "cfg.json"  # SAELens' config file: what marks a saved SAE folder


class ResultsNotFoundError(CircuitflowError, FileNotFoundError):
    """A results folder or table is missing (the message names it and the command)."""


class MissingResultError(CircuitflowError, KeyError):
    """No artifact under a key (the message names its path, the command and what exists)."""

    def __str__(self) -> str:
        return str(self.args[0])


def make_command(target: str) -> str:
    return f"snakemake --cores all {target}"


class ArtifactMap(Mapping):
    """Read-only mapping of key tuples to artifacts that match one ``store`` path pattern
    under a results folder; an artifact is opened on first access and kept (the folder is
    listed once, and again when a key is not found). Keys are the
    pattern's fields in order, e.g. ``(dataset, model)``; model names may be given with ``/``
    (paths hold :func:`store.safe_name`)."""

    def __init__(
        self,
        root: Path,
        pattern: str,
        opener: Callable[[Path], object],
        what: str,
        marker: str | None = None,
    ):
        self.root, self.pattern, self.opener, self.what = root, pattern, opener, what
        self.marker = marker  # a file every artifact holds (else: the path exists)
        self.fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f]
        self._opened: dict[tuple, object] = {}

    def _relative(self, **values) -> str:
        return self.pattern.format(**values).split("/", 1)[1]

    @cached_property
    def _paths(self) -> dict[tuple, Path]:
        wild = self._relative(**{f: "*" for f in self.fields})
        regex = re.escape(self._relative(**{f: "\0" for f in self.fields}))
        regex = re.compile(regex.replace("\0", "([^/]+)"))
        found = {}
        for path in sorted(self.root.glob(wild)):
            match = regex.fullmatch(path.relative_to(self.root).as_posix())
            if match and (self.marker is None or (path / self.marker).is_file()):
                found[match.groups()] = path
        return found

    def _key(self, key) -> tuple:
        key = (key,) if isinstance(key, str) else tuple(key)
        if len(key) != len(self.fields):
            raise MissingResultError(
                f"{self.what} keys are ({', '.join(self.fields)}), got {key!r}"
            )
        return tuple(store.safe_name(str(part)) for part in key)

    def __getitem__(self, key):
        key = self._key(key)
        if key not in self._opened:
            self._opened[key] = self.opener(self.path(key))
        return self._opened[key]

    def path(self, key) -> Path:
        """Where the artifact of ``key`` lives (without opening it)."""
        key = self._key(key)
        if key not in self._paths:
            self.__dict__.pop("_paths")  # look again: the workflow may have made it since
        if key not in self._paths:
            values = dict(zip(self.fields, key, strict=True))
            have = ", ".join("/".join(k) for k in self._paths) or "none"
            raise MissingResultError(
                f"{self.root / self._relative(**values)}: no {self.what}; make it with "
                f"`{make_command(self.pattern.format(**values))}` (have: {have})"
            )
        return self._paths[key]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"<{self.what}: {len(self)} under {self.root}>"


def load_sae(path: str | os.PathLike, device: str = "cpu"):
    """A saved SAE (SAELens 6.54 format, as the sae phase writes it) as a ``sae_lens`` SAE."""
    from sae_lens import SAE

    return SAE.load_from_disk(Path(path), device=device)


class Results:
    """One results folder: ``effects`` (DataFrame), ``activations`` / ``tokens`` /
    ``vectors`` (``{(dataset, model): xarray.Dataset}``; ``tokens`` is the per-token group
    the SAEs train on), ``saes`` (``{(dataset, model, hook, architecture): sae_lens.SAE}``),
    ``table(path)`` for any other CSV and ``manifest(path)`` for any artifact's manifest."""

    def __init__(self, root: str | os.PathLike = RESULTS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ResultsNotFoundError(
                f"{self.root}: no results folder; run the workflow first "
                f"(`make run`, or `{make_command(store.EFFECT_SIZES)}` in the workflow folder)"
            )
        self.activations = self._stores(store.ACTIVATIONS, "activation store")
        self.tokens = self._stores(
            store.ACTIVATIONS,
            "per-token activation group",
            f"{store.TOKENS_GROUP}/{store.ZARR_METADATA}",
            store.TOKENS_GROUP,
        )
        self.vectors = self._stores(store.VECTORS, "vectors store")
        self.saes = ArtifactMap(self.root, store.SAE_DIR, load_sae, "SAE", marker=SAE_CFG)

    def _stores(self, pattern: str, what: str, marker: str | None = None, group=None):
        def opener(path: Path):
            return store.open_dataset(path, group=group)

        return ArtifactMap(self.root, pattern, opener, what, marker=marker)

    @cached_property
    def effects(self):
        """``stats/effect_sizes.csv``: one tidy row per tested comparison (README)."""
        return self.table(store.EFFECT_SIZES)

    def table(self, path: str | os.PathLike):
        """A CSV of the tree as a DataFrame; ``path`` relative to the results folder
        (``stats/power_analysis.csv``) or as the workflow names it
        (``results/stats/power_analysis.csv``)."""
        import pandas as pd

        relative = self._relative(path)
        full = self.root / relative
        if not full.is_file():
            raise ResultsNotFoundError(
                f"{full}: no such table; make it with `{make_command(f'{RESULTS}/{relative}')}`"
            )
        return pd.read_csv(full)

    def manifest(self, path: str | os.PathLike) -> dict:
        """The manifest of an artifact of the tree (kind, key, inputs, params, files, ...)."""
        return store.read_manifest(self.root / self._relative(path))

    def _relative(self, path: str | os.PathLike) -> str:
        path = Path(path).as_posix()
        return path.split("/", 1)[1] if path.startswith(f"{RESULTS}/") else path

    def __repr__(self) -> str:
        parts = [repr(m) for m in (self.activations, self.vectors, self.saes)]
        return f"Results({str(self.root)!r}: {'; '.join(parts)})"


def open_results(root: str | os.PathLike = RESULTS) -> Results:
    """The results of a workflow run for notebooks (see :class:`Results`); nothing is read
    until asked for."""
    return Results(root)
