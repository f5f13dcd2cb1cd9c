"""Report phase: figures and the plain-words summary, in one seaborn style (:mod:`.common`);
text-track and shared figures in :mod:`.text`, vision-track figures in :mod:`.vision`."""

from circuitflow.report.common import ALPHA, PALETTE, save
from circuitflow.report.projectors import photo_scores, projector_scores, training_curves
from circuitflow.report.text import (
    HEAD_PANELS,
    IMAGE_METRICS,
    IMAGE_PHASE_WORDS,
    PHASE_WORDS,
    SAE_METRICS,
    STEERING_COMPARISONS,
    cosine_matrices,
    head_heatmap,
    layer_cosines,
    overlap_vs_k,
    parse_setting,
    patching_position_heatmap,
    sae_metric_bars,
    sae_metric_frame,
    separability_by_layer,
    significance_mark,
    steering_effects,
    steering_heatmap,
    summary_markdown,
)
from circuitflow.report.vision import (
    probe_scores_by_layer,
    stimulus_grid,
    vision_effect_by_layer,
)

__all__ = [
    "ALPHA",
    "HEAD_PANELS",
    "IMAGE_METRICS",
    "IMAGE_PHASE_WORDS",
    "PALETTE",
    "PHASE_WORDS",
    "SAE_METRICS",
    "STEERING_COMPARISONS",
    "cosine_matrices",
    "head_heatmap",
    "layer_cosines",
    "overlap_vs_k",
    "parse_setting",
    "patching_position_heatmap",
    "photo_scores",
    "projector_scores",
    "probe_scores_by_layer",
    "training_curves",
    "sae_metric_bars",
    "sae_metric_frame",
    "save",
    "separability_by_layer",
    "significance_mark",
    "steering_effects",
    "steering_heatmap",
    "stimulus_grid",
    "summary_markdown",
    "vision_effect_by_layer",
]
