"""Model registry and backends: prepare, load, describe and hook any configured model.

Backends register themselves (``registry.register_backend``): ``transformer_lens`` (causal
LMs), ``torch`` (EfficientNet-Lite0), ``open_clip`` (CLIP ViTs), ``assembled`` (encoder ->
trained projector -> LM folders of the projectors phase) and ``hf`` (LLaVA-style VLMs, the
fallback ``backend: auto`` picks for any other vision source).
"""

from circuitflow.models import (  # noqa: F401  (each registers its backend)
    assembled_vlm,
    hf_vlm,
    open_clip,
    torch_cnn,
    transformer_lens,
)
from circuitflow.models.registry import (
    AUTO,
    DTYPES,
    FACTS_FILE,
    FAMILIES,
    Backend,
    ModelSourceError,
    ModelSpec,
    backend_choices,
    backend_names,
    describe_model,
    get_backend,
    load_model,
    model_facts,
    prepare_model,
    register_backend,
    resolve_backend,
)
from circuitflow.models.transformer_lens import PACKAGED_GGUF, load_bridge, resolve_packaged_gguf
from circuitflow.models.vision import (
    Capture,
    HookPoint,
    Runner,
    VisionModel,
    VisionModelError,
    describe,
    edit_tokens,
    load_vision_model,
    pool,
    take_images,
    tokens_of,
)

BACKENDS = backend_names()

__all__ = [
    "AUTO",
    "BACKENDS",
    "DTYPES",
    "FACTS_FILE",
    "FAMILIES",
    "PACKAGED_GGUF",
    "Backend",
    "Capture",
    "HookPoint",
    "ModelSourceError",
    "ModelSpec",
    "Runner",
    "VisionModel",
    "VisionModelError",
    "backend_choices",
    "backend_names",
    "describe",
    "describe_model",
    "edit_tokens",
    "get_backend",
    "load_bridge",
    "load_model",
    "load_vision_model",
    "model_facts",
    "pool",
    "prepare_model",
    "register_backend",
    "resolve_backend",
    "resolve_packaged_gguf",
    "take_images",
    "tokens_of",
]
