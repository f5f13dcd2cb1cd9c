"""The alignment table of one model pair: every map at every layer pair, scored per emotion
and k against its baselines (:data:`COLUMNS`).

:func:`read_model_inputs` loads one model's neutral rows and emotion subspaces from its
stores, :func:`align_pair` scores one (hook_a, hook_b, position), and
:func:`alignment_table` walks the matched-depth pairs and the full grids.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from circuitflow import store
from circuitflow.alignment.config import NO_MAP, AlignmentConfig
from circuitflow.alignment.maps import (
    LinearMap,
    Reduction,
    RidgeFactor,
    common_rank,
    fit_map,
    map_r2,
    pca_reduce,
    ridge_factor,
)
from circuitflow.alignment.nulls import random_bases, shuffle_permutations
from circuitflow.alignment.overlap import basis_sweep, nested_basis

COLUMNS = (
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "relative_depth_a",
    "relative_depth_b",
    "matched_depth",
    "site",
    "position",
    "condition",
    "method",
    "k",
    "overlap_before",
    "overlap_after",
    "overlap_random_mean",
    "overlap_random_sd",
    "overlap_shuffled",
    "overlap_shuffled_sd",
    "map_r2_test",
    "n_train_neutral",
)


@dataclass
class Side:
    """One model at one hook and position: neutral activations (train rows paired with the
    other model's by sample id) and emotion subspaces ``{condition: [K, d]}`` (rows orthonormal,
    zero rows where fewer components exist)."""

    train: np.ndarray
    test: np.ndarray
    subspaces: Mapping[str, np.ndarray]
    _cache: dict = field(default_factory=dict, repr=False)

    def reduction(self, r: int) -> Reduction:
        if ("pca", r) not in self._cache:
            self._cache["pca", r] = pca_reduce(self.train, r)
        return self._cache["pca", r]

    def ridge_factor(self, alpha: float) -> RidgeFactor:
        if ("ridge", alpha) not in self._cache:
            self._cache["ridge", alpha] = ridge_factor(self.train, alpha)
        return self._cache["ridge", alpha]

    def stacked(self, conditions: Sequence[str], k_max: int) -> np.ndarray:
        """The subspaces of ``conditions`` stacked: [C, k_max, d]."""
        return np.stack([np.asarray(self.subspaces[c][:k_max], np.float64) for c in conditions])

    def target_bases(self, conditions: Sequence[str], k_max: int) -> np.ndarray:
        """Nested orthonormal bases of the subspaces: [C, d, k_max]."""
        key = ("target", tuple(conditions), k_max)
        if key not in self._cache:
            self._cache[key] = nested_basis(self.stacked(conditions, k_max))
        return self._cache[key]

    def random_overlaps(
        self, bases: np.ndarray, conditions: Sequence[str], k_max: int
    ) -> np.ndarray:
        """Overlaps of random nested bases ``[n_random, d, >=k_max]`` with the subspaces:
        [C, n_random, k_max] (computed once per ``bases`` object)."""
        key = ("random", tuple(conditions), k_max)
        cached = self._cache.get(key)
        if cached is None or cached[0] is not bases:
            targets = self.target_bases(conditions, k_max)[:, None]  # [C, 1, d, K]
            cached = self._cache[key] = (bases, basis_sweep(bases[None, ..., :k_max], targets))
        return cached[1]


def _n_components(basis: np.ndarray) -> int:
    """Leading non-zero rows of a zero-padded subspace."""
    nonzero = np.abs(basis).max(axis=1) > 0
    return int(np.argmin(nonzero)) if not nonzero.all() else len(basis)


def align_pair(
    a: Side,
    b: Side,
    config: AlignmentConfig,
    perms: Sequence[np.ndarray] | None = None,
    bases: np.ndarray | None = None,
) -> list[dict]:
    """Fit every map for one (hook_a, hook_b, position) and score every emotion and k.

    Rows: condition, method (``none`` + config.methods), k, overlap_before, overlap_after,
    overlap_random_mean/sd, overlap_shuffled, map_r2_test, n_train_neutral; k runs up to
    ``config.k_max`` or the number of components both subspaces have. ``perms`` and ``bases``
    (shuffles; random nested bases of R^d_b ``[n_random, d_b, >= k_max]``) default to the
    seeded ones of ``config``; pass them to share them across pairs.
    """
    n, d_a, d_b = len(a.train), a.train.shape[1], b.train.shape[1]
    if len(b.train) != n:
        raise ValueError(f"unpaired neutral rows: {n} in model A vs {len(b.train)} in model B")
    conditions = [c for c in a.subspaces if c in b.subspaces]
    if not conditions:
        raise ValueError("the two models share no emotion condition")
    k_max = min(config.k_max, *(len(a.subspaces[c]) for c in conditions))
    k_max = min(k_max, d_a, d_b, *(len(b.subspaces[c]) for c in conditions))
    if perms is None:
        perms = shuffle_permutations(n, config.n_shuffles, config.seed)
    if bases is None:
        bases = random_bases(d_b, k_max, config.n_random, config.seed)
    r = common_rank(n, d_a, d_b, config.r_max)
    ra, rb = a.reduction(r), b.reduction(r)
    # Data of lower rank (e.g. the same last token in every neutral prompt) leaves PCA axes
    # beyond its rank arbitrary: keep only the axes both sides actually vary along.
    r_eff = max(1, min(ra.rank, rb.rank))
    reductions = (ra.truncate(r_eff), rb.truncate(r_eff)) if r_eff < r else (ra, rb)
    factor = a.ridge_factor(config.ridge_alpha) if "ridge" in config.methods else None

    stack_a = a.stacked(conditions, k_max)  # [C, K, d_a]
    targets = b.target_bases(conditions, k_max)  # [C, d_b, K]
    valid = [
        min(_n_components(stack_a[i]), _n_components(b.stacked(conditions, k_max)[i]))
        for i in range(len(conditions))
    ]
    rand = b.random_overlaps(bases, conditions, k_max)  # [C, n_random, K]
    rand_mean = rand.mean(axis=1) if rand.shape[1] else np.full((len(conditions), k_max), np.nan)
    rand_sd = rand.std(axis=1, ddof=1) if rand.shape[1] > 1 else np.full_like(rand_mean, np.nan)

    def sweep(fitted: LinearMap) -> np.ndarray:  # [C, K]
        return basis_sweep(nested_basis(fitted.apply(stack_a)), targets)

    def fit(method, perm=None):
        return fit_map(method, a.train, b.train, config, perm, reductions, factor)

    none = fit(NO_MAP)
    before = sweep(none)
    rows = []
    for method in (NO_MAP, *config.methods):
        fitted = none if method == NO_MAP else fit(method)
        after = before if method == NO_MAP else sweep(fitted)
        shuffled_sd = np.full_like(before, np.nan)
        if method == NO_MAP or not perms:
            shuffled = np.full_like(before, np.nan)
        else:
            draws = np.stack([sweep(fit(method, perm)) for perm in perms])
            shuffled = draws.mean(axis=0)
            if len(perms) > 1:
                shuffled_sd = draws.std(axis=0, ddof=1)
        r2 = map_r2(fitted, a.test, b.test)
        for i, c in enumerate(conditions):
            for k in range(1, valid[i] + 1):
                rows.append(
                    {
                        "condition": c,
                        "method": method,
                        "k": k,
                        "overlap_before": before[i, k - 1],
                        "overlap_after": after[i, k - 1],
                        "overlap_random_mean": rand_mean[i, k - 1],
                        "overlap_random_sd": rand_sd[i, k - 1],
                        "overlap_shuffled": shuffled[i, k - 1],
                        "overlap_shuffled_sd": shuffled_sd[i, k - 1],
                        "map_r2_test": r2,
                        "n_train_neutral": n,
                    }
                )
    return rows


# ---------------------------------------------------------------- depths
def relative_depth(layer: int, site: str, n_layers: int) -> Fraction:
    """Fraction of the blocks a hook has passed: resid_pre L -> L/n, resid_post L -> (L+1)/n."""
    return Fraction(layer + (site == "hook_resid_post"), n_layers)


def matched_pairs(
    layers_a: Sequence[int], layers_b: Sequence[int], site: str, n_layers_a: int, n_layers_b: int
) -> set[tuple[int, int]]:
    """Layer pairs at matched relative depth: every layer of A with B's nearest in relative
    depth, and every layer of B with A's nearest (ties: the shallower); symmetric in A and B."""
    rel_a = {la: relative_depth(la, site, n_layers_a) for la in layers_a}
    rel_b = {lb: relative_depth(lb, site, n_layers_b) for lb in layers_b}
    pairs = set()
    for la, ra in rel_a.items():
        pairs.add((la, min(layers_b, key=lambda lb: (abs(rel_b[lb] - ra), lb))))
    for lb, rb in rel_b.items():
        pairs.add((min(layers_a, key=lambda la: (abs(rel_a[la] - rb), la)), lb))
    return pairs


# ---------------------------------------------------------------- whole table
@dataclass
class ModelInputs:
    """Everything the table needs from one model: neutral train/test rows (in a common sample
    order) and emotion subspaces per (hook, position).

    neutral_train / neutral_test: {(hook, position): [n, d]};
    subspaces: {(hook, position): {condition: [K, d]}}.
    """

    name: str
    n_layers: int
    neutral_train: dict[tuple[str, str], np.ndarray]
    neutral_test: dict[tuple[str, str], np.ndarray]
    subspaces: dict[tuple[str, str], dict[str, np.ndarray]]

    def layers(self, site: str, position: str) -> list[int]:
        return sorted(
            store.parse_hook_name(h)[0]
            for h, p in self.neutral_train
            if p == position and store.parse_hook_name(h)[1] == site and (h, p) in self.subspaces
        )

    def side(self, hook: str, position: str, cache: dict) -> Side:
        key = (self.name, hook, position)
        if key not in cache:
            cache[key] = Side(
                self.neutral_train[hook, position],
                self.neutral_test[hook, position],
                self.subspaces[hook, position],
            )
        return cache[key]


def read_model_inputs(
    activations: str | Path,
    vectors: str | Path,
    baseline: str,
    positions: Iterable[str],
    sites: Iterable[str],
    sample_order: np.ndarray | None = None,
    model: str | None = None,
) -> tuple[ModelInputs, np.ndarray]:
    """Load one model's neutral activations (float64) and emotion subspaces from its stores.

    Rows are sorted by sample id, or put in ``sample_order`` (the other model's ids, to pair
    rows); returns the inputs and the neutral sample ids in that order. ``model`` names the
    model (default: the activation store's ``model`` attribute).
    """
    with warnings.catch_warnings():
        # manifest.json and Snakemake's timestamp sit beside the Zarr nodes of a store.
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        return _read_model_inputs(
            activations, vectors, baseline, positions, sites, sample_order, model
        )


def _read_model_inputs(activations, vectors, baseline, positions, sites, sample_order, model):
    positions, sites = list(positions), list(sites)
    coords = store.read_sample_coords(activations)
    ids, labels, split = coords["sample"].astype(str), coords["label"], coords["split"]
    neutral = labels == baseline
    if not neutral.any():
        raise ValueError(f"{activations}: no samples with the baseline label {baseline!r}")
    if sample_order is None:
        sample_order = np.sort(ids[neutral])
    index = {sid: i for i, sid in enumerate(ids)}
    missing = [sid for sid in sample_order if sid not in index]
    if missing:
        raise ValueError(
            f"{activations}: {len(missing)} neutral samples of the other model are missing "
            f"(e.g. {missing[0]!r}); both activation stores must come from the same dataset"
        )
    rows = np.array([index[sid] for sid in sample_order])
    if not (neutral[rows].all() and len(rows) == neutral.sum()):
        raise ValueError(f"{activations}: neutral samples differ from the other model's")
    train_rows, test_rows = rows[split[rows] == "train"], rows[split[rows] == "test"]

    store_positions = list(store.read_array(activations, "position"))
    vec_hooks = [str(h) for h in store.read_array(vectors, "hook")]
    vec_positions = [str(p) for p in store.read_array(vectors, "position")]
    conditions = [str(c) for c in store.read_array(vectors, "condition")]
    subspace = store.read_array(vectors, "subspace").astype(np.float64)  # [h, p, c, K, d]
    hooks = [h for h in store.activation_hooks(activations, sites) if h in vec_hooks]
    train, test, subs = {}, {}, {}
    for hook in hooks:
        acts = store.read_array(activations, hook)  # [sample, position, d]
        for pos in positions:
            if pos not in store_positions or pos not in vec_positions:
                raise ValueError(f"{activations}: no position {pos!r} (have {store_positions})")
            x = acts[:, store_positions.index(pos)].astype(np.float64)
            train[hook, pos], test[hook, pos] = x[train_rows], x[test_rows]
            h, p = vec_hooks.index(hook), vec_positions.index(pos)
            subs[hook, pos] = {c: subspace[h, p, j] for j, c in enumerate(conditions)}
    attrs = store.open_dataset(activations).attrs
    n_layers = int(attrs.get("n_layers", 0)) or 1 + max(store.parse_hook_name(h)[0] for h in hooks)
    model = model or str(attrs.get("model", Path(activations).stem))
    return ModelInputs(model, n_layers, train, test, subs), np.asarray(sample_order)


def alignment_table(
    a: ModelInputs,
    b: ModelInputs,
    config: AlignmentConfig,
    dataset: str,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The tidy table (:data:`COLUMNS`) for one model pair.

    For every site in ``config.sites`` and position in ``config.positions``: the layer pairs at
    matched relative depth, plus the full layer x layer grid where the site is in
    ``grid_sites`` and the position in ``grid_positions``. Each map is fit once per
    (layer_a, layer_b, site, position) and reused across emotions and k.
    """
    rows = []
    cache: dict = {}
    perms_by_n: dict[int, list[np.ndarray]] = {}
    bases = None
    for site in config.sites:
        for position in config.positions:
            layers_a, layers_b = a.layers(site, position), b.layers(site, position)
            if not layers_a or not layers_b:
                raise ValueError(f"no {site} arrays at position {position!r} in one of the models")
            matched = matched_pairs(layers_a, layers_b, site, a.n_layers, b.n_layers)
            if site in config.grid_sites and position in config.grid_positions:
                pairs = [(la, lb) for la in layers_a for lb in layers_b]
            else:
                pairs = sorted(matched)
            start = time.perf_counter()
            for la, lb in pairs:
                hook_a, hook_b = f"blocks.{la}.{site}", f"blocks.{lb}.{site}"
                side_a = a.side(hook_a, position, cache)
                side_b = b.side(hook_b, position, cache)
                n, d_b = len(side_a.train), side_b.train.shape[1]
                if n not in perms_by_n:
                    perms_by_n[n] = shuffle_permutations(n, config.n_shuffles, config.seed)
                if bases is None or bases.shape[1] != d_b:
                    bases = random_bases(d_b, config.k_max, config.n_random, config.seed)
                common = {
                    "dataset": dataset,
                    "model_a": a.name,
                    "model_b": b.name,
                    "layer_a": la,
                    "layer_b": lb,
                    "relative_depth_a": float(relative_depth(la, site, a.n_layers)),
                    "relative_depth_b": float(relative_depth(lb, site, b.n_layers)),
                    "matched_depth": (la, lb) in matched,
                    "site": site,
                    "position": position,
                }
                for row in align_pair(side_a, side_b, config, perms_by_n[n], bases):
                    rows.append({**common, **row})
            if log is not None:
                log(
                    f"{site} {position}: {len(pairs)} layer pairs "
                    f"({len(matched)} matched) in {time.perf_counter() - start:.1f}s"
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))
