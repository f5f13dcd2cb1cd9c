"""Tiny randomly initialised causal LMs of each supported architecture, built in-process."""

from __future__ import annotations

import json
from pathlib import Path

ARCHS = ("llama", "gpt2", "gpt_neox", "gemma3")
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
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

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
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")


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
