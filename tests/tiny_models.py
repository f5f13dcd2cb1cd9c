"""Tiny randomly initialised models of each supported family, built in-process: causal LMs
(Llama, GPT-2, GPT-NeoX, Gemma-3, Qwen3), vision encoders (open_clip, HF CLIP) and VLMs (LLaVA-1.5
/ NeXT / OneVision, BLIP-2, InstructBLIP, Qwen2-VL, Qwen2.5-VL, Idefics)."""

from __future__ import annotations

import json
from pathlib import Path

ARCHS = ("llama", "gpt2", "gpt_neox", "gemma3")  # the parametrized unit tests run these
EXTRA_ARCHS = ("qwen3",)  # build_config knows these too
DATA = Path(__file__).parent / "data"


def corpus() -> list[str]:
    texts = [json.loads(line)["text"] for line in open(DATA / "prompts.jsonl")]
    for line in open(DATA / "frames.jsonl"):
        frame = json.loads(line)
        texts += [frame["template"].replace("{phrase}", p) for p in frame["phrases"].values()]
    return texts


def build_tokenizer(vocab_size: int = 400, extra_special: tuple[str, ...] = ()):
    """Byte-level BPE trained on the test corpus, with <bos>/<pad>/<eos> (and
    ``extra_special`` tokens, e.g. an image placeholder) and offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    if extra_special:
        out.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return out


def build_config(arch: str, vocab_size: int):
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen3Config

    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=256,
            sliding_window=16,
            **common,
        )
    if arch == "qwen3":  # q/k RMSNorm per head, GQA, untied head
        return Qwen3Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS + EXTRA_ARCHS}")


def build_model_folder(
    arch: str, out: Path, seed: int = 0, extra_special: tuple[str, ...] = ()
) -> Path:
    """Save a tiny random model + tokenizer as an HF folder (float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(extra_special=extra_special)
    config = build_config(arch, len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_gemma3_multimodal_folder(out: Path, seed: int = 0) -> Path:
    """A tiny random Gemma3ForConditionalGeneration (the layout of ``google/gemma-3-12b-it``):
    the tiny Gemma-3 text config with a 2-layer SigLIP tower, 4 tokens per image."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    tokenizer = build_tokenizer(extra_special=("<image>",))
    text = build_config("gemma3", len(tokenizer))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
    cfg = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4, image_token_index=len(tokenizer) - 1)  # fmt: skip
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    Gemma3ForConditionalGeneration(cfg).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_clip_folder(out: Path, vocab_size: int = 64, seed: int = 0) -> Path:
    """Save a tiny random open_clip ViT (3 blocks, width 32, 32 px, 8 px patches) as a local
    open_clip folder (open_clip_config.json + safetensors). ``vocab_size`` 49408 gives the
    text tower open_clip's full BPE vocabulary, so real prompts can be embedded."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 3,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 8,
            "vocab_size": vocab_size,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    model = open_clip.CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    return out


def build_llava_folder(out: Path, seed: int = 0) -> Path:
    """Save a tiny random LLaVA (2-block CLIP vision tower of width 32, 2-block Llama of width
    48, image token 100) as an HF folder."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            bos_token_id=1,
        ),
        image_token_id=100,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    out.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    return out


# ---------------------------------------------------------------- hf vision families
TINY_VISION = {  # a 2-layer ViT of width 32 over 32 px images in 8 px patches
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TINY_LM = {  # a 2-layer Llama of width 48 (GQA) over a 128-token vocabulary
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
IMAGE_TOKEN_ID = 100


def _save(model, out: Path, preprocess: bool = True) -> Path:
    """Save ``model`` (+ a preprocessor_config.json with mean 0.5 / std 0.25) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    if preprocess:
        (out / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
        )
    return out


def build_hf_clip_folder(out: Path, seed: int = 0, full: bool = False) -> Path:
    """A tiny random transformers CLIP (``CLIPVisionModel``, or with ``full`` a ``CLIPModel``
    with a 1-layer text tower) as an HF folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**TINY_VISION)
    if not full:
        return _save(CLIPVisionModel(vision), out)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 16,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip
    cfg = CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=16)
    return _save(CLIPModel(cfg), out)


def build_llava_next_folder(out: Path, seed: int = 0, onevision: bool = False) -> Path:
    """A tiny random LLaVA-NeXT (CLIP tower) or LLaVA-OneVision (SigLIP tower, all tokens) on
    32 px tiles, a 64 px anyres grid (2 x 2 tiles + the base tile), the tiny Llama."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    cls, model = (
        (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration)
        if onevision
        else (LlavaNextConfig, LlavaNextForConditionalGeneration)
    )
    vision = (SiglipVisionConfig if onevision else CLIPVisionConfig)(**TINY_VISION)
    cfg = cls(
        vision_config=vision,
        text_config=LlamaConfig(**TINY_LM),
        image_token_id=IMAGE_TOKEN_ID,
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default" if not onevision else "full",
    )
    return _save(model(cfg), out)


def build_blip2_folder(out: Path, seed: int = 0, instruct: bool = False, lm: str = "opt") -> Path:
    """A tiny random BLIP-2 (or InstructBLIP): the tiny ViT, a 2-layer Q-Former of width 32
    with 4 query tokens and cross-attention in every layer (InstructBLIP: every second), and
    a 2-layer OPT or Llama (``lm="llama"``: MiniGPT-4's shape, a linear layer into Vicuna)."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
        OPTConfig,
    )

    torch.manual_seed(seed)
    qformer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "encoder_hidden_size": 32, "vocab_size": 64,
               "cross_attention_frequency": 2 if instruct else 1}  # fmt: skip
    vision = {**TINY_VISION, "initializer_range": 0.02}  # the default 1e-10 silences the image
    if lm == "opt":
        text = OPTConfig(
            hidden_size=48, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=128, word_embed_proj_dim=48, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, max_position_embeddings=64,
        )  # fmt: skip
    else:
        text = LlamaConfig(**TINY_LM)
    if instruct:
        cfg = InstructBlipConfig(
            vision_config=InstructBlipVisionConfig(**vision).to_dict(),
            qformer_config=InstructBlipQFormerConfig(**qformer).to_dict(),
            text_config=text.to_dict(),
            num_query_tokens=4,
            image_token_id=IMAGE_TOKEN_ID,
        )
        return _save(InstructBlipForConditionalGeneration(cfg), out)
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(**vision).to_dict(),
        qformer_config=Blip2QFormerConfig(**qformer).to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_id=IMAGE_TOKEN_ID,
    )
    return _save(Blip2ForConditionalGeneration(cfg), out)


def build_qwen2vl_folder(out: Path, seed: int = 0, v25: bool = False) -> Path:
    """A tiny random Qwen2-VL (or Qwen2.5-VL, window attention over 4 x 4 patch windows in
    block 0, full attention in block 1): 2 vision blocks of width 32 on 2 px patches, 2 x 2
    merge, a 2-layer Qwen2 LM of width 48 with M-RoPE sections (2, 2, 2)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    torch.manual_seed(seed)
    text = {**TINY_LM, "vocab_size": 160, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [2, 2, 2]}}  # fmt: skip
    vision = {"depth": 2, "num_heads": 2, "patch_size": 2, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "in_channels": 3}  # fmt: skip
    tokens = {"image_token_id": 150, "vision_start_token_id": 151, "vision_end_token_id": 152}
    if v25:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=48, window_size=8,
                      fullatt_block_indexes=[1])  # fmt: skip
        cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **tokens)
        return _save(Qwen2_5_VLForConditionalGeneration(cfg), out)
    vision.update(embed_dim=32, hidden_size=48, mlp_ratio=2)
    cfg = Qwen2VLConfig(vision_config=vision, text_config=text, **tokens)
    return _save(Qwen2VLForConditionalGeneration(cfg), out)


def build_idefics_folder(out: Path, seed: int = 0) -> Path:
    """A tiny random Idefics (Flamingo-style): the tiny ViT, a 2-block perceiver resampler to
    4 latents, a 2-layer LM of width 48 with gated cross-attention before every layer (gates
    opened: alpha initialised to ones), ids 126 / 127 for the fake and image tokens."""
    import torch
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    torch.manual_seed(seed)
    vision = {"embed_dim": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
    perceiver = {"use_resampler": True, "resampler_n_latents": 4, "resampler_depth": 2,
                 "resampler_n_heads": 2, "resampler_head_dim": 16}  # fmt: skip
    cfg = IdeficsConfig(
        vocab_size=126, additional_vocab_size=2, hidden_size=48, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, cross_layer_interval=1,
        alpha_initializer="ones", use_resampler=True, vision_config=vision,
        perceiver_config=perceiver, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return _save(IdeficsForVisionText2Text(cfg), out)
