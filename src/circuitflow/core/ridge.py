"""Ridge readouts in closed form, shared by the image probes and the readouts that patching
and steering refit: one isotropic standardization, a dual solve, a raw-feature readout, and
the counterfactual contrast that removes each source photo's content.
"""

from __future__ import annotations

import numpy as np


def standardize(x_train: np.ndarray, x_test: np.ndarray):
    """Centre, and divide by ONE scale (RMS feature SD): ridge stays isotropic, so the probe's
    weight vector is a direction of the raw feature space (per-feature scaling would bend it)."""
    mu = x_train.mean(0)
    sd = float(np.sqrt((x_train.std(0) ** 2).mean())) or 1.0
    return (x_train - mu) / sd, (x_test - mu) / sd, sd


def ridge_dual(K: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Dual ridge coefficients for every alpha: [alpha, n, targets] (K = X X^T, centred)."""
    evals, evecs = np.linalg.eigh(K)
    proj = evecs.T @ Y
    return np.stack([evecs @ (proj / (evals + a)[:, None]) for a in alphas])


def ridge_fit(x: np.ndarray, Y: np.ndarray, alpha: float):
    """Primal weights [d, t] and intercept [t] of ridge on standardized x (dual solve)."""
    xm, ym = x.mean(0), Y.mean(0)
    xc = x - xm
    dual = ridge_dual(xc @ xc.T, Y - ym, np.array([alpha]))[0]
    w = xc.T @ dual
    return w, ym - xm @ w


def readout_weights(
    x_train: np.ndarray, y_train: np.ndarray, alpha: float
) -> tuple[np.ndarray, float]:
    """The ridge probe of :func:`fit_regression_probe` at a given penalty as a linear readout
    of RAW features: ``prediction = x @ w + b``; x [n, d], y [n] -> (w [d], b)."""
    x_train = np.asarray(x_train, np.float64)
    xs, _, sd = standardize(x_train, x_train[:1])
    w, b = ridge_fit(xs, np.asarray(y_train, np.float64)[:, None], alpha)
    mu = x_train.mean(0)
    w_raw = w[:, 0] / sd
    return w_raw, float(b[0] - mu @ w_raw)


def source_contrast(
    x: np.ndarray, sources: np.ndarray, labels: np.ndarray, baseline: str
) -> np.ndarray:
    """Counterfactual contrast: each sample minus the mean of its source photo's baseline
    (unchanged) samples, removing the photo's content; [n, d] -> [n, d]. Sources without a
    baseline sample are left as they are."""
    out = np.array(x, dtype=np.float64, copy=True)
    for s in np.unique(sources):
        m = sources == s
        ref = m & (labels == baseline)
        if ref.any():
            out[m] -= out[ref].mean(0)
    return out
