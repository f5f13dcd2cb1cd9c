"""Model families of the ``hf`` backend, registered by their config's ``architectures`` entry.

A family knows how to load a transformers folder of its architectures, what its preprocessing
and facts are, and where its hook points sit (:meth:`HFFamily.build`). The ``hf`` backend
(``hf_vlm.py``) reads ``config.json``, picks the family and asks it; nothing branches on
architecture names. To add one: subclass :class:`HFFamily` in its own module, then
``register_hf_family(MyFamily())`` and import the module in ``circuitflow/models/__init__.py``.

Hook outputs whose layout is not ``[batch, tokens, d]`` (Qwen2-VL's packed patches, LLaVA-NeXT's
tiles, a Q-Former's query tokens beside its text) are exposed through a :class:`TokenView`:
an identity module fed the module's tokens ``[batch, n_tokens, d]``; hooks and edits attach to
the view, and whatever the view returns is written back into the module's own output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from circuitflow import store
from circuitflow.core.hooks import main_output, replace_main
from circuitflow.models.registry import ModelSourceError
from circuitflow.models.vision import HookPoint, VisionModelError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFFamily:
    """One family of transformers models (e.g. BLIP-2) served by the ``hf`` backend."""

    name: str = ""  # what users call it: "BLIP-2", "Qwen2-VL"
    architectures: tuple[str, ...] = ()  # config.json ``architectures`` entries it serves
    family: str = "vlm"  # vision-encoder | vlm
    model_class: str = "AutoModelForImageTextToText"  # transformers class that loads a folder
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def load(self, where: str | Path):
        """The transformers model of a folder (or hub id) in its saved dtype, in eval mode."""
        import transformers

        cls = getattr(transformers, self.model_class)
        return cls.from_pretrained(str(where), dtype="auto").eval()

    def facts(self, model, where: str | Path) -> dict:
        """JSON-able facts of a model loaded from ``where``: at least ``image_size`` (the side
        the stimuli are resized to), plus the block counts users pick layers from."""
        raise NotImplementedError

    def build(self, model, facts: dict) -> dict:
        """{module, hooks, forward_fn[, lm_inputs, image_token_id]} of a loaded model (see
        :class:`circuitflow.models.vision.VisionModel`)."""
        raise NotImplementedError


_FAMILIES: dict[str, HFFamily] = {}


def register_hf_family(family: HFFamily) -> HFFamily:
    """Serve ``family.architectures`` with ``family``."""
    for arch in family.architectures:
        _FAMILIES[arch] = family
    return family


def registered_families() -> dict[str, HFFamily]:
    """{architectures entry: family} of every registered family."""
    return dict(_FAMILIES)


def supported_families() -> str:
    """The registered families for a message: ``BLIP-2 (Blip2ForConditionalGeneration), ...``."""
    names: dict[str, list[str]] = {}
    for arch, fam in _FAMILIES.items():
        names.setdefault(fam.name, []).append(arch)
    return ", ".join(f"{n} ({' | '.join(a)})" for n, a in names.items())


def unsupported_architecture(name: str, architecture: str, supported: str) -> ModelSourceError:
    """One-line error: model ``name``'s ``architectures`` entry is not served; the options."""
    return ModelSourceError(
        f"model {name!r}: config.json architectures entry {architecture!r} is not a supported "
        f"family; supported: {supported}; convert the checkpoint to one of these or register "
        "a family (circuitflow.models.hf_families.register_hf_family)"
    )


def bridge_architectures() -> tuple[str, ...]:
    """``architectures`` entries the TransformerLens bridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return tuple(SUPPORTED_ARCHITECTURES)


def check_causal_lm(name: str, architecture: str) -> None:
    """Raise the one-line error when the bridge cannot run a causal LM's architecture."""
    if architecture in bridge_architectures():
        return
    supported = (
        f"the TransformerLens bridge's {len(bridge_architectures())} architectures (e.g. "
        "LlamaForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM, GPT2LMHeadModel, "
        "GPTNeoXForCausalLM; transformer_lens.factories.architecture_adapter_factory."
        "SUPPORTED_ARCHITECTURES) as causal-lm, and as vision-encoder / vlm " + supported_families()
    )
    raise unsupported_architecture(name, architecture, supported)


def family_for(architecture: str, name: str, family: str | None = None) -> HFFamily:
    """The registered family of an ``architectures`` entry (checked against the config's
    ``models.<name>.family`` when given)."""
    fam = _FAMILIES.get(architecture)
    if fam is None:
        raise unsupported_architecture(name, architecture, supported_families())
    if family is not None and family != fam.family:
        raise VisionModelError(
            f"model {name!r}: {architecture} is a {fam.family} ({fam.name}), not a {family}; "
            f"set models.{name}.family: {fam.family}"
        )
    return fam


def architecture_of(where: str | Path) -> str:
    """The first ``architectures`` entry of a folder's (or hub id's) config."""
    from transformers import AutoConfig

    archs = AutoConfig.from_pretrained(str(where)).architectures or []
    return archs[0] if archs else ""


def image_stats(folder: Path, fam: HFFamily) -> dict:
    """{mean, std} of the folder's image processor (preprocessor_config.json, or the
    ``image_processor`` of processor_config.json), else the family's defaults."""
    cfg: dict = {}
    for name, key in (
        ("processor_config.json", "image_processor"),
        ("preprocessor_config.json", None),
    ):
        path = Path(folder) / name
        if path.exists():
            found = json.loads(path.read_text())
            cfg = found.get(key, {}) if key else found
            if cfg.get("image_mean"):
                break
    return {
        "mean": [float(v) for v in cfg.get("image_mean") or fam.mean],
        "std": [float(v) for v in cfg.get("image_std") or fam.std],
    }


# ---------------------------------------------------------------- forward passes
class PixelInputs(torch.nn.Module):
    """A model whose ``forward`` and ``generate`` take stimulus pixels ``[B, 3, S, S]``;
    ``inputs(pixels)`` gives the model's own image arguments (tiles, patches, grids)."""

    def __init__(self, model: torch.nn.Module, inputs: Callable[[torch.Tensor], dict]):
        super().__init__()
        self.model = model
        self.inputs = inputs

    @property
    def generation_config(self):
        return self.model.generation_config

    def forward(self, pixel_values, **kwargs):
        return self.model(**self.inputs(pixel_values), **kwargs)

    def generate(self, pixel_values, **kwargs):
        return self.model.generate(**self.inputs(pixel_values), **kwargs)


def lm_forward(lm_inputs: Callable[[int], dict]) -> Callable:
    """``forward_fn(module, pixels)`` of a VLM: pixels with the fixed LM inputs of the batch."""

    def forward(model, pixels):
        inputs = {k: v.to(pixels.device) for k, v in lm_inputs(pixels.shape[0]).items()}
        return model(pixel_values=pixels, **inputs)

    return forward


# ---------------------------------------------------------------- hook points
class TokenView(torch.nn.Identity):
    """Hook point over tokens ``[batch, n_tokens, d]`` cut out of another module's output."""


def add_view(
    module: torch.nn.Module,
    to_tokens: Callable[[torch.Tensor], torch.Tensor],
    from_tokens: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> TokenView:
    """A :class:`TokenView` fed ``to_tokens(output)`` each time ``module`` runs; its result
    goes back as ``from_tokens(tokens, output)``. Runs before the model's own hooks, so edits
    reach the features transformers records with hooks."""
    view = TokenView()

    def hook(mod, args, out):
        x = main_output(out)
        return replace_main(out, from_tokens(view(to_tokens(x)), x))

    module.register_forward_hook(hook, prepend=True)
    return view


def token_slice(start: int, stop: int | None) -> tuple[Callable, Callable]:
    """(to_tokens, from_tokens) of the positions ``start:stop`` of a ``[B, seq, d]`` output."""

    def to_tokens(x):
        return x[:, start:stop]

    def from_tokens(t, x):
        new = x.clone()
        new[:, start:stop] = t.to(x.dtype)
        return new

    return to_tokens, from_tokens


def block_hooks(
    layers: Sequence[torch.nn.Module], site: str, kind: str, description: str
) -> list[HookPoint]:
    """One hook point per layer: ``store.hook_name(i, site)``; ``description`` may hold {i}."""
    return [
        HookPoint(store.hook_name(i, site), layer, kind, description.format(i=i))
        for i, layer in enumerate(layers)
    ]


def decoder_layers(language_model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The decoder layers of a transformers causal LM or its base model (Llama, OPT, Qwen2)."""
    for candidate in (language_model, getattr(language_model, "model", None)):
        if candidate is None:
            continue
        if isinstance(getattr(candidate, "layers", None), torch.nn.ModuleList):
            return candidate.layers
        decoder = getattr(candidate, "decoder", None)
        if isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
            return decoder.layers
    raise VisionModelError(
        f"{type(language_model).__name__}: no decoder layers found (expected .layers or "
        ".decoder.layers); use a decoder-only language model"
    )


def lm_hooks(language_model: torch.nn.Module) -> list[HookPoint]:
    """``blocks.{i}.hook_resid_post`` of each decoder layer, read at the image positions."""
    return block_hooks(
        decoder_layers(language_model),
        "hook_resid_post",
        "lm",
        "language model layer {i} output at the image-token positions",
    )


def fixed_inputs(ids: Sequence[int]) -> Callable[[int], dict]:
    """``lm_inputs(batch)``: {input_ids, attention_mask}, the same ``ids`` in every row."""
    ids = [int(i) for i in ids]

    def lm_inputs(batch: int) -> dict:
        x = torch.tensor(ids).unsqueeze(0).expand(batch, -1).contiguous()
        return {"input_ids": x, "attention_mask": torch.ones_like(x)}

    return lm_inputs
