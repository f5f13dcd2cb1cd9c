"""Bootstrap of the alignment over samples: resample the train samples of every label,
recompute both models' emotion subspaces and refit every map, replicate by replicate
(:data:`BOOTSTRAP_COLUMNS`, the ``.bootstrap.csv`` beside the table).

The replicates feed the choice of the subspace dimension k (``circuitflow.stats``); they use
the same maps, random bases and seed as the table itself.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from circuitflow import store
from circuitflow.alignment.config import (
    BOOTSTRAP_STREAM,
    NO_MAP,
    OVERLAP,
    POSITIONS,
    SITES,
    AlignmentConfig,
)
from circuitflow.alignment.inputs import Side
from circuitflow.alignment.nulls import random_bases
from circuitflow.alignment.table import align_pair
from circuitflow.core import rand
from circuitflow.core.subspaces import difference_vectors, pca_subspace
from circuitflow.workflow import schema_backed

BOOTSTRAP_COLUMNS = (
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "site",
    "position",
    "condition",
    "method",
    "replicate",
    "k",
    "overlap_before",
    "overlap_after",
    "overlap_random_mean",
    "overlap_random_sd",
)
BOOTSTRAP_PAIRS = ("best", "matched")


@dataclass(frozen=True)
@schema_backed("alignment", prefix="bootstrap_")
class BootstrapConfig:
    """Settings of the alignment bootstrap (config keys ``alignment.n_bootstrap`` and
    ``alignment.bootstrap_*``); the maps use the table's :class:`AlignmentConfig`."""

    n_bootstrap: int
    sites: tuple[str, ...]
    positions: tuple[str, ...]
    pairs: str

    def __post_init__(self) -> None:
        for key in ("sites", "positions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.n_bootstrap < 0:
            raise ValueError(f"alignment.n_bootstrap: {self.n_bootstrap} must be >= 0")
        for key, allowed in (("sites", SITES), ("positions", POSITIONS)):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad:
                raise ValueError(f"alignment.bootstrap_{key}: {bad} not among {list(allowed)}")
        if self.pairs not in BOOTSTRAP_PAIRS:
            raise ValueError(
                f"alignment.bootstrap_pairs: {self.pairs!r} not among {list(BOOTSTRAP_PAIRS)}"
            )

    @classmethod
    def from_config(cls, alignment: Mapping) -> BootstrapConfig:
        """From the validated config section; keys it lacks take the schema's defaults."""
        keys = {"n_bootstrap": "n_bootstrap"}
        keys.update({f"bootstrap_{k}": k for k in ("sites", "positions", "pairs")})
        return cls(**{field: alignment[key] for key, field in keys.items() if key in alignment})


def bootstrap_indices(labels: np.ndarray, n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """``n_bootstrap`` resamples (with replacement, stratified by label) of row indices."""
    rng = rand.rng(seed, BOOTSTRAP_STREAM)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return [
        np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for _ in range(n_bootstrap)
    ]


def replicate_side(
    x: np.ndarray, labels: np.ndarray, baseline: str, conditions: Sequence[str], k_max: int
) -> Side:
    """A :class:`Side` from (resampled) train rows of every label: neutral rows for the maps,
    emotion subspaces recomputed as the vectors phase does (uncentred PCA of each condition
    sample minus the mean baseline sample, sign-fixed)."""
    mask = np.ones(len(x), dtype=bool)
    subspaces = {}
    for c in conditions:
        comps, _, _ = pca_subspace(difference_vectors(x, labels, c, baseline, mask), k_max)
        padded = np.zeros((k_max, x.shape[1]))
        padded[: len(comps)] = comps
        subspaces[c] = padded
    neutral = x[labels == baseline]
    return Side(neutral, neutral[:0], subspaces)


def bootstrap_pair(
    x_a: np.ndarray,
    x_b: np.ndarray,
    labels: np.ndarray,
    baseline: str,
    config: AlignmentConfig,
    n_bootstrap: int,
) -> list[dict]:
    """Bootstrap replicates for one (hook_a, hook_b, position): x_a [n, d_a] and x_b [n, d_b]
    are the train rows of every label, paired by sample; rows as :func:`align_pair` gives
    (no nulls: a replicate's spread is its own uncertainty) plus ``replicate``."""
    conditions = [c for c in dict.fromkeys(labels.tolist()) if c != baseline]
    no_nulls = config.without_nulls()
    bases = random_bases(x_b.shape[1], config.k_max, config.n_random, config.seed)
    rows = []
    for b, idx in enumerate(bootstrap_indices(labels, n_bootstrap, config.seed)):
        side_a = replicate_side(x_a[idx], labels[idx], baseline, conditions, config.k_max)
        side_b = replicate_side(x_b[idx], labels[idx], baseline, conditions, config.k_max)
        for row in align_pair(side_a, side_b, no_nulls, perms=[], bases=bases, null_ks=()):
            rows.append({**row, "replicate": b})
    return rows


def bootstrap_layer_pairs(
    table: pd.DataFrame, site: str, position: str, pairs: str
) -> list[tuple[int, int]]:
    """Layer pairs to bootstrap from the alignment table: every matched-depth pair, or the one
    with the largest mean overlap_after over conditions, learned maps and k."""
    t = table[(table["site"] == site) & (table["position"] == position) & table["matched_depth"]]
    if "measure" in t:
        t = t[t["measure"] == OVERLAP]
    if t.empty:
        return []
    if pairs == "matched":
        return sorted({(int(a), int(b)) for a, b in zip(t.layer_a, t.layer_b, strict=True)})
    learned = t[t["method"] != NO_MAP]
    means = learned.groupby(["layer_a", "layer_b"])["overlap_after"].mean()
    best = means.sort_index().idxmax()
    return [(int(best[0]), int(best[1]))]


def read_train_rows(
    activations: str | Path,
    hooks: Iterable[str],
    position: str,
    sample_order: Sequence[str] | np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Train-split rows of every label at ``position`` for ``hooks`` ({hook: [n, d]} float64),
    their labels and sample ids, sorted by id or put in ``sample_order``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        coords = store.read_sample_coords(activations)
        ids = coords["sample"].astype(str)
        train = coords["split"] == "train"
        order = np.sort(ids[train]) if sample_order is None else np.asarray(sample_order)
        index = {sid: i for i, sid in enumerate(ids)}
        missing = [sid for sid in order if sid not in index or not train[index[sid]]]
        if missing:
            raise ValueError(
                f"{activations}: train sample {missing[0]!r} of the other model is missing; "
                "both activation stores must come from the same dataset"
            )
        rows = np.array([index[sid] for sid in order])
        positions = list(store.read_array(activations, "position"))
        p = positions.index(position)
        x = {h: store.read_array(activations, h)[rows, p].astype(np.float64) for h in hooks}
    return x, coords["label"][rows], order


def bootstrap_table(
    table: pd.DataFrame,
    activations_a: str | Path,
    activations_b: str | Path,
    baseline: str,
    config: AlignmentConfig,
    boot: BootstrapConfig,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The tidy bootstrap table (:data:`BOOTSTRAP_COLUMNS`) for one model pair."""
    rows = []
    if boot.n_bootstrap == 0 or table.empty:
        return pd.DataFrame(rows, columns=list(BOOTSTRAP_COLUMNS))
    common = {k: table[k].iloc[0] for k in ("dataset", "model_a", "model_b")}
    for site in boot.sites:
        for position in boot.positions:
            pairs = bootstrap_layer_pairs(table, site, position, boot.pairs)
            if not pairs:
                continue
            hooks_a = sorted({f"blocks.{a}.{site}" for a, _ in pairs})
            hooks_b = sorted({f"blocks.{b}.{site}" for _, b in pairs})
            xa, labels, order = read_train_rows(activations_a, hooks_a, position)
            xb, labels_b, _ = read_train_rows(activations_b, hooks_b, position, order)
            if not np.array_equal(labels, labels_b):
                raise ValueError(f"{activations_b}: labels differ from {activations_a}'s")
            start = time.perf_counter()
            for la, lb in pairs:
                reps = bootstrap_pair(
                    xa[f"blocks.{la}.{site}"],
                    xb[f"blocks.{lb}.{site}"],
                    labels,
                    baseline,
                    config,
                    boot.n_bootstrap,
                )
                head = {**common, "layer_a": la, "layer_b": lb, "site": site, "position": position}
                rows += [{**head, **r} for r in reps]
            if log is not None:
                log(
                    f"bootstrap {site} {position}: {len(pairs)} layer pairs x "
                    f"{boot.n_bootstrap} replicates in {time.perf_counter() - start:.1f}s"
                )
    return pd.DataFrame(rows, columns=list(BOOTSTRAP_COLUMNS))
