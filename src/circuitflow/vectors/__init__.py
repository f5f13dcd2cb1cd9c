"""Vectors phase: mean-difference directions and their PCA subspaces (:mod:`.diffmeans`), and
linear probes of image attributes (:mod:`.probes`)."""

from circuitflow.core.ridge import readout_weights, source_contrast
from circuitflow.vectors.diffmeans import (
    cosine_matrix,
    difference_vectors,
    directions,
    mean_difference,
    pca_subspace,
    project,
    separation_measurements,
)
from circuitflow.vectors.probes import (
    ALPHAS,
    CLASSIFIED,
    GRADED,
    ProbeResult,
    fit_classification_probe,
    fit_regression_probe,
    probe_targets,
    run_probes,
    select_alpha,
)

__all__ = [
    "ALPHAS",
    "CLASSIFIED",
    "GRADED",
    "ProbeResult",
    "cosine_matrix",
    "difference_vectors",
    "directions",
    "fit_classification_probe",
    "fit_regression_probe",
    "mean_difference",
    "pca_subspace",
    "probe_targets",
    "project",
    "separation_measurements",
    "readout_weights",
    "run_probes",
    "select_alpha",
    "source_contrast",
]
