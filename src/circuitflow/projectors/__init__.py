"""The projector study: train an assembled VLM's projector on image captions and evaluate it.

``training``: :class:`ProjectorTrainConfig` (the ``projectors`` config section) and
:func:`train_projector`; ``evaluation``: caption NLL, caption retrieval against
one-attribute distractors, greedy descriptions, attribute-word accuracy, SigLIP score. The
VLM and the projector architectures live in :mod:`circuitflow.models.assembled_vlm` and
:mod:`circuitflow.models.projectors`.
"""

from circuitflow.models.assembled_vlm import AssembledVLM, AssembledVLMError
from circuitflow.models.projectors import (
    build_projector,
    n_parameters,
    output_tokens,
    projector_names,
    register_projector,
)
from circuitflow.projectors.evaluation import (
    RetrievalResult,
    attribute_word_accuracy,
    caption_nll,
    greedy_descriptions,
    rank_truth,
    retrieval,
    score_captions,
    siglip_score,
)
from circuitflow.projectors.training import (
    WORKFLOW_KEYS,
    ProjectorTrainConfig,
    caption_loss,
    epoch_order,
    lr_factor,
    train_projector,
)

ARCHITECTURES = projector_names()  # registered names, in registration order

__all__ = [
    "ARCHITECTURES",
    "WORKFLOW_KEYS",
    "AssembledVLM",
    "AssembledVLMError",
    "ProjectorTrainConfig",
    "RetrievalResult",
    "attribute_word_accuracy",
    "build_projector",
    "caption_loss",
    "caption_nll",
    "epoch_order",
    "greedy_descriptions",
    "lr_factor",
    "n_parameters",
    "output_tokens",
    "projector_names",
    "rank_truth",
    "register_projector",
    "retrieval",
    "score_captions",
    "siglip_score",
    "train_projector",
]
