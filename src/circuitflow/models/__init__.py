"""Model registry and backends: prepare, load, describe and hook any configured model.

Backends register themselves (``registry.register_backend``): ``transformer_lens`` (causal
LMs), ``torch`` (EfficientNet-Lite0), ``open_clip`` (CLIP ViTs), ``assembled`` (encoder ->
trained projector -> LM folders of the projectors phase) and ``hf`` (transformers vision
encoders and VLMs, the fallback ``backend: auto`` picks for any other vision source). The
``hf`` backend serves the families registered by ``architectures`` entry
(``hf_families.register_hf_family``): CLIP vision, LLaVA-1.5 / NeXT / OneVision, BLIP-2,
InstructBLIP, Qwen2-VL, Qwen2.5-VL, Idefics.
"""

from circuitflow.models import (  # noqa: F401  (each registers its backend or family)
    assembled_vlm,
    hf_clip,
    hf_idefics,
    hf_qformer,
    hf_qwen2vl,
    hf_vlm,
    open_clip,
    torch_cnn,
    transformer_lens,
)
from circuitflow.models.hf_families import (
    HFFamily,
    register_hf_family,
    registered_families,
    supported_families,
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
    "HFFamily",
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
    "registered_families",
    "load_bridge",
    "load_model",
    "load_vision_model",
    "model_facts",
    "pool",
    "prepare_model",
    "register_backend",
    "register_hf_family",
    "resolve_backend",
    "resolve_packaged_gguf",
    "supported_families",
    "take_images",
    "tokens_of",
]
