"""Emotion-specific directions and their specificity (train-split fits, held-out tests).

The emotion-vs-neutral direction (:func:`~circuitflow.vectors.diffmeans.directions`) is
dominated by an axis every emotion shares (an "emotional vs neutral register"): it separates
each emotion from neutral, not one emotion from the others. Besides it, per hook x position x
condition, from the train split:

- ``vs_others``: mean(condition) - mean(the other conditions' samples), unit norm;
- ``probe``: the condition's weight vector of one multinomial probe over the conditions
  (baseline excluded), fit on standardized features (:func:`core.ridge.standardize`: centred,
  one RMS scale) and mapped back to raw feature space, unit norm;
- the shared axis: mean(every condition sample) - mean(baseline), to which each direction's
  cosine is reported.

Specificity of a direction = how well its projection separates the condition's samples from
the other conditions' samples (AUROC). The hook reported per condition x contrast x position
is chosen by cross-validated specificity on the train split (folds grouped by ``frame_id``,
stratified by label), and tested on the test split only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Float
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import rankdata
from threadpoolctl import threadpool_limits

from circuitflow import store
from circuitflow.core.ridge import standardize
from circuitflow.vectors.diffmeans import UNIT_KIND, directions
from circuitflow.workflow import schema_backed

CONTRASTS = tuple(store.DIRECTION_VARIABLES)  # vs_neutral, vs_others, probe
PROBES = ("ridge", "logistic")  # config vectors.specificity_probe
METRIC = "specificity_projection"
# the rows at the train-CV-selected hook: their own metric, so their own correction family
SELECTED_METRIC = "specificity_projection_selected"
SELECTED = "selected=train_cv"


def projection_variable(contrast: str) -> str:
    """Name of the vectors-store array of projections on ``contrast``'s direction."""
    return store.DIRECTION_VARIABLES[contrast].replace("direction", "projection")


@dataclass(frozen=True, kw_only=True)
@schema_backed("vectors", prefix="specificity_")
class SpecificityConfig:
    """Config keys ``vectors.specificity_*`` plus the global ``seed``."""

    seed: int
    folds: int
    probe: str
    probe_alpha: float
    probe_max_iter: int

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"vectors.specificity_probe: {self.probe!r} not among {list(PROBES)}")
        if self.folds < 2:
            raise ValueError(f"vectors.specificity_folds: {self.folds} must be >= 2")
        if not self.probe_alpha > 0:
            raise ValueError(f"vectors.specificity_probe_alpha: {self.probe_alpha} must be > 0")
        if self.probe_max_iter < 1:
            raise ValueError(f"vectors.specificity_probe_max_iter: {self.probe_max_iter} < 1")


def _unit(raw: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(raw, axis=-1, keepdims=True)
    return raw / np.where(norm > 0, norm, 1.0)


def shared_axis(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    mask: np.ndarray,
    conditions: Sequence[str],
    baseline: str,
) -> Float[np.ndarray, "position d_model"]:
    """Unit mean(all condition samples) - mean(baseline samples) over rows where ``mask``
    holds: the axis every condition shares."""
    acts = np.asarray(acts, dtype=np.float64)
    cond = mask & np.isin(labels, list(conditions))
    base = mask & (labels == baseline)
    if not cond.any() or not base.any():
        raise ValueError(f"shared axis: no training samples of the conditions or of {baseline!r}")
    return _unit(acts[cond].mean(0) - acts[base].mean(0))


def directions_vs_others(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    mask: np.ndarray,
    conditions: Sequence[str],
) -> Float[np.ndarray, "position condition d_model"]:
    """Unit mean(condition) - mean(samples of the other conditions) over rows where ``mask``
    holds (the baseline takes no part). NaN where a condition has no other condition."""
    acts = np.asarray(acts, dtype=np.float64)
    out = np.full((acts.shape[1], len(conditions), acts.shape[2]), np.nan)
    for c, condition in enumerate(conditions):
        own = mask & (labels == condition)
        others = mask & np.isin(labels, [x for x in conditions if x != condition])
        if own.any() and others.any():
            out[:, c] = _unit(acts[own].mean(0) - acts[others].mean(0))
    return out


class RidgeProbe:
    """Ridge regression of centred one-hot class targets on one position's rows, refit in
    closed form on any subset of them (CV folds reuse one Gram / kernel matrix).

    Equivalent to ridge on :func:`core.ridge.standardize` features (centred, one RMS scale)
    with penalty ``alpha x n``, mapped back to raw space: w = (S + alpha tr(S)/d I)^-1 B,
    S the centred scatter of x, B its cross-scatter with the targets. Primal (d x d) when
    rows outnumber features, else dual (n x n)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: Sequence[str], alpha: float):
        x = np.asarray(x, np.float64)
        self.x = x - x.mean(0)  # centred once: no cancellation in the fold updates
        self.tol = 1e-12 * float(np.square(x).sum())  # below it: no variation, zero weights
        self.y = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(np.float64)
        self.alpha = alpha
        self.primal = len(self.x) >= self.x.shape[1]
        if self.primal:
            self.gram, self.cross = self.x.T @ self.x, self.x.T @ self.y
        else:
            self.kernel = self.x @ self.x.T

    def weights(self, drop: np.ndarray | None = None) -> np.ndarray:
        """[class, d] raw-space weights fit on the rows not in ``drop`` (boolean, per row)."""
        keep = np.ones(len(self.x), bool) if drop is None else ~np.asarray(drop, bool)
        x, y, n, d = self.x[keep], self.y[keep], int(keep.sum()), self.x.shape[1]
        mx, my = x.mean(0), y.mean(0)
        if self.primal:
            gone = self.x[~keep]
            scatter = self.gram - gone.T @ gone - n * np.outer(mx, mx)
            cross = self.cross - gone.T @ self.y[~keep] - n * np.outer(mx, my)
            total = np.trace(scatter)
            if not total > self.tol:  # no variation: the zero direction
                return np.zeros((y.shape[1], d))
            scatter[np.diag_indices(d)] += self.alpha * total / d
            return cho_solve(cho_factor(scatter, check_finite=False), cross).T
        k = self.kernel[np.ix_(keep, keep)]
        kr = k.mean(0)
        k = k - kr[None, :] - kr[:, None] + kr.mean()  # the kernel of the re-centred rows
        total = np.trace(k)
        if not total > self.tol:
            return np.zeros((y.shape[1], d))
        k[np.diag_indices(n)] += self.alpha * total / d
        dual = cho_solve(cho_factor(k, check_finite=False), y - my)
        return ((x - mx).T @ dual).T


def _probe_weights(x: np.ndarray, y: np.ndarray, classes: Sequence[str], cfg) -> np.ndarray:
    """[class, d] raw-space weights of one probe over ``classes`` on rows x [n, d]."""
    if cfg.probe == "ridge":
        return RidgeProbe(x, y, classes, cfg.probe_alpha).weights()
    from sklearn.linear_model import LogisticRegression

    # one scale: a standardized feature's mean variance is 1, so C = 1 / (alpha n) reads
    # mean loss + alpha / 2 |w|^2, as the ridge's (cov + alpha I) w = cov(x, y)
    xs, _, sd = standardize(x, x[:1])
    probe = LogisticRegression(
        C=1.0 / (cfg.probe_alpha * len(x)), max_iter=cfg.probe_max_iter, random_state=cfg.seed
    ).fit(xs, y)
    coef = probe.coef_ if len(probe.classes_) > 2 else np.vstack([-probe.coef_, probe.coef_])
    return coef[[list(probe.classes_).index(c) for c in classes]] / sd


def _probe_rows(labels, mask, conditions):
    rows = mask & np.isin(labels, list(conditions))
    present = [c for c in conditions if (rows & (labels == c)).any()]
    return rows, present, [list(conditions).index(c) for c in present]


def probe_directions(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    mask: np.ndarray,
    conditions: Sequence[str],
    cfg: SpecificityConfig,
) -> Float[np.ndarray, "position condition d_model"]:
    """Each condition's unit weight direction of a multinomial probe over the conditions
    (one fit per position on the rows where ``mask`` holds; baseline excluded). With an L2
    penalty the class weights sum to zero, so each is its class against the others. NaN
    with fewer than two conditions present."""
    acts = np.asarray(acts, dtype=np.float64)
    rows, present, index = _probe_rows(labels, mask, conditions)
    out = np.full((acts.shape[1], len(conditions), acts.shape[2]), np.nan)
    if len(present) < 2:
        return out
    for p in range(acts.shape[1]):
        out[p, index] = _unit(_probe_weights(acts[rows, p], labels[rows], present, cfg))
    return out


def _probe_refitter(acts, labels, train, conditions, cfg):
    """``fit(val) -> [position, condition, d]``: the probe directions fit on the train rows
    outside ``val``; the ridge probe reuses one matrix per position across folds."""
    if cfg.probe != "ridge":
        return lambda val: probe_directions(acts, labels, train & ~val, conditions, cfg)
    rows, present, index = _probe_rows(labels, train, conditions)
    x, y = acts[rows], labels[rows]
    fits = [RidgeProbe(x[:, p], y, present, cfg.probe_alpha) for p in range(acts.shape[1])]

    def fit(val):
        out = np.full((acts.shape[1], len(conditions), acts.shape[2]), np.nan)
        drop = val[rows]
        if len({*labels[rows][~drop]} & {*present}) == len(present) >= 2:
            for p, probe in enumerate(fits):
                out[p, index] = _unit(probe.weights(drop))
        else:  # a class left the fit: refit on what is there
            out = probe_directions(acts, labels, train & ~val, conditions, cfg)
        return out

    return fit


def contrast_directions(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    mask: np.ndarray,
    conditions: Sequence[str],
    baseline: str,
    cfg: SpecificityConfig,
    probe: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``{contrast: unit [position, condition, d_model]}`` fit on the rows where ``mask``
    holds, for every contrast of :data:`CONTRASTS` (``probe``: already fit on them)."""
    return {
        "vs_neutral": directions(acts, labels, mask, conditions, baseline)[0],
        "vs_others": directions_vs_others(acts, labels, mask, conditions),
        "probe": probe_directions(acts, labels, mask, conditions, cfg) if probe is None else probe,
    }


def auroc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC of ``positive`` over ``negative`` samples (ties count half) along the last axis
    of ``scores`` [..., sample]; NaN where either group is empty."""
    n1, n0 = int(positive.sum()), int(negative.sum())
    if not n1 or not n0:
        return np.full(scores.shape[:-1], np.nan)
    ranks = rankdata(scores[..., positive | negative], axis=-1)
    pos = positive[positive | negative]
    return (ranks[..., pos].sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def cv_groups(samples: np.ndarray, frame_id: np.ndarray) -> np.ndarray:
    """CV group of each sample: its frame (all versions of a counterfactual frame, or all
    variants of a source photo, stay together), else the sample itself."""
    frame_id = np.asarray(frame_id).astype(str)
    return np.where(frame_id != "", "frame:" + frame_id, "sample:" + np.asarray(samples, str))


def cv_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    train: np.ndarray,
    classes: Sequence[str],
    n_folds: int,
    seed: int,
) -> list[np.ndarray]:
    """Validation masks of a seeded StratifiedGroupKFold over the train rows of ``classes``
    (at most one fold per group); empty when the train split has fewer than two groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    rows = np.flatnonzero(train & np.isin(labels, list(classes)))
    n = min(n_folds, len(np.unique(groups[rows])))
    if n < 2:
        return []
    kfold = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    out = []
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.filterwarnings("ignore", category=UserWarning)
        for _, val in kfold.split(rows, labels[rows], groups[rows]):
            mask = np.zeros(len(labels), bool)
            mask[rows[val]] = True
            out.append(mask)
    return out


def cv_specificity(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    train: np.ndarray,
    folds: Sequence[np.ndarray],
    conditions: Sequence[str],
    baseline: str,
    cfg: SpecificityConfig,
) -> Float[np.ndarray, "position condition contrast"]:
    """Cross-validated specificity AUROC on the train split: per fold, every contrast's
    directions are fit on the train rows outside the fold and the fold's condition samples
    are ranked against its other-condition samples; folds are pooled by their number of
    (condition, other) pairs. Rows outside ``train`` are never read (NaN without folds, or
    where every fold's direction is zero)."""
    acts = np.asarray(acts, dtype=np.float64)
    P, C, K = acts.shape[1], len(conditions), len(CONTRASTS)
    num, den = np.zeros((P, C, K)), np.zeros((P, C, K))
    with threadpool_limits(limits=1):  # many small solves: BLAS threads only add overhead
        refit = _probe_refitter(acts, labels, train, conditions, cfg)
        for val in folds:
            val = val & train
            fitted = contrast_directions(
                acts, labels, train & ~val, conditions, baseline, cfg, probe=refit(val)
            )
            x = acts[val]
            lab = labels[val]
            for k, contrast in enumerate(CONTRASTS):
                proj = np.einsum("spd,pcd->pcs", x, fitted[contrast])
                # a zero direction (no train variation, e.g. the last token before block 0)
                # ranks everything as a tie: no candidate for the selection
                live = np.any(fitted[contrast] != 0, axis=-1)  # [position, condition]
                for c, condition in enumerate(conditions):
                    pos = lab == condition
                    neg = np.isin(lab, [o for o in conditions if o != condition])
                    a = auroc(proj[:, c], pos, neg)
                    ok = np.isfinite(a) & live[:, c]
                    weight = pos.sum() * neg.sum()
                    num[ok, c, k] += a[ok] * weight
                    den[ok, c, k] += weight
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def cosine_to_shared(
    unit: Mapping[str, np.ndarray], axis: Float[np.ndarray, "position d_model"]
) -> Float[np.ndarray, "position condition contrast"]:
    """Cosine of each contrast's unit directions [position, condition, d] to the shared axis."""
    return np.stack([np.einsum("pcd,pd->pc", unit[k], axis) for k in CONTRASTS], axis=-1)


@dataclass(frozen=True)
class HookSpecificity:
    """Everything the vectors store keeps of one hook's specificity (train split only)."""

    unit: dict[str, np.ndarray]  # contrast -> [position, condition, d_model]
    shared_axis: np.ndarray  # [position, d_model]
    cosine: np.ndarray  # [position, condition, contrast]
    cv_auroc: np.ndarray  # [position, condition, contrast]


def hook_specificity(
    acts: Float[np.ndarray, "sample position d_model"],
    labels: np.ndarray,
    train: np.ndarray,
    folds: Sequence[np.ndarray],
    conditions: Sequence[str],
    baseline: str,
    cfg: SpecificityConfig,
) -> HookSpecificity:
    """Every contrast's directions fit on the train split, the shared axis, the cosines to it
    and the train-split CV specificity AUROC of one hook."""
    acts = np.asarray(acts, dtype=np.float64)
    with threadpool_limits(limits=1):  # [~500, ~600] solves: threads cost 10x on a busy box
        unit = contrast_directions(acts, labels, train, conditions, baseline, cfg)
        axis = shared_axis(acts, labels, train, conditions, baseline)
        cv = cv_specificity(acts, labels, train, folds, conditions, baseline, cfg)
    return HookSpecificity(unit, axis, cosine_to_shared(unit, axis), cv)


def select_hooks(
    cv_auroc: Float[np.ndarray, "hook position condition contrast"],
    hooks: Sequence[str],
    positions: Sequence[str],
    conditions: Sequence[str],
) -> pd.DataFrame:
    """Per condition x contrast x position, the hook with the best train-CV specificity AUROC
    (first on ties; none where every hook is NaN): columns condition, contrast, position,
    hook, layer, site, cv_auroc."""
    rows = []
    for c, condition in enumerate(conditions):
        for k, contrast in enumerate(CONTRASTS):
            for p, position in enumerate(positions):
                values = cv_auroc[:, p, c, k]
                if not np.isfinite(values).any():
                    continue
                h = int(np.nanargmax(values))
                layer, site = store.parse_hook_name(hooks[h])
                rows.append(
                    {
                        "condition": condition,
                        "contrast": contrast,
                        "position": position,
                        "hook": hooks[h],
                        "layer": layer,
                        "site": site,
                        "cv_auroc": float(values[h]),
                    }
                )
    columns = ["condition", "contrast", "position", "hook", "layer", "site", "cv_auroc"]
    return pd.DataFrame(rows, columns=columns)


def specificity_rows(
    projections: Mapping[str, Float[np.ndarray, "hook position condition sample"]],
    cosine: Float[np.ndarray, "hook position condition contrast"],
    selection: pd.DataFrame,
    hooks: Sequence[str],
    positions: Sequence[str],
    conditions: Sequence[str],
    samples: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    dataset: str,
    model: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out specificity: per contrast x hook x position x condition, the test-split
    projections of the condition's samples (arm ``treatment``) and of the other conditions'
    (arm ``baseline``) as ``measurements.csv`` rows (metric :data:`METRIC`, setting
    ``contrast=<kind>``, unit = sample); the rows of each selected hook again with setting
    ``contrast=<kind> selected=train_cv``. Returns (measurements, ``selection`` with the
    test AUROC and group sizes at the selected hook and its shared-axis cosine)."""
    test = split == "test"
    chosen = {
        (r.condition, r.contrast, r.position): r.hook for r in selection.itertuples(index=False)
    }
    frames, summary = [], []
    for k, contrast in enumerate(CONTRASTS):
        values_k = projections[contrast]
        for h, hook in enumerate(hooks):
            layer, site = store.parse_hook_name(hook)
            for p, position in enumerate(positions):
                for c, condition in enumerate(conditions):
                    treat = test & (labels == condition)
                    base = test & np.isin(labels, [o for o in conditions if o != condition])
                    values = values_k[h, p, c]
                    if (
                        not (treat.any() and base.any())
                        or not np.isfinite(values[treat | base]).all()
                    ):
                        continue
                    meta = {
                        "layer": layer,
                        "site": site,
                        "position": position,
                        "condition": condition,
                        "note": f"shared-axis cosine {cosine[h, p, c, k]:.2f}",
                    }
                    settings = [f"contrast={contrast}"]
                    if chosen.get((condition, contrast, position)) == hook:
                        settings.append(f"contrast={contrast} {SELECTED}")
                        summary.append(
                            {
                                "condition": condition,
                                "contrast": contrast,
                                "position": position,
                                "hook": hook,
                                "test_auroc": float(auroc(values, treat, base)),
                                "n_test_treatment": int(treat.sum()),
                                "n_test_baseline": int(base.sum()),
                                "cosine_to_shared_axis": float(cosine[h, p, c, k]),
                            }
                        )
                    for setting in settings:
                        for arm, mask in (("treatment", treat), ("baseline", base)):
                            frames.append(
                                pd.DataFrame(
                                    {
                                        **meta,
                                        "setting": setting,
                                        "metric": SELECTED_METRIC
                                        if SELECTED in setting
                                        else METRIC,
                                        "arm": arm,
                                        "unit": samples[mask],
                                        "value": values[mask].astype(np.float64),
                                    }
                                )
                            )
    return _with_flags(frames, dataset, model), _held_out(selection, summary, dataset, model)


def _with_flags(frames: list[pd.DataFrame], dataset: str, model: str) -> pd.DataFrame:
    """Measurement rows in store order plus the optional group-constant columns
    ``unit_kind`` and ``note``."""
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"note": []})
    return store.as_measurements(
        rows, phase="vectors", dataset=dataset, model=model, unit_kind=UNIT_KIND
    )


def _held_out(selection: pd.DataFrame, summary: list[dict], dataset: str, model: str):
    keys = ["condition", "contrast", "position", "hook"]
    columns = ["test_auroc", "n_test_treatment", "n_test_baseline", "cosine_to_shared_axis"]
    table = selection.merge(pd.DataFrame(summary, columns=[*keys, *columns]), on=keys, how="left")
    table.insert(0, "model", model)
    table.insert(0, "dataset", dataset)
    return table
