"""Extraction through TransformerBridge equals a direct HF forward pass, on tiny random models."""

import numpy as np
import pytest
import torch
from tiny_models import ARCHS
from transformers import AutoModelForCausalLM

from circuitflow import extract, models, store
from circuitflow.core import tokens


def _hf_hidden_states(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.as_tensor(ids)[None], output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


@pytest.fixture(scope="module", params=ARCHS)
def extracted(request, tiny_model_dirs, tiny_rows, tmp_path_factory):
    arch = request.param
    folder = tiny_model_dirs[arch]
    bridge = models.load_bridge(folder)
    cfg = extract.ExtractConfig(
        n_layers=bridge.cfg.n_layers,
        per_token_layers=(1,),
        batch_size=5,
        chunk_samples=16,
        store_dtype="float32",
        model_name=arch,
    )
    out = tmp_path_factory.mktemp(arch) / "acts.zarr"
    info = extract.extract_to_zarr(bridge, tiny_rows, cfg, out, progress=False)
    return arch, folder, bridge, out, info


def test_pooled_residuals_equal_hf_hidden_states(extracted, tiny_rows):
    arch, folder, bridge, out, _ = extracted
    toks = tokens.tokenize(bridge.tokenizer, tiny_rows, prepend_bos=True)
    L = bridge.cfg.n_layers
    for i in (0, 7, len(tiny_rows) - 1):
        hs = _hf_hidden_states(folder, toks[i].ids)
        span = toks[i].span
        for layer in range(L):
            for site, ref in (("hook_resid_pre", hs[layer]), ("hook_resid_post", hs[layer + 1])):
                if site == "hook_resid_post" and layer == L - 1:
                    continue  # HF's last hidden state has the final norm applied
                got = store.read_array(out, store.hook_name(layer, site))[i]
                expected = np.stack([ref[-1], ref[span].mean(0), ref[1:].mean(0)])
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=arch)


def test_per_token_rows_match_hidden_states(extracted, tiny_rows):
    arch, folder, bridge, out, info = extracted
    toks = tokens.tokenize(bridge.tokenizer, tiny_rows, prepend_bos=True)
    ds = store.open_dataset(out, group=store.TOKENS_GROUP)
    sample_index = ds["sample_index"].values
    assert len(sample_index) == sum(len(t.ids) - 1 for t in toks)  # BOS excluded
    for i in (3, 20):
        rows = np.flatnonzero(sample_index == i)
        hs = _hf_hidden_states(folder, toks[i].ids)
        np.testing.assert_allclose(
            ds["blocks.1.hook_resid_post"].values[rows], hs[2][1:], rtol=1e-4, atol=1e-4
        )
        np.testing.assert_array_equal(ds["position"].values[rows], np.arange(1, len(toks[i].ids)))
        np.testing.assert_array_equal(ds["token_id"].values[rows], toks[i].ids[1:])


def test_heads_sum_to_attention_output(extracted, tiny_rows):
    arch, folder, bridge, out, _ = extracted
    toks = tokens.tokenize(bridge.tokenizer, tiny_rows, prepend_bos=True)
    i = 5
    seen = {}
    hook = "blocks.1.attn.hook_out"
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, lambda x, hook: seen.setdefault("o", x))]):
        bridge(torch.as_tensor(toks[i].ids)[None], return_type=None)
    heads = store.read_array(out, "blocks.1.attn.hook_result")[i]  # [head, d_model]
    assert heads.shape == (bridge.cfg.n_heads, bridge.cfg.d_model)
    bias = 0.0
    b_O = getattr(bridge.blocks[1].attn, "b_O", None)
    if b_O is not None:
        bias = b_O.detach().numpy()
    np.testing.assert_allclose(heads.sum(0) + bias, seen["o"][0, -1].numpy(), rtol=1e-4, atol=1e-4)


def test_store_opens_in_xarray_with_named_dims(extracted, tiny_rows):
    arch, _, bridge, out, info = extracted
    ds = store.open_dataset(out)
    N, d = len(tiny_rows), bridge.cfg.d_model
    assert ds["blocks.0.hook_resid_pre"].dims == ("sample", "position", "d_model")
    assert ds["blocks.0.hook_resid_pre"].shape == (N, 3, d)
    assert ds["blocks.2.attn.hook_result"].dims == ("sample", "head", "d_model")
    assert list(ds["position"].values) == list(store.POSITIONS)
    assert list(ds["sample"].values) == [r["sample_id"] for r in tiny_rows]
    assert list(ds["label"].values) == [r["label"] for r in tiny_rows]
    assert info["n_samples"] == N


def test_batching_and_reruns_give_identical_bytes(tiny_model_dirs, tiny_rows, tmp_path):
    bridge = models.load_bridge(tiny_model_dirs["llama"])
    paths = []
    for batch_size, name in ((4, "a"), (4, "b"), (1, "c")):
        cfg = extract.ExtractConfig(
            n_layers=3, batch_size=batch_size, chunk_samples=8, model_name="llama"
        )
        paths.append(tmp_path / f"{name}.zarr")
        extract.extract_to_zarr(bridge, tiny_rows, cfg, paths[-1], progress=False)
    a, b, c = (store.read_array(p, "blocks.2.hook_resid_post") for p in paths)
    chunk_files = sorted(q.relative_to(paths[0]) for q in paths[0].rglob("*") if q.is_file())
    for rel in chunk_files:
        assert (paths[0] / rel).read_bytes() == (paths[1] / rel).read_bytes(), rel
    # padding never leaks into real tokens: batch of 1 == batch of 4 up to float16 rounding
    np.testing.assert_allclose(a, c, rtol=2e-3, atol=2e-3)


def test_layer_subset_stops_early_and_matches_full(tiny_model_dirs, tiny_rows, tmp_path):
    bridge = models.load_bridge(tiny_model_dirs["gemma3"])
    cfg = extract.ExtractConfig(
        n_layers=3, layers=(0,), head_layers=(), store_dtype="float32", model_name="g"
    )
    assert cfg.hooks() == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    extract.extract_to_zarr(bridge, tiny_rows, cfg, tmp_path / "sub.zarr", progress=False)
    full = extract.ExtractConfig(n_layers=3, store_dtype="float32", model_name="g")
    extract.extract_to_zarr(bridge, tiny_rows, full, tmp_path / "full.zarr", progress=False)
    assert store.activation_hooks(tmp_path / "sub.zarr") == cfg.hooks()
    np.testing.assert_array_equal(
        store.read_array(tmp_path / "sub.zarr", "blocks.0.hook_resid_post"),
        store.read_array(tmp_path / "full.zarr", "blocks.0.hook_resid_post"),
    )


def test_config_errors_name_the_key():
    with pytest.raises(
        ValueError,
        match=r"^extract.layers: layer 5 out of range for model 'm' with 3 layers \(0..2\)$",
    ):
        extract.ExtractConfig(n_layers=3, layers=(5,), model_name="m")
    with pytest.raises(ValueError, match=r"^extract.sites: unknown site 'hook_mlp_out'"):
        extract.ExtractConfig(n_layers=3, sites=("hook_mlp_out",))


def test_nan_activations_fail_with_model_and_hook(tiny_model_dirs, tiny_rows, tmp_path):
    bridge = models.load_bridge(tiny_model_dirs["llama"])
    with torch.no_grad():
        bridge.original_model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    cfg = extract.ExtractConfig(n_layers=3, model_name="broken")
    with pytest.raises(
        extract.ExtractionError,
        match=r"^model 'broken': NaN/inf activations at blocks\.1\.hook_resid_post",
    ):
        extract.extract_to_zarr(bridge, tiny_rows, cfg, tmp_path / "x.zarr", progress=False)


def test_float16_overflow_is_reported():
    cfg = extract.ExtractConfig(n_layers=1, model_name="big")
    with pytest.raises(
        extract.ExtractionError, match="overflows float16; set extract.store_dtype: float32"
    ):
        extract.text._check_finite("blocks.0.hook_resid_post", np.array([1e6], np.float32), cfg)


KILL_AFTER_BATCHES = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_rows
from circuitflow import extract, models
from circuitflow.extract import text

calls = []
run = text._Recorder.run
def run_then_die(self, batch):
    if len(calls) == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(len(batch))
    return run(self, batch)
text._Recorder.run = run_then_die
rows = tiny_rows.__wrapped__()
bridge = models.load_bridge({model!r})
extract.extract_to_zarr(bridge, rows, text.ExtractConfig(**{cfg!r}), {out!r}, progress=False,
                        work_dir={work!r})
"""


def test_a_killed_extraction_resumes_and_gives_the_same_store(tiny_model_dirs, tiny_rows, tmp_path):
    """kill -9 halfway; the rerun computes only the unfinished chunks; the store is identical
    file by file to an uninterrupted run's."""
    import json
    import subprocess
    import sys

    from conftest import TESTS

    settings = dict(
        n_layers=3,
        per_token_layers=(1,),
        batch_size=4,
        chunk_samples=8,
        store_dtype="float32",
        model_name="llama",
    )
    cfg = extract.ExtractConfig(**settings)
    n_batches = sum(-(-min(8, len(tiny_rows) - c0) // 4) for c0 in range(0, len(tiny_rows), 8))
    assert len(tiny_rows) > 16 and n_batches >= 6
    work, out = tmp_path / "work", tmp_path / "resumed.zarr"
    script = KILL_AFTER_BATCHES.format(
        tests=str(TESTS),
        kill_after=5,  # two chunks of two batches finished, the third chunk half done
        model=str(tiny_model_dirs["llama"]),
        cfg=settings,
        out=str(out),
        work=str(work),
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    assert json.loads((work / "progress.json").read_text())["done"] == [0, 8]

    bridge = models.load_bridge(tiny_model_dirs["llama"])
    calls = []
    run = extract.text._Recorder.run

    def counted(self, batch):
        calls.append(len(batch))
        return run(self, batch)

    extract.text._Recorder.run = counted
    try:
        extract.extract_to_zarr(bridge, tiny_rows, cfg, out, progress=False, work_dir=work)
    finally:
        extract.text._Recorder.run = run
    assert len(calls) == n_batches - 4  # the two finished chunks were not recomputed
    assert sum(calls) == len(tiny_rows) - 16
    assert not work.exists()

    whole = tmp_path / "whole.zarr"
    extract.extract_to_zarr(bridge, tiny_rows, cfg, whole, progress=False)
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        assert (whole / rel).read_bytes() == (out / rel).read_bytes(), rel
