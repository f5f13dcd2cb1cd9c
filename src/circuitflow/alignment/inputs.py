"""One model's inputs to the alignment: its activations at every aligned hook and position
(all samples, paired with the other model's by sample id) and its emotion subspaces from the
vectors store; :class:`Side` is one hook and position of it.

The maps see only the train-split neutral rows; the permuted-label null sees the train rows of
every label (:class:`Labelled`), the similarity measures the test rows of every label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitflow import store
from circuitflow.alignment.maps import Reduction, RidgeFactor, pca_reduce, ridge_factor
from circuitflow.alignment.nulls import NullCache, permuted_subspaces
from circuitflow.alignment.overlap import basis_sweep, nested_basis


@dataclass(frozen=True)
class Labelled:
    """Rows of every label of one model at one hook and position: ``x [n_samples, d]``
    (float32, shared with the :class:`ModelInputs`), ``labels``, ``split`` and
    ``blocks`` (exchangeability blocks of the label permutation: the frame id) per row."""

    x: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    blocks: np.ndarray
    baseline: str

    @property
    def train(self) -> np.ndarray:
        return self.split == "train"

    def train_rows(self) -> np.ndarray:
        """Train-split rows of every label, float64."""
        return self.x[self.train].astype(np.float64)

    def held_out(self) -> np.ndarray:
        """Test-split rows of every label, float64."""
        return self.x[self.split == "test"].astype(np.float64)


@dataclass
class Side:
    """One model at one hook and position: neutral activations (train rows paired with the
    other model's by sample id), emotion subspaces ``{condition: [K, d]}`` (rows orthonormal,
    zero rows where fewer components exist) and, for the permuted-label null and the
    similarity measures, the rows of every label (``labelled``)."""

    train: np.ndarray
    test: np.ndarray
    subspaces: Mapping[str, np.ndarray]
    labelled: Labelled | None = None
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

    def key(self) -> str:
        """Digest of the content (activations and subspaces): equal sides give equal rows."""
        if "key" not in self._cache:
            h = hashlib.blake2b(digest_size=16)
            rows = (self.labelled.x,) if self.labelled is not None else (self.train, self.test)
            for part in (*rows, *(self.subspaces[c] for c in sorted(self.subspaces))):
                h.update(np.ascontiguousarray(part).tobytes())
            self._cache["key"] = h.hexdigest()
        return self._cache["key"]

    def permuted(
        self,
        perms: Sequence[np.ndarray],
        conditions: Sequence[str],
        k: int,
        cache: NullCache | None = None,
    ) -> np.ndarray:
        """Emotion subspaces under each label permutation, as coefficients over the train rows
        (:meth:`Labelled.train_rows`): [P, C, k, N] (:func:`~.nulls.permuted_subspaces`)."""
        if self.labelled is None:
            raise ValueError("the permuted-label null needs the train rows of every label")
        lab = self.labelled
        train = lab.train

        def compute():
            return permuted_subspaces(
                lab.x[train], lab.labels[train], perms, lab.baseline, conditions, k
            )

        if cache is None:
            return compute()
        return cache.get((self.key(), tuple(conditions), k, len(perms)), compute)


@dataclass
class ModelInputs:
    """One model's activations ``{(hook, position): [n_samples, d]}`` (float32, samples in the
    pairing order), per-sample ``labels`` / ``split`` / ``blocks``, and emotion subspaces
    ``{(hook, position): {condition: [K, d]}}`` from its vectors store."""

    name: str
    n_layers: int
    baseline: str
    labels: np.ndarray
    split: np.ndarray
    blocks: np.ndarray
    acts: dict[tuple[str, str], np.ndarray]
    subspaces: dict[tuple[str, str], dict[str, np.ndarray]]

    def layers(self, site: str, position: str) -> list[int]:
        return sorted(
            store.parse_hook_name(h)[0]
            for h, p in self.acts
            if p == position and store.parse_hook_name(h)[1] == site and (h, p) in self.subspaces
        )

    @property
    def neutral(self) -> np.ndarray:
        return self.labels == self.baseline

    def side(self, hook: str, position: str, cache: dict) -> Side:
        key = (self.name, hook, position)
        if key not in cache:
            x = self.acts[hook, position]
            neutral = self.neutral
            cache[key] = Side(
                x[neutral & (self.split == "train")].astype(np.float64),
                x[neutral & (self.split == "test")].astype(np.float64),
                self.subspaces[hook, position],
                Labelled(x, self.labels, self.split, self.blocks, self.baseline),
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
    """Load one model's activations (every sample) and emotion subspaces from its stores.

    Rows are sorted by sample id, or put in ``sample_order`` (the other model's ids, to pair
    rows); returns the inputs and the sample ids in that order. ``model`` names the model
    (default: the activation store's ``model`` attribute).
    """
    return _read_model_inputs(activations, vectors, baseline, positions, sites, sample_order, model)


def _read_model_inputs(activations, vectors, baseline, positions, sites, sample_order, model):
    positions, sites = list(positions), list(sites)
    coords = store.read_sample_coords(activations)
    ids, labels = coords["sample"].astype(str), coords["label"].astype(str)
    if not (labels == baseline).any():
        raise ValueError(f"{activations}: no samples with the baseline label {baseline!r}")
    if sample_order is None:
        sample_order = np.sort(ids)
    index = {sid: i for i, sid in enumerate(ids)}
    missing = [sid for sid in sample_order if sid not in index]
    if missing:
        raise ValueError(
            f"{activations}: {len(missing)} samples of the other model are missing "
            f"(e.g. {missing[0]!r}); both activation stores must come from the same dataset"
        )
    if len(sample_order) != len(ids):
        raise ValueError(
            f"{activations}: {len(ids)} samples vs {len(sample_order)} in the other model's "
            "store; both activation stores must come from the same dataset"
        )
    rows = np.array([index[sid] for sid in sample_order])

    store_positions = list(store.read_array(activations, "position"))
    vec_hooks = [str(h) for h in store.read_array(vectors, "hook")]
    vec_positions = [str(p) for p in store.read_array(vectors, "position")]
    conditions = [str(c) for c in store.read_array(vectors, "condition")]
    subspace = store.read_array(vectors, "subspace").astype(np.float64)  # [h, p, c, K, d]
    hooks = [h for h in store.activation_hooks(activations, sites) if h in vec_hooks]
    acts, subs = {}, {}
    for hook in hooks:
        values = store.read_array(activations, hook)  # [sample, position, d]
        for pos in positions:
            if pos not in store_positions or pos not in vec_positions:
                raise ValueError(f"{activations}: no position {pos!r} (have {store_positions})")
            acts[hook, pos] = np.asarray(values[rows, store_positions.index(pos)], np.float32)
            h, p = vec_hooks.index(hook), vec_positions.index(pos)
            subs[hook, pos] = {c: subspace[h, p, j] for j, c in enumerate(conditions)}
    attrs = store.open_dataset(activations).attrs
    n_layers = int(attrs.get("n_layers", 0)) or 1 + max(store.parse_hook_name(h)[0] for h in hooks)
    model = model or str(attrs.get("model", Path(activations).stem))
    inputs = ModelInputs(
        model,
        n_layers,
        baseline,
        labels[rows],
        coords["split"].astype(str)[rows],
        coords["frame_id"].astype(str)[rows],
        acts,
        subs,
    )
    return inputs, np.asarray(sample_order)
