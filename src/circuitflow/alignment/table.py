"""The alignment table of one model pair: every map at every layer pair, scored per emotion
and k against its nulls, plus the cross-model similarity measures at matched depths
(:data:`COLUMNS`).

:func:`align_pair` scores one (hook_a, hook_b, position), :func:`similarity_pair` adds CKA and
mutual k-NN of the held-out rows, and :func:`alignment_table` walks the matched-depth pairs
(nulls computed) and the full grids (descriptive).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import pandas as pd

from circuitflow.alignment.config import NO_MAP, OVERLAP, AlignmentConfig
from circuitflow.alignment.inputs import Labelled, ModelInputs, Side
from circuitflow.alignment.maps import LinearMap, common_rank, fit_map, identity_map, map_r2
from circuitflow.alignment.nulls import (
    MapCoordinates,
    NullCache,
    label_permutations,
    null_counts,
    pairing_permutations,
    random_bases,
    shuffle_permutations,
    shuffled_cores,
)
from circuitflow.alignment.overlap import basis_sweep, nested_basis
from circuitflow.alignment.similarity import similarity_null

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
    "measure",
    "condition",
    "method",
    "k",
    "overlap_before",
    "overlap_after",
    "overlap_random_mean",
    "overlap_random_sd",
    "overlap_shuffled",
    "overlap_shuffled_sd",
    "n_shuffled",
    "n_shuffled_ge",
    "overlap_permuted",
    "overlap_permuted_sd",
    "n_permuted",
    "n_permuted_ge",
    "similarity",
    "similarity_shuffled",
    "similarity_shuffled_sd",
    "map_r2_test",
    "n_train_neutral",
    "n_test",
)
ALL_CONDITIONS = "all"  # the condition of the similarity rows: every test sample
_NULL_KEYS = (("shuffled", "overlap_shuffled"), ("permuted", "overlap_permuted"))


def _n_components(basis: np.ndarray) -> int:
    """Leading non-zero rows of a zero-padded subspace."""
    nonzero = np.abs(basis).max(axis=1) > 0
    return int(np.argmin(nonzero)) if not nonzero.all() else len(basis)


def _same_rows(a: Side, b: Side) -> None:
    la, lb = a.labelled, b.labelled
    if not (np.array_equal(la.labels, lb.labels) and np.array_equal(la.split, lb.split)):
        raise ValueError(
            "the two models' samples differ in label or split: both activation stores must "
            "come from the same dataset, rows paired by sample id (read_model_inputs)"
        )


def align_pair(
    a: Side,
    b: Side,
    config: AlignmentConfig,
    perms: Sequence[np.ndarray] | None = None,
    bases: np.ndarray | None = None,
    null_ks: Sequence[int] | None = None,
    label_perms: Sequence[np.ndarray] | None = None,
    null_cache: NullCache | None = None,
) -> list[dict]:
    """Fit every map for one (hook_a, hook_b, position) and score every emotion and k.

    Rows: condition, method (config.methods, plus ``none`` where d_a == d_b), k,
    overlap_before (descriptive), overlap_after, the random-subspace columns (descriptive),
    the two nulls (:data:`COLUMNS`), map_r2_test, n_train_neutral; k runs up to
    ``config.k_max`` or the number of components both subspaces have.

    The nulls are computed for the k in ``null_ks`` only (None: every k; empty: none):
    ``perms`` shuffle the neutral pairing (default: ``config.n_shuffles`` seeded ones),
    ``label_perms`` permute the train labels (default: :func:`emotion_permutations`; needs
    ``Side.labelled`` on both sides). ``bases`` (random
    nested bases of R^d_b ``[n_random, d_b, >= k_max]``) default to the seeded ones. Pass
    them, and ``null_cache``, to share them across pairs.
    """
    n, d_a, d_b = len(a.train), a.train.shape[1], b.train.shape[1]
    if len(b.train) != n:
        raise ValueError(f"unpaired neutral rows: {n} in model A vs {len(b.train)} in model B")
    conditions = [c for c in a.subspaces if c in b.subspaces]
    if not conditions:
        raise ValueError("the two models share no emotion condition")
    k_max = min(config.k_max, *(len(a.subspaces[c]) for c in conditions))
    k_max = min(k_max, d_a, d_b, *(len(b.subspaces[c]) for c in conditions))
    every_k = range(1, k_max + 1)
    ks_null = sorted({int(k) for k in (every_k if null_ks is None else null_ks) if k in every_k})
    k_null = max(ks_null, default=0)
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

    permuted = None
    if k_null and a.labelled is not None and b.labelled is not None:
        _same_rows(a, b)
        if label_perms is None:
            label_perms = emotion_permutations(a.labelled, config)
        if len(label_perms):
            # coefficients over the train rows [P, C, k, N] of orthonormal subspace rows
            coef_a = a.permuted(label_perms, conditions, k_null, null_cache)
            coef_b = b.permuted(label_perms, conditions, k_null, null_cache)
            x_a, x_b = a.labelled.train_rows(), b.labelled.train_rows()
            permuted = (coef_a, x_a, np.swapaxes(coef_b, -1, -2), x_b)

    def sweep(fitted: LinearMap) -> np.ndarray:  # [C, K]
        return basis_sweep(nested_basis(fitted.apply(stack_a)), targets)

    def fit(method, perm=None):
        return fit_map(method, a.train, b.train, config, perm, reductions, factor)

    before = sweep(identity_map(*reductions))
    methods = ((NO_MAP,) if d_a == d_b else ()) + tuple(config.methods)
    rows = []
    for method in methods:
        fitted = fit(method)
        after = sweep(fitted)
        observed = after[:, :k_null]
        nulls = {name: null_counts(np.empty((0,)), observed) for name, _ in _NULL_KEYS}
        if k_null:
            coords = MapCoordinates.of(fitted)
            source, goal = coords.source(stack_a[:, :k_null]), coords.targets(targets[..., :k_null])
            if method != NO_MAP and len(perms):  # the identity has no fit to shuffle
                cores = shuffled_cores(coords, method, reductions, perms, config.cca_components)
                draws = coords.overlaps(source[None], cores, goal[None])  # [S, C, k]
                nulls["shuffled"] = null_counts(draws, observed)
            if permuted is not None:
                # B's permuted subspace rows are orthonormal, so they are their own nested
                # basis: x_b.T @ coef_b.T [P, C, d_b, k], here in the image coordinates
                coef_a, x_a, coef_b_t, x_b = permuted
                source_p = coef_a @ coords.source(x_a)  # [P, C, k, q]
                goal_p = coords.targets(x_b.T) @ coef_b_t  # [P, C, q', k]
                draws = coords.overlaps(source_p, coords.core, goal_p)
                nulls["permuted"] = null_counts(draws, observed)
        r2 = map_r2(fitted, a.test, b.test)
        for i, c in enumerate(conditions):
            for k in range(1, valid[i] + 1):
                row = {
                    "measure": OVERLAP,
                    "condition": c,
                    "method": method,
                    "k": k,
                    "overlap_before": before[i, k - 1],
                    "overlap_after": after[i, k - 1],
                    "overlap_random_mean": rand_mean[i, k - 1],
                    "overlap_random_sd": rand_sd[i, k - 1],
                }
                for name, column in _NULL_KEYS:
                    null = nulls[name]
                    tested = k in ks_null
                    row[column] = null["mean"][i, k - 1] if tested else np.nan
                    row[f"{column}_sd"] = null["sd"][i, k - 1] if tested else np.nan
                    row[f"n_{name}"] = int(null["n"][i, k - 1]) if tested else 0
                    row[f"n_{name}_ge"] = null["ge"][i, k - 1] if tested else np.nan
                row.update({"map_r2_test": r2, "n_train_neutral": n})
                rows.append(row)
    return rows


def emotion_permutations(rows: Labelled, config: AlignmentConfig) -> list[np.ndarray]:
    """The seeded label permutations of the train rows: emotional rows among themselves
    within frames, baseline rows fixed (:func:`~.nulls.label_permutations`)."""
    train = rows.train
    fixed = rows.labels[train] == rows.baseline
    return label_permutations(rows.blocks[train], config.n_label_permutations, config.seed, fixed)


def similarity_pair(
    a: Side, b: Side, config: AlignmentConfig, perms: Sequence[np.ndarray] | None = None
) -> list[dict]:
    """The similarity measures of ``config.similarity`` between the two sides' test-split
    rows of every label (paired by sample), each against shuffled pairings (``perms``,
    default ``config.n_shuffles`` seeded ones): one row per measure."""
    if a.labelled is None or b.labelled is None:
        raise ValueError("the similarity measures need the test rows of every label")
    _same_rows(a, b)
    x_a, x_b = a.labelled.held_out(), b.labelled.held_out()
    if perms is None:
        perms = pairing_permutations(len(x_a), config.n_shuffles, config.seed)
    rows = []
    for measure in config.similarity:
        value, draws = similarity_null(measure, x_a, x_b, perms, config.knn_k)
        null = null_counts(draws, np.asarray(value))
        rows.append(
            {
                "measure": measure,
                "condition": ALL_CONDITIONS,
                "method": "",
                "k": 0,
                "similarity": value,
                "similarity_shuffled": float(null["mean"]),
                "similarity_shuffled_sd": float(null["sd"]),
                "n_shuffled": int(null["n"]),
                "n_shuffled_ge": float(null["ge"]),
                "n_test": len(x_a),
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
def alignment_table(
    a: ModelInputs,
    b: ModelInputs,
    config: AlignmentConfig,
    dataset: str,
    log: Callable[[str], None] | None = None,
    null_ks: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The tidy table (:data:`COLUMNS`) for one model pair.

    For every site in ``config.sites`` and position in ``config.positions``: the layer pairs at
    matched relative depth, plus the full layer x layer grid where the site is in
    ``grid_sites`` and the position in ``grid_positions``. Each map is fit once per
    (layer_a, layer_b, site, position) and reused across emotions and k. Matched pairs get
    the nulls (for the k in ``null_ks``, the ones the statistics test; None: every k) and
    the similarity rows; grid pairs are descriptive. Pairs whose activations and subspaces are
    equal (resid_post L is resid_pre L + 1) are computed once.
    """
    if not (np.array_equal(a.labels, b.labels) and np.array_equal(a.split, b.split)):
        raise ValueError(
            f"{a.name} and {b.name}: samples differ in label or split; read both with "
            "read_model_inputs, the second with sample_order = the first's ids"
        )
    train = a.split == "train"
    label_perms = label_permutations(
        a.blocks[train], config.n_label_permutations, config.seed, a.neutral[train]
    )
    pairing = pairing_permutations(int((a.split == "test").sum()), config.n_shuffles, config.seed)
    rows, done = [], {}
    cache: dict = {}
    null_cache = NullCache()
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
                side_a = a.side(f"blocks.{la}.{site}", position, cache)
                side_b = b.side(f"blocks.{lb}.{site}", position, cache)
                n, d_b = len(side_a.train), side_b.train.shape[1]
                if n not in perms_by_n:
                    perms_by_n[n] = shuffle_permutations(n, config.n_shuffles, config.seed)
                if bases is None or bases.shape[1] != d_b:
                    bases = random_bases(d_b, config.k_max, config.n_random, config.seed)
                is_matched = (la, lb) in matched
                key = (side_a.key(), side_b.key(), is_matched)
                if key not in done:
                    ks = null_ks if is_matched else ()
                    done[key] = align_pair(
                        side_a, side_b, config, perms_by_n[n], bases, ks, label_perms, null_cache
                    )
                    if is_matched and config.similarity:
                        done[key] += similarity_pair(side_a, side_b, config, pairing)
                common = {
                    "dataset": dataset,
                    "model_a": a.name,
                    "model_b": b.name,
                    "layer_a": la,
                    "layer_b": lb,
                    "relative_depth_a": float(relative_depth(la, site, a.n_layers)),
                    "relative_depth_b": float(relative_depth(lb, site, b.n_layers)),
                    "matched_depth": is_matched,
                    "site": site,
                    "position": position,
                }
                rows += [{**common, **row} for row in done[key]]
            if log is not None:
                log(
                    f"{site} {position}: {len(pairs)} layer pairs "
                    f"({len(matched)} matched) in {time.perf_counter() - start:.1f}s"
                )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("n_shuffled", "n_permuted", "n_train_neutral", "n_test"):
        table[col] = table[col].fillna(0).astype(int)
    return table
