"""Linear probes per attribute, hook and position (image datasets).

For a graded attribute (exposure, contrast, tone, saturation, color_cast, tilt) the probe is a
ridge regression of the signed level on centred features (one global scale), fit on the
train-split variants of that attribute plus the unchanged originals (level 0), and scored by
held-out R² on the test split (other source photographs). Composition is a ridge classifier
over the composition labels (one-hot, argmax), scored by held-out accuracy. Features are
counterfactual contrasts (:func:`source_contrast`: minus the mean of the same photo's
originals), so the probe reads the edit rather than the photo's content; the ridge penalty is
chosen by leave-one-source-out CV.

Per test image the probe's loss is written as long measurements (``store.MEASUREMENTS_FILE``
layout) with three arms: ``treatment`` (the probe), ``baseline`` (a constant predictor: the
train mean or the majority class) and ``control`` (the same probe fit on shuffled train
targets, ``n_controls`` seeds). Metrics: ``probe_sq_error`` (squared error in units of the
train SD of the level) and ``probe_error`` (0/1 misclassification); lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from circuitflow import store
from circuitflow.core.ridge import (
    ridge_dual,
    ridge_fit,
    source_contrast,
    standardize,
)
from circuitflow.store import parse_hook_name

ALPHAS = np.logspace(-2, 6, 17)
GRADED = store.GRADED_ATTRIBUTES
CLASSIFIED = {"composition": "composition"}  # target name -> attribute whose labels are classes


@dataclass(frozen=True)
class ProbeResult:
    """One fitted probe: score on the test split, per-test-sample losses of each arm, and
    the probe's activation pattern in raw feature space (unit norm; regression only)."""

    kind: str  # regression | classification
    metric: str  # r2 | accuracy
    score: float
    chance: float  # the constant predictor's score
    control_score: float  # mean over shuffled-target probes
    loss_metric: str
    loss_treatment: np.ndarray
    loss_baseline: np.ndarray
    loss_control: np.ndarray  # [n_controls, n_test]
    direction: np.ndarray | None
    n_train: int
    n_test: int
    alpha: float


def select_alpha(
    x: np.ndarray, Y: np.ndarray, groups: np.ndarray, alphas: np.ndarray = ALPHAS
) -> float:
    """Ridge penalty by leave-one-group-out CV (groups = source photos): variants of one photo
    never sit on both sides, as in the train/test split. x standardized [n, d]; Y [n, t]."""
    ug = np.unique(groups)
    if len(ug) < 2:
        return float(alphas[len(alphas) // 2])
    err = np.zeros(len(alphas))
    for g in ug:
        tr, te = groups != g, groups == g
        xm, ym = x[tr].mean(0), Y[tr].mean(0)
        xt, xv = x[tr] - xm, x[te] - xm
        dual = ridge_dual(xt @ xt.T, Y[tr] - ym, alphas)  # [a, n_tr, t]
        pred = np.einsum("vn,ant->avt", xv @ xt.T, dual) + ym
        err += ((pred - Y[te]) ** 2).sum(axis=(1, 2))
    return float(alphas[int(np.argmin(err))])


def _fit_predict(x_train, Y_train, x_test, groups):
    alpha = select_alpha(x_train, Y_train, groups)
    w, b = ridge_fit(x_train, Y_train, alpha)
    return x_test @ w + b, w, alpha


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


def fit_regression_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    n_controls: int = 2,
) -> ProbeResult:
    """Ridge probe of a graded level (penalty by leave-one-source-out CV); x: [n, d], y: [n].
    ``groups``: source of each train row (default: every row its own group)."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    groups = np.arange(len(y_train)) if groups is None else np.asarray(groups)
    xs, xt, sd = standardize(x_train, x_test)
    pred, w, alpha = _fit_predict(xs, y_train[:, None], xt, groups)
    pred = pred[:, 0]
    # the probe's activation pattern (Haufe et al. 2014): cov(x, prediction) on the train
    # split. Unlike the weight vector it points along the encoded attribute, not along the
    # low-variance directions a regression uses to cancel noise.
    fitted = xs @ w[:, 0]
    pattern = (x_train - x_train.mean(0)).T @ (fitted - fitted.mean())
    direction = pattern / (np.linalg.norm(pattern) or 1.0)
    scale = y_train.std() or 1.0
    mean = y_train.mean()
    rng = np.random.default_rng(seed)
    controls, control_scores = [], []
    for _ in range(n_controls):
        c = _fit_predict(xs, rng.permutation(y_train)[:, None], xt, groups)[0][:, 0]
        controls.append(((c - y_test) / scale) ** 2)
        control_scores.append(_r2(y_test, c))
    return ProbeResult(
        kind="regression",
        metric="r2",
        score=_r2(y_test, pred),
        chance=_r2(y_test, np.full_like(y_test, mean)),
        control_score=float(np.mean(control_scores)) if control_scores else float("nan"),
        loss_metric="probe_sq_error",
        loss_treatment=((pred - y_test) / scale) ** 2,
        loss_baseline=((mean - y_test) / scale) ** 2,
        loss_control=np.array(controls).reshape(n_controls, len(y_test)),
        direction=direction,
        n_train=len(y_train),
        n_test=len(y_test),
        alpha=alpha,
    )


def fit_classification_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    n_controls: int = 2,
) -> ProbeResult:
    """Ridge classifier (one-hot targets, argmax; penalty by leave-one-source-out CV) of a
    categorical attribute; x: [n, d], y: [n] labels."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    groups = np.arange(len(y_train)) if groups is None else np.asarray(groups)
    classes, counts = np.unique(y_train, return_counts=True)
    xs, xt, _ = standardize(x_train, x_test)

    def predict(y):
        onehot = (y[:, None] == classes[None, :]).astype(np.float64) * 2 - 1
        pred, _, alpha = _fit_predict(xs, onehot, xt, groups)
        return classes[pred.argmax(1)], alpha

    pred, alpha = predict(y_train)
    correct = pred == y_test
    majority = classes[np.argmax(counts)]
    rng = np.random.default_rng(seed)
    controls = np.array(
        [predict(rng.permutation(y_train))[0] != y_test for _ in range(n_controls)],
        dtype=np.float64,
    ).reshape(n_controls, len(y_test))
    return ProbeResult(
        kind="classification",
        metric="accuracy",
        score=float(correct.mean()),
        chance=float((y_test == majority).mean()),
        control_score=float(1 - controls.mean()) if n_controls else float("nan"),
        loss_metric="probe_error",
        loss_treatment=(~correct).astype(np.float64),
        loss_baseline=(y_test != majority).astype(np.float64),
        loss_control=controls,
        direction=None,
        n_train=len(y_train),
        n_test=len(y_test),
        alpha=alpha,
    )


def probe_targets(
    attribute: np.ndarray, label: np.ndarray, baseline: str = "original"
) -> dict[str, tuple[str, np.ndarray]]:
    """``{target: (kind, sample mask)}`` for the attributes present in a dataset."""
    attribute, label = np.asarray(attribute), np.asarray(label)
    out = {}
    for target in GRADED:
        sel = (attribute == target) | (label == baseline)
        if (attribute == target).any():
            out[target] = ("regression", sel)
    for target, attr in CLASSIFIED.items():
        sel = attribute == attr
        if len(np.unique(label[sel])) >= 2:
            out[target] = ("classification", sel)
    return out


def run_probes(
    acts: dict[str, np.ndarray],
    positions: Sequence[str],
    coords: dict[str, np.ndarray],
    seed: int = 0,
    n_controls: int = 2,
    baseline: str = "original",
) -> tuple[list[dict], list[dict]]:
    """Every probe: hook x position x target, on :func:`source_contrast` features.
    ``acts``: {hook: [sample, position, d]}; coords: sample, label, split, frame_id (source),
    attribute, level. Returns (summary rows, measurement rows)."""
    with threadpool_limits(limits=1):  # many tiny solves: BLAS threads only add overhead
        return _run_probes(acts, positions, coords, seed, n_controls, baseline)


def _run_probes(acts, positions, coords, seed, n_controls, baseline):
    train = coords["split"] == "train"
    test = coords["split"] == "test"
    targets = probe_targets(coords["attribute"], coords["label"], baseline)
    summary, long = [], []
    for hook, a in acts.items():
        layer, site = parse_hook_name(hook)
        for p, position in enumerate(positions):
            x = source_contrast(a[:, p], coords["frame_id"], coords["label"], baseline)
            for target, (kind, sel) in targets.items():
                tr, te = sel & train, sel & test
                if tr.sum() < 3 or te.sum() < 2:
                    continue
                g = coords["frame_id"][tr]
                if kind == "regression":
                    y = coords["level"]
                    fit = fit_regression_probe
                else:
                    y = coords["label"]
                    if len(np.unique(y[tr])) < 2:
                        continue
                    fit = fit_classification_probe
                r = fit(x[tr], y[tr], x[te], y[te], g, seed, n_controls)
                summary.append(
                    {
                        "hook": hook,
                        "layer": layer,
                        "site": site,
                        "position": position,
                        "target": target,
                        "kind": r.kind,
                        "metric": r.metric,
                        "score": r.score,
                        "chance": r.chance,
                        "control_score": r.control_score,
                        "n_train": r.n_train,
                        "n_test": r.n_test,
                        "alpha": r.alpha,
                    }
                )
                units = coords["sample"][te]
                common = {
                    "layer": layer,
                    "site": site,
                    "position": position,
                    "condition": target,
                    "setting": f"probe={'ridge' if kind == 'regression' else 'ridge_classifier'}",
                    "metric": r.loss_metric,
                }
                for arm, values in (("treatment", r.loss_treatment), ("baseline", r.loss_baseline)):
                    long += [
                        {**common, "arm": arm, "unit": str(u), "value": float(v)}
                        for u, v in zip(units, values, strict=True)
                    ]
                for row in r.loss_control:
                    long += [
                        {**common, "arm": "control", "unit": str(u), "value": float(v)}
                        for u, v in zip(units, row, strict=True)
                    ]
    return summary, long
