"""The ``assembled`` backend: a LLaVA-style VLM built from offline parts.

A frozen vision encoder (any prepared vision folder, e.g. EfficientNet-Lite0 through the
``torch`` backend) is read at one hook as spatial tokens ``[batch, n_in, d_vision]`` (a CNN's
``[B, C, h, w]`` map -> ``[B, h*w, C]``; a ViT's patches), a trained projector
(:mod:`circuitflow.models.projectors`) maps them to ``[batch, n_out, d_lm]``, and a frozen
HF causal LM reads them in place of ``n_out`` placeholder tokens (an unused special token):
``[BOS] + n_out image positions + text``, LLaVA style.

Hooks: ``vision.blocks.{i}.hook_out`` (encoder blocks up to the configured one),
``projector.hook_out`` and ``blocks.{i}.hook_resid_post`` (LM layer i, at the image positions).
Saved folder: ``vlm_config.json`` (the parts, paths relative to the folder),
``projector.safetensors``, the LM's tokenizer, ``lora/`` (peft, when on) and the facts file.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

from circuitflow import store
from circuitflow.core.hooks import main_output
from circuitflow.models.projectors import Projector, build_projector, n_parameters
from circuitflow.models.registry import FACTS_FILE, ModelSpec, load_model, register_backend
from circuitflow.models.vision import (
    HookPoint,
    VisionBackend,
    VisionModel,
    VisionModelError,
    grid_of,
    tokens_of,
)

VLM_CONFIG = "vlm_config.json"
PROJECTOR_FILE = "projector.safetensors"
LORA_DIR = "lora"
BACKEND = "assembled"


class AssembledVLMError(VisionModelError):
    """An assembled VLM cannot be built, run or loaded; the message says what to do."""


class _EncoderDone(Exception):
    """Ends the encoder's pass once the configured hook has fired."""


def resolve_dir(path: str | os.PathLike, vlm_dir: Path | None, key: str) -> Path:
    """A part's folder: absolute, else relative to the VLM folder (lexically, so a VLM
    folder that is a symlink into Snakemake's output cache still finds its neighbours), else
    to the working directory."""
    p = Path(path).expanduser()
    near = () if vlm_dir is None or p.is_absolute() else (Path(os.path.normpath(vlm_dir / p)),)
    for cand in (*near, p):
        if cand.is_dir():
            return cand
    raise AssembledVLMError(
        f"{vlm_dir or 'assembled VLM'}: {key} folder {str(path)!r} does not exist; prepare that "
        "model first (snakemake resources/models/<name>)"
    )


def relative_to_folder(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` as written into a VLM folder: relative to it (lexically), so the folder and
    its parts can move together; absolute paths stay absolute."""
    if Path(path).is_absolute():
        return str(path)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def choose_image_token(tokenizer, vocab_rows: int) -> int:
    """The placeholder id: an added token naming "image" (Gemma-3's ``<image_soft_token>``),
    else the last added token that is not BOS/EOS/PAD/UNK (SmolLM2: ``<empty_output>``)."""
    taken = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    taken.add(tokenizer.unk_token_id)
    added = sorted(
        (i, t.content) for i, t in tokenizer.added_tokens_decoder.items() if i < vocab_rows
    )
    free = [(i, c) for i, c in added if i not in taken]
    named = [i for i, c in free if "image" in c.lower()]
    if named or free:
        return (named or [free[-1][0]])[0]
    raise AssembledVLMError(
        "the LM's tokenizer has no unused special token for the image placeholder; pass "
        "image_token_id=<an id no caption uses>"
    )


class AssembledVLM(torch.nn.Module):
    """Frozen encoder -> projector -> frozen causal LM; ``forward`` returns the LM's logits.

    Build with :meth:`from_parts` (new projector) or :meth:`load` (a saved folder). The encoder
    and LM never train (``requires_grad`` False, always in eval mode); the projector and an
    optional LoRA adapter on the LM do.
    """

    def __init__(
        self,
        encoder: VisionModel,
        encoder_hook: str,
        projector: Projector,
        lm,
        tokenizer,
        config: dict,
    ):
        super().__init__()
        last = _hook_index(encoder, encoder_hook)
        self.vision = encoder.module
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        self._encoder_forward = encoder.forward_fn
        self._encoder_hooks = encoder.hooks[: last + 1]
        self.image_size = int(config["image_size"])
        self.mean, self.std = tuple(config["mean"]), tuple(config["std"])
        self.facts: dict = {}  # no native-resolution input: the token count is fixed
        self.image_token_id = int(config["image_token_id"])
        self.n_image_tokens = int(config["n_image_tokens"])
        self.prefix = [config["bos_token_id"]] if config["bos_token_id"] is not None else []
        fwd = inspect.signature(type(self._base_lm()).forward).parameters
        self._keep_kw = "logits_to_keep" in fwd
        for module in (self.vision, self.lm):
            module.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_parts(
        cls,
        encoder_dir: str | os.PathLike,
        lm_dir: str | os.PathLike,
        projector: str = "mlp2l",
        encoder_hook: str = "blocks.15.hook_out",
        image_size: int = 160,
        projector_params: dict | None = None,
        image_token_id: int | None = None,
        seed: int = 0,
    ) -> AssembledVLM:
        """A new VLM of a prepared encoder folder and an HF causal-LM folder, its projector
        initialised from ``seed`` (the global RNG is left as it was)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        enc_path = resolve_dir(encoder_dir, None, "encoder")
        lm_path = resolve_dir(lm_dir, None, "LM")
        encoder = load_model(enc_path, "encoder")
        if not isinstance(encoder, VisionModel):
            raise AssembledVLMError(
                f"{encoder_dir}: not a vision-encoder folder; prepare an encoder (family "
                "vision-encoder) and point the VLM at it"
            )
        lm = AutoModelForCausalLM.from_pretrained(str(lm_path), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(lm_path))
        rows = lm.get_input_embeddings().num_embeddings
        if image_token_id is None:
            image_token_id = choose_image_token(tokenizer, rows)
        if not 0 <= image_token_id < rows:
            raise AssembledVLMError(
                f"image_token_id {image_token_id} is outside the LM's {rows} embedding rows; "
                "pass an unused id below that (or none)"
            )
        kind, n_in, d_vision, grid = _probe_encoder(encoder, encoder_hook, image_size)
        d_lm = lm.get_input_embeddings().embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            proj = build_projector(
                projector, d_vision, d_lm, n_in, grid, **(projector_params or {})
            )
        bos = tokenizer.bos_token_id
        bos = bos if bos is not None else lm.config.bos_token_id
        config = {
            "format": 1,
            "encoder": {
                "dir": str(encoder_dir),
                "backend": encoder.backend,
                "hook": encoder_hook,
                "kind": kind,
                "architecture": encoder.facts.get("architecture", ""),
            },
            "lm": {"dir": str(lm_dir), "architecture": type(lm).__name__},
            "projector": {
                "name": projector,
                "params": proj.params,
                "n_in": n_in,
                "grid": list(proj.grid),
                "d_vision": d_vision,
                "d_lm": d_lm,
                "seed": seed,
            },
            "image_size": int(image_size),
            "mean": list(encoder.mean),
            "std": list(encoder.std),
            "image_token_id": int(image_token_id),
            "image_token": tokenizer.convert_ids_to_tokens(int(image_token_id)),
            "n_image_tokens": proj.n_out,
            "bos_token_id": bos,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "lora": False,
            "lora_rank": None,
        }
        return cls(encoder, encoder_hook, proj, lm, tokenizer, config)

    def enable_lora(self, rank: int, seed: int = 0) -> None:
        """Wrap the LM in a peft LoRA adapter (rank ``rank``, alpha 2*rank, peft's default
        target modules of the architecture), initialised from ``seed``."""
        try:
            from peft import LoraConfig, get_peft_model
        except ModuleNotFoundError:
            raise AssembledVLMError(
                "projectors.lora: true needs peft; pip install peft (or set lora: false)"
            ) from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none")
            self.lm = get_peft_model(self.lm, cfg)
        self.config.update(lora=True, lora_rank=int(rank))

    def _base_lm(self):
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def lm_layers(self) -> Sequence[torch.nn.Module]:
        """The LM's decoder layers (Llama / Gemma ``model.layers``, GPT-2 ``transformer.h``)."""
        decoder = self._base_lm().get_decoder()
        layers = getattr(decoder, "layers", None)
        return layers if layers is not None else decoder.h

    def train(self, mode: bool = True):
        """Only the projector (and a LoRA adapter) change mode; encoder and LM stay in eval."""
        super().train(mode)
        self.vision.eval()
        self.lm.eval()
        return self

    # ------------------------------------------------------------ hook points
    def hook_points(self) -> list[HookPoint]:
        """Encoder blocks (``vision.`` + the encoder's name) up to the configured hook, the
        projector output, the LM layers; in forward order."""
        hooks = [
            HookPoint("vision." + h.name, h.module, h.kind, f"encoder {h.description}")
            for h in self._encoder_hooks
        ]
        hooks.append(
            HookPoint(
                "projector.hook_out",
                self.projector,
                "projector",
                f"{self.projector.name} projector output ({self.n_image_tokens} tokens)",
            )
        )
        hooks += [
            HookPoint(
                store.hook_name(i, "hook_resid_post"),
                layer,
                "lm",
                f"LM decoder layer {i} output at the image-token positions",
            )
            for i, layer in enumerate(self.lm_layers())
        ]
        return hooks

    def lm_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        """BOS + image placeholders, ``[batch, 1 + n_image_tokens]`` ids and mask."""
        ids = torch.tensor(self.prefix + [self.image_token_id] * self.n_image_tokens)
        ids = ids.unsqueeze(0).expand(batch, -1).contiguous()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # ------------------------------------------------------------ forward
    def preprocess(self, images: np.ndarray) -> Float[torch.Tensor, "batch 3 size size"]:
        """uint8 [B, H, W, 3] -> normalized pixels at ``image_size`` (VisionModel's rule)."""
        return VisionModel.preprocess(self, images)

    def encode(
        self, pixels: Float[torch.Tensor, "batch 3 size size"]
    ) -> Float[torch.Tensor, "batch n_in d_vision"]:
        """Spatial tokens at the configured encoder hook (the encoder stops there)."""
        point = self._encoder_hooks[-1]
        x = _output_at(point, lambda: self._encoder_forward(self.vision, pixels))
        return tokens_of(point.kind, x)

    @torch.no_grad()
    def encode_images(
        self, images: np.ndarray, batch_size: int = 32
    ) -> Float[torch.Tensor, "n n_in d_vision"]:
        """Encoder tokens of uint8 images [N, H, W, 3], batched, without gradients."""
        param = next(self.projector.parameters())
        out = [
            self.encode(self.preprocess(images[i : i + batch_size]).to(param.device, param.dtype))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out)

    def embed(
        self,
        input_ids: Int[torch.Tensor, "batch seq"],
        image_tokens: Float[torch.Tensor, "batch n_out d_lm"],
        attention_mask: Int[torch.Tensor, "batch seq"] | None = None,
    ) -> Float[torch.Tensor, "batch seq d_lm"]:
        """The LM's input embeddings with the image placeholders replaced, in order, by
        ``image_tokens`` (each row must hold exactly n_out placeholders)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        if attention_mask is not None:
            mask &= attention_mask.bool()
        counts = mask.sum(1)
        if not bool((counts == image_tokens.shape[1]).all()):
            raise AssembledVLMError(
                f"assembled VLM: rows hold {counts.tolist()} image placeholders (id "
                f"{self.image_token_id}), expected {image_tokens.shape[1]} each; build inputs "
                "with lm_inputs() / caption_batch()"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), image_tokens.to(embeds.dtype))

    def forward_tokens(
        self,
        vision_tokens: Float[torch.Tensor, "batch n_in d_vision"],
        input_ids: Int[torch.Tensor, "batch seq"],
        attention_mask: Int[torch.Tensor, "batch seq"] | None = None,
        logits_to_keep: int | Int[torch.Tensor, " keep"] = 0,
    ) -> Float[torch.Tensor, "batch keep vocab"]:
        """Logits from precomputed encoder tokens (``logits_to_keep``: HF's, 0 = all; a 1-D
        tensor of positions keeps those)."""
        embeds = self.embed(input_ids, self.projector(vision_tokens), attention_mask)
        if self._keep_kw:
            out = self.lm(
                inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=logits_to_keep
            )
            return out.logits
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention_mask).logits
        if isinstance(logits_to_keep, int):
            return logits if logits_to_keep == 0 else logits[:, -logits_to_keep:]
        return logits[:, logits_to_keep]

    def forward(
        self,
        pixel_values: Float[torch.Tensor, "batch 3 size size"],
        input_ids: Int[torch.Tensor, "batch seq"],
        attention_mask: Int[torch.Tensor, "batch seq"] | None = None,
        logits_to_keep: int | Int[torch.Tensor, " keep"] = 0,
    ) -> Float[torch.Tensor, "batch keep vocab"]:
        """LM logits of BOS + image tokens + text (``input_ids`` from :meth:`lm_inputs` or
        :meth:`caption_batch`)."""
        tokens = self.encode(pixel_values)
        return self.forward_tokens(tokens, input_ids, attention_mask, logits_to_keep)

    # ------------------------------------------------------------ captions
    def caption_batch(
        self, captions: Sequence[str], max_tokens: int | None = None, prompt: str = ""
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` [B, T] of BOS + image + prompt +
        caption (at most ``max_tokens`` tokens) + EOS, and ``scored`` [B, T]: True at the
        caption and EOS tokens (the targets of next-token prediction)."""
        tok = self.tokenizer
        head = self.prefix + [self.image_token_id] * self.n_image_tokens
        head += tok.encode(prompt, add_special_tokens=False) if prompt else []
        eos = [] if self.config["eos_token_id"] is None else [self.config["eos_token_id"]]
        bodies = [tok.encode(c, add_special_tokens=False)[:max_tokens] + eos for c in captions]
        T = len(head) + max(len(b) for b in bodies)
        pad = self.config["pad_token_id"]
        pad = pad if pad is not None and pad != self.image_token_id else 0
        ids = torch.full((len(captions), T), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for r, body in enumerate(bodies):
            n = len(head) + len(body)
            ids[r, :n] = torch.tensor(head + body)
            mask[r, :n] = 1
            scored[r, len(head) : n] = True
        return {"input_ids": ids, "attention_mask": mask, "scored": scored, "start": len(head)}

    def token_nll(
        self,
        vision_tokens: Float[torch.Tensor, "batch n_in d_vision"],
        batch: dict[str, torch.Tensor],
    ) -> tuple[Float[torch.Tensor, "batch targets"], Bool[torch.Tensor, "batch targets"]]:
        """Next-token NLL of every position from the first caption token on, and the mask of
        those that are scored (caption + EOS, not padding); logits only where scored."""
        device = vision_tokens.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        start, T = batch["start"], ids.shape[1]
        keep = torch.arange(start - 1, T - 1, device=device)
        logits = self.forward_tokens(vision_tokens, ids, mask, logits_to_keep=keep)
        targets = ids[:, start:]
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        return nll, batch["scored"][:, start:].to(device)

    # ------------------------------------------------------------ generation
    @property
    def generation_config(self):
        return self._base_lm().generation_config

    @torch.no_grad()
    def generate(
        self,
        input_ids: Int[torch.Tensor, "batch seq"],
        attention_mask: Int[torch.Tensor, "batch seq"] | None = None,
        pixel_values: Float[torch.Tensor, "batch 3 size size"] | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> Int[torch.Tensor, "batch seq_new"]:
        """Greedy decoding with the KV cache (HF ``generate``'s output: the prompt then the new
        tokens, ``pad_token_id`` after a row's EOS; stops when every row has ended). The image
        is encoded once, in the prefill."""
        if do_sample or pixel_values is None:
            raise AssembledVLMError("assembled VLM: generate is greedy and needs pixel_values")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        eos = self.config["eos_token_id"] if eos_token_id is None else eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
        eos = eos.to(input_ids.device)
        pad = pad_token_id if pad_token_id is not None else (self.config["pad_token_id"] or 0)
        embeds = self.embed(input_ids, self.projector(self.encode(pixel_values)), mask)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        seq, done = [input_ids], torch.zeros(len(input_ids), dtype=torch.bool, device=mask.device)
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            seq.append(nxt[:, None])
            done |= torch.isin(nxt, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = self.lm(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return torch.cat(seq, dim=1)

    # ------------------------------------------------------------ save / load
    def folder_facts(self) -> dict:
        """The registry's facts of the saved folder (``FACTS_FILE``)."""
        c = self.config
        return {
            "architecture": f"assembled {c['encoder']['architecture']} -> "
            f"{c['projector']['name']} -> {c['lm']['architecture']}",
            "backend": BACKEND,
            "family": "vlm",
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "n_blocks": len(self.lm_layers()),
            "n_vision_blocks": len(self._encoder_hooks),
            "n_image_tokens": self.n_image_tokens,
            "image_token_id": self.image_token_id,
            "projector": c["projector"]["name"],
            "n_params": n_parameters(self),
            "n_projector_params": n_parameters(self.projector),
        }

    def save(self, out: str | os.PathLike) -> Path:
        """Write the folder: vlm_config.json, projector.safetensors, tokenizer, lora/, facts."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()}
        save_file(state, out / PROJECTOR_FILE)
        self.tokenizer.save_pretrained(out)
        if self.config["lora"]:
            self.lm.save_pretrained(out / LORA_DIR)
        config = json.loads(json.dumps(self.config))
        for part in ("encoder", "lm"):
            config[part]["dir"] = relative_to_folder(config[part]["dir"], out)
        (out / VLM_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        facts = json.dumps(self.folder_facts(), indent=2, sort_keys=True) + "\n"
        (out / FACTS_FILE).write_text(facts)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AssembledVLM:
        """A saved VLM (its encoder and LM folders must still exist)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / VLM_CONFIG).is_file():
            raise AssembledVLMError(f"{folder}: no {VLM_CONFIG}; not an assembled VLM folder")
        c = json.loads((folder / VLM_CONFIG).read_text())
        p = c["projector"]
        for part, key in (("encoder", "encoder"), ("lm", "LM")):
            c[part]["dir"] = str(resolve_dir(c[part]["dir"], folder, key))
        vlm = cls.from_parts(
            c["encoder"]["dir"],
            c["lm"]["dir"],
            projector=p["name"],
            encoder_hook=c["encoder"]["hook"],
            image_size=c["image_size"],
            projector_params=p["params"],
            image_token_id=c["image_token_id"],
            seed=p["seed"],
        )
        vlm.projector.load_state_dict(load_file(folder / PROJECTOR_FILE))
        if c["lora"]:
            from peft import PeftModel

            vlm.lm = PeftModel.from_pretrained(vlm.lm, str(folder / LORA_DIR))
            vlm.lm.requires_grad_(False)
        vlm.config = c
        return vlm.eval()


def _output_at(point: HookPoint, run: Callable[[], object]) -> torch.Tensor:
    """The main output of ``point``'s module during ``run()``, which stops right after it (this
    hook is attached last, so it sees the edits of hooks already attached; Capture's own
    StopForward passes through). EfficientNet's head gets its ReLU6, as Capture applies."""
    box = {}

    def grab(module, args, out):
        box["x"] = main_output(out)
        raise _EncoderDone

    handle = point.module.register_forward_hook(grab)
    try:
        run()
    except _EncoderDone:
        pass
    finally:
        handle.remove()
    if "x" not in box:
        raise AssembledVLMError(f"encoder hook {point.name!r} never fired; check encoder_hook")
    return F.relu6(box["x"]) if point.kind == "cnn_head" else box["x"]


def _hook_index(encoder: VisionModel, hook: str) -> int:
    names = encoder.hook_names()
    if hook not in names:
        raise AssembledVLMError(
            f"projectors.encoder_hook: {hook!r} is not a hook of the encoder ({encoder.backend}); "
            f"it has {', '.join(names[:3])}, ..., {names[-1]}"
        )
    return names.index(hook)


def _probe_encoder(encoder: VisionModel, hook: str, image_size: int):
    """(kind, n_tokens, d, grid) of the encoder's tokens at ``hook`` for one blank image."""
    point = encoder.hooks[_hook_index(encoder, hook)]
    with torch.no_grad():
        x = _output_at(point, lambda: encoder.forward(torch.zeros(1, 3, image_size, image_size)))
    tokens = tokens_of(point.kind, x)
    n, d = tokens.shape[1:]
    return point.kind, n, d, grid_of(point.kind, x, n)


def _forward_fn(module: AssembledVLM, pixels):
    inputs = {k: v.to(pixels.device) for k, v in module.lm_inputs(pixels.shape[0]).items()}
    return module(pixels, **inputs)


class AssembledVLMBackend(VisionBackend):
    """Assembled VLM folders (``vlm_config.json``), written by the projectors phase."""

    name = BACKEND
    families = ("vlm",)

    def claims(self, spec: ModelSpec) -> bool:
        return (Path(spec.source).expanduser() / VLM_CONFIG).is_file()

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        src = Path(spec.source).expanduser()
        if not (src / VLM_CONFIG).is_file():
            raise AssembledVLMError(
                f"model {spec.name!r}: {spec.source!r} has no {VLM_CONFIG}; train it with the "
                "projectors phase and set the source to its resources/models/<vlm> folder"
            )
        if src.resolve() != Path(out).resolve():
            for item in src.iterdir():
                if item.name in (FACTS_FILE, store.MANIFEST):
                    continue
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, Path(out) / item.name)
        facts = json.loads((src / FACTS_FILE).read_text())
        return {k: v for k, v in facts.items() if k not in ("backend", "family")}

    def build(self, model_dir: Path, facts: dict) -> dict:
        vlm = AssembledVLM.load(model_dir)
        return {
            "module": vlm,
            "hooks": vlm.hook_points(),
            "forward_fn": _forward_fn,
            "lm_inputs": vlm.lm_inputs,
            "image_token_id": vlm.image_token_id,
        }


register_backend(AssembledVLMBackend())
