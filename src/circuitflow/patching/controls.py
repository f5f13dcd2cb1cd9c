"""What directional ablation is compared with, all drawn from the train split.

Train statistics. One unablated forward pass over ``control_samples`` train samples per label
records ``hook_resid_pre`` at every ablated layer. Its token-level moments (BOS excluded) give
the mean-ablation centre and the covariance the matched controls are drawn from: the ablation
edits tokens, so the variance an ablated direction carries is the token-level one (the
activation store keeps tokens for ``per_token_layers`` only, and its pooled positions average
the per-token variance away). With ``ablation_mode: zero`` the edit is the whole projection,
so the second moment about 0 is matched instead.

Controls (one per seed and layer, seeded from ``seed``, the control kind, the seed index, the
condition and the layer):

- ``matched_direction`` / ``matched_subspace`` (arm ``control``): random directions / bases
  that carry the same variance as the ablated direction / each ablated PCA axis
  (:func:`circuitflow.core.rand.matched_unit`, :func:`~circuitflow.core.rand.matched_basis`).
  An isotropic direction of R^d carries ~1/d of the variance while the emotion direction sits
  on high-variance axes, so beating it is guaranteed.
- ``shuffled_mean_diff``: the mean difference of the control samples' pooled residuals
  (``direction_position``) with labels shuffled among the contrast's samples (one permutation
  per seed, shared by every layer, as the real direction shares its labels): the same
  operation as the treatment without the labels.
- ``random_direction`` / ``random_subspace`` (``ablation_controls: [isotropic]``): uniform
  directions / subspaces of R^d, for comparison with earlier results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitflow import store
from circuitflow.core import rand
from circuitflow.core.tokens import Tokenized
from circuitflow.patching.ablation import Ablation, pool_weights, run_final
from circuitflow.patching.engine import (
    ABLATION_CONTROLS,
    DIRECTION_CONTRASTS,
    Patcher,
    PatchingError,
    chunks,
)

# seed stream of each control kind (rand.rng(seed, code, seed index, condition, layer))
_STREAM = {"matched_direction": 1, "matched_subspace": 2, "shuffled_mean_diff": 3}
_STREAM |= {"random_direction": 4, "random_subspace": 5}


@dataclass
class TrainStats:
    """Token moments of ``hook_resid_pre`` at ``layers`` over the train samples (BOS out),
    their pooled residuals at the direction position, and their unablated final features."""

    layers: tuple[int, ...]
    centre: dict[int, np.ndarray]  # token mean [d]
    moment: dict[int, np.ndarray]  # [d, d]: covariance (mean ablation) or E[x x^T] (zero)
    pooled: dict[int, np.ndarray]  # [n, d] at the direction position
    labels: np.ndarray  # [n]
    features: np.ndarray  # [n, d] final-layer pooled at the probe position
    n_tokens: int
    _rows: dict = field(default_factory=dict, repr=False)

    def rows(self, layer: int) -> rand.Decomposition:
        """:func:`circuitflow.core.rand.decompose` of the :func:`moment_rows` of the layer's
        moment (cached: every control draw at the layer shares it)."""
        if layer not in self._rows:
            self._rows[layer] = rand.decompose(moment_rows(self.moment[layer]))
        return self._rows[layer]

    def variance(self, layer: int, basis: np.ndarray) -> float:
        """Variance (mean ablation) or mean square (zero) carried by the rows of ``basis``."""
        b = np.atleast_2d(np.asarray(basis, np.float64))
        return float(np.einsum("kd,de,ke->", b, self.moment[layer], b))


def moment_rows(moment: np.ndarray) -> np.ndarray:
    """``[d + 1, d]`` rows with zero mean whose sample covariance is ``moment`` [d, d].

    :func:`circuitflow.core.rand.matched_unit` on them draws from the same distribution as on
    the tokens themselves (both ``x.T @ z`` with Gaussian ``z`` are N(0, moment) up to scale,
    and every variance it compares is ``u @ moment @ u``) at a fraction of the cost when there
    are more tokens than dimensions: rows = sqrt(d) Q F with F.T F = moment and Q [d + 1, d]
    orthonormal columns orthogonal to the ones vector (a Householder reflection)."""
    m = np.asarray(moment, np.float64)
    d = m.shape[0]
    lam, vec = np.linalg.eigh((m + m.T) / 2)
    F = np.sqrt(np.clip(lam, 0, None))[:, None] * vec.T  # F.T @ F == moment
    P = np.vstack([np.zeros(d), F])
    v = -np.full(d + 1, 1 / np.sqrt(d + 1))
    v[0] += 1.0  # reflection e_0 <-> ones / sqrt(d + 1); its other columns span ones^perp
    v /= np.linalg.norm(v)
    return np.sqrt(d) * (P - 2 * np.outer(v, v @ P))


def record_train_stats(
    patcher: Patcher,
    samples: Sequence[dict],
    toks: Mapping[str, Tokenized],
    pad_id: int,
    layers: Sequence[int],
    probe_position: str,
    direction_position: str,
    mode: str = "mean",
    batch_size: int = 32,
) -> TrainStats:
    """One unablated forward over ``samples`` (the control samples of the train split; the
    test samples for the check in :func:`control_variances`): their :class:`TrainStats`."""
    if not samples:
        raise PatchingError("patching.control_samples: no train samples; add train samples")
    d = patcher.d_model
    s1 = {layer: torch.zeros(d, dtype=torch.float64) for layer in layers}
    s2 = {layer: torch.zeros(d, d, dtype=torch.float64) for layer in layers}
    pooled = {layer: np.zeros((len(samples), d)) for layer in layers}
    feats = np.zeros((len(samples), d))
    n = 0
    order = sorted(range(len(samples)), key=lambda i: (len(toks[samples[i]["sample_id"]].ids), i))
    for chunk in chunks(order, batch_size):
        ts = [toks[samples[i]["sample_id"]] for i in chunk]
        feats[chunk], _ = run_final(patcher, ts, pad_id, probe_position, record=layers)
        T = max(len(t.ids) for t in ts)
        valid = torch.zeros(len(ts), T, dtype=torch.bool)
        w = torch.zeros(len(ts), T, dtype=torch.float64)
        for row, t in enumerate(ts):
            valid[row, t.first : len(t.ids)] = True
            w[row, : len(t.ids)] = torch.as_tensor(pool_weights(t, direction_position))
        n += int(valid.sum())
        for layer in layers:
            x = patcher.recorded[("resid", layer)].cpu().double()
            xv = x[valid]
            s1[layer] += xv.sum(0)
            s2[layer] += xv.T @ xv
            pooled[layer][chunk] = torch.einsum("bt,btd->bd", w, x).numpy()
    centre, moment = {}, {}
    for layer in layers:
        mu = s1[layer] / n
        centre[layer] = mu.numpy()
        if mode == "mean":
            moment[layer] = ((s2[layer] - n * torch.outer(mu, mu)) / max(n - 1, 1)).numpy()
        else:
            moment[layer] = (s2[layer] / n).numpy()
    return TrainStats(
        layers=tuple(layers),
        centre=centre,
        moment=moment,
        pooled=pooled,
        labels=np.array([r["label"] for r in samples]),
        features=feats,
        n_tokens=n,
    )


def shuffled_mean_diff(
    pooled: np.ndarray,
    labels: np.ndarray,
    condition: str,
    baseline: str,
    contrast: str,
    generator: np.random.Generator,
) -> np.ndarray:
    """Unit mean difference ``mean(condition) - mean(rest)`` of ``pooled`` [n, d] with the
    labels permuted among the contrast's samples (``vs_neutral``: condition and baseline;
    ``vs_others``: every emotion; ``probe``: every label). ``pooled`` may be [n, L, d]: one
    permutation for all L."""
    if contrast not in DIRECTION_CONTRASTS:
        raise PatchingError(
            f"patching.direction_contrast: {contrast!r} not in {', '.join(DIRECTION_CONTRASTS)}"
        )
    labels = np.asarray(labels)
    if contrast == "vs_neutral":
        members = np.isin(labels, [condition, baseline])
    elif contrast == "vs_others":
        members = labels != baseline
    else:
        members = np.ones(len(labels), bool)
    y = generator.permutation(labels[members]) == condition
    if y.all() or not y.any():
        raise PatchingError(
            f"patching.control_samples: the contrast of {condition!r} has one group; "
            "add train samples"
        )
    x = np.asarray(pooled, np.float64)[members]
    diff = x[y].mean(0) - x[~y].mean(0)
    return diff / np.linalg.norm(diff, axis=-1, keepdims=True)


def _basis(rows: np.ndarray, k: int) -> np.ndarray:
    return rand.orthonormal_rows(np.asarray(rows, np.float64).reshape(-1, rows.shape[-1]), k)


def _matched(stats: TrainStats, layer: int, target: np.ndarray, gen) -> np.ndarray:
    """Matched rows for each nonzero row of ``target`` [k, d] (zero rows stay zero)."""
    out = np.zeros_like(target)
    live = np.linalg.norm(target, axis=1) > 0
    if live.any():
        out[live] = rand.matched_basis(stats.rows(layer), target[live], gen)
    return out


def ablation_set(
    directions: Mapping[int, np.ndarray],
    subspaces: Mapping[int, np.ndarray],
    layers: Sequence[int],
    k: int,
    n_random: int,
    stats: TrainStats,
    condition: str,
    baseline: str,
    condition_index: int,
    seed: int,
    controls: Sequence[str] = ("shuffled_mean_diff",),
    contrast: str = "vs_neutral",
) -> list[Ablation]:
    """The condition's direction and k-dim subspace (treatments, refit) and per seed: their
    variance-matched controls (refit), plus the ``controls`` (isotropic, shuffled_mean_diff)."""
    bad = [c for c in controls if c not in ABLATION_CONTROLS]
    if bad:
        raise PatchingError(
            f"patching.ablation_controls: {bad[0]!r} not in {', '.join(ABLATION_CONTROLS)}"
        )
    d_model = len(stats.centre[layers[0]])
    direction = np.stack([_basis(directions[i][None], 1) for i in layers])
    subspace = np.stack([_basis(subspaces[i][:k], k) for i in layers])
    out = [
        Ablation("direction", 1, -1, direction, refit=True),
        Ablation("subspace", k, -1, subspace, refit=True),
    ]

    def gen(name, r, j):
        return rand.rng(seed, _STREAM[name], r, condition_index, layers[j])

    pooled = np.stack([stats.pooled[layer] for layer in layers], axis=1)  # [n, L, d]
    for r in range(n_random):
        for name, target, dim in (
            ("matched_direction", direction, 1),
            ("matched_subspace", subspace, k),
        ):
            bases = np.stack(
                [
                    _matched(stats, layer, target[j], gen(name, r, j))
                    for j, layer in enumerate(layers)
                ]
            )
            out.append(Ablation(name, dim, r, bases, refit=True))
        if "isotropic" in controls:
            for name, dim in (("random_direction", 1), ("random_subspace", k)):
                g = rand.rng(seed, _STREAM[name], r)  # shared by the conditions
                bases = rand.random_bases(g, len(layers), d_model, dim).transpose(0, 2, 1)
                out.append(Ablation(name, dim, r, bases))
        if "shuffled_mean_diff" in controls:
            g = rand.rng(seed, _STREAM["shuffled_mean_diff"], r, condition_index)
            unit = shuffled_mean_diff(pooled, stats.labels, condition, baseline, contrast, g)
            out.append(Ablation("shuffled_mean_diff", 1, r, unit[:, None, :]))
    return out


def control_variances(
    ablations: Mapping[str, Sequence[Ablation]],
    stats: TrainStats,
    layers: Sequence[int],
    test: TrainStats | None = None,
) -> list[dict]:
    """Per condition x ablation x seed x layer: the variance its basis carries over the train
    tokens the controls were drawn from, and its ratio to the treatment of the same dimension
    (1 for a matched direction); with ``test`` (the moments of the ablated test samples'
    tokens) the same over those tokens, the variance the ablation actually removes."""
    rows = []
    sources = {"": stats} | ({"_test": test} if test is not None else {})
    for c, abls in ablations.items():
        treated = [a for a in abls if a.name in ("direction", "subspace")]
        for a in abls:
            for j, layer in enumerate(layers):
                row = {
                    "condition": c,
                    "ablation": a.name,
                    "k": a.k,
                    "seed": a.seed,
                    "layer": layer,
                    "hook": store.hook_name(layer, "hook_resid_pre"),
                }
                for suffix, st in sources.items():
                    v = st.variance(layer, a.bases[j])
                    ref = [st.variance(layer, t.bases[j]) for t in treated if t.k == a.k]
                    row["variance" + suffix] = v
                    row["variance_ratio" + suffix] = v / ref[0] if ref and ref[0] > 0 else np.nan
                rows.append(row)
    return rows
