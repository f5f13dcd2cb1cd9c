"""Sparse autoencoders on per-token activations: training, SAELens-format I/O and evaluation.

One file per architecture (``standard``: ReLU + L1; ``topk``), each a registered
:class:`SAEArchitecture`; ``base`` holds the SAE container and the registry, ``config`` the
training settings, ``training`` the deterministic trainer, ``metrics`` the evaluation
(features chosen on train samples and tested on test samples; Delta CE), ``images`` the same
for image tokens (units = source photos, a permuted-label null) and ``io`` the SAELens 6.54
file format. Tensors: activations x [n, d_in], features f [n, d_sae].
"""

from circuitflow.sae import standard, topk  # noqa: F401  (each registers its architecture)
from circuitflow.sae.base import (
    SAE,
    SAEArchitecture,
    SAEError,
    architecture_names,
    get_sae_class,
    register_sae_class,
)
from circuitflow.sae.config import (
    B_DEC_INITS,
    NORMALIZATIONS,
    WORKFLOW_KEYS,
    SAETrainConfig,
)
from circuitflow.sae.images import (
    IMAGE_METRIC,
    NULL_METRIC,
    FeatureTests,
    ImageTokens,
    best_aurocs,
    capture_tokens,
    feature_tests,
    graded_conditions,
    image_feature_table,
    permute_within,
    photo_measurements,
)
from circuitflow.sae.io import (
    CFG_FILE,
    FEATURES_FILE,
    METRICS_FILE,
    SAE_LENS_VERSION,
    WEIGHTS_FILE,
    TokenActivations,
    load_sae,
    read_tokens,
    sae_lens_cfg,
    save_sae,
    write_sae_folder,
)
from circuitflow.sae.metrics import (
    TOP_N,
    CELossResult,
    ReconstructionMetrics,
    annotate_selection,
    auroc,
    ce_loss_recovered,
    ce_measurements,
    choose_prompts,
    feature_measurements,
    feature_table,
    hook_layer_site,
    label_aurocs,
    per_sample_max,
    reconstruction_metrics,
    sae_measurements,
    sample_max_activations,
    select_features,
)
from circuitflow.sae.training import (
    activation_scaling_factor,
    batch_indices,
    deterministic,
    geometric_median,
    timer,
    train_sae,
)

ARCHITECTURES = architecture_names()  # registered names, in registration order

__all__ = [
    "ARCHITECTURES",
    "B_DEC_INITS",
    "CFG_FILE",
    "FEATURES_FILE",
    "IMAGE_METRIC",
    "METRICS_FILE",
    "NORMALIZATIONS",
    "NULL_METRIC",
    "SAE",
    "SAE_LENS_VERSION",
    "TOP_N",
    "WEIGHTS_FILE",
    "WORKFLOW_KEYS",
    "CELossResult",
    "FeatureTests",
    "ImageTokens",
    "ReconstructionMetrics",
    "SAEArchitecture",
    "SAEError",
    "SAETrainConfig",
    "TokenActivations",
    "activation_scaling_factor",
    "annotate_selection",
    "architecture_names",
    "auroc",
    "batch_indices",
    "best_aurocs",
    "capture_tokens",
    "ce_loss_recovered",
    "ce_measurements",
    "choose_prompts",
    "deterministic",
    "feature_measurements",
    "feature_table",
    "feature_tests",
    "geometric_median",
    "get_sae_class",
    "graded_conditions",
    "hook_layer_site",
    "image_feature_table",
    "label_aurocs",
    "load_sae",
    "per_sample_max",
    "permute_within",
    "photo_measurements",
    "read_tokens",
    "reconstruction_metrics",
    "register_sae_class",
    "sae_lens_cfg",
    "sae_measurements",
    "sample_max_activations",
    "save_sae",
    "write_sae_folder",
    "select_features",
    "timer",
    "train_sae",
]
