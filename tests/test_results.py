"""circuitflow.open_results: a small results tree written with the real store functions and a
tiny SAE saved as the sae phase saves one, read back as pandas, xarray and SAELens objects."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import circuitflow
from circuitflow import sae, store
from circuitflow.results import MissingResultError, ResultsNotFoundError
from circuitflow.workflow import schema_defaults

HOOK = "blocks.1.hook_resid_post"
D_IN = 8


def _coords(n: int) -> dict:
    return {
        "sample": np.array([f"s{i}" for i in range(n)]),
        "label": np.array(["anger", "neutral"] * (n // 2)),
        "split": np.array(["train", "test"] * (n // 2)),
        "frame_id": np.array([f"f{i // 2}" for i in range(n)]),
    }


def _activations(path: Path, values: np.ndarray, tokens: np.ndarray | None) -> None:
    """An activation store: one sample-level hook array, optionally a per-token group."""
    coords = _coords(len(values))
    ds = xr.Dataset(
        {HOOK: (("sample", "position", "d_model"), values)},
        coords={
            "sample": coords["sample"],
            "position": list(store.POSITIONS),
            **{k: ("sample", coords[k]) for k in store.SAMPLE_COORDS},
        },
    )
    store.write_dataset(path, ds)
    if tokens is not None:
        group = xr.Dataset(
            {
                HOOK: (("token", "d_model"), tokens),
                "sample_index": ("token", np.arange(len(tokens)) % len(values)),
            }
        )
        group.to_zarr(path, group=store.TOKENS_GROUP, mode="a", zarr_format=3, consolidated=False)
    store.write_manifest(path, kind="activations", params={"hooks": [HOOK]})


def _sae(out: Path, x: np.ndarray) -> sae.SAE:
    """A tiny topk SAE trained and saved as rule train_sae saves one (weights, cfg.json,
    metrics.json, manifest)."""
    training = {k: v for k, v in schema_defaults("sae").items() if k not in sae.WORKFLOW_KEYS}
    training.update(expansion_factor=2, k=2, batch_size=16, n_epochs=2, seed=0)
    cfg = sae.SAETrainConfig(d_in=D_IN, architecture="topk", **training)
    model = sae.train_sae(x, cfg)
    sae.save_sae(model, out, metadata={"hook_name": HOOK, "model_name": "tiny-lm"})
    (out / sae.METRICS_FILE).write_text(json.dumps({"held_out": {"l0": 2.0}}) + "\n")
    store.write_manifest(out, kind="sae", params={"hook": HOOK, "architecture": "topk"})
    return model


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/ with an effect table, two activation stores (one with per-token
    activations, one of a model named with a slash), a vectors store and an SAE."""
    root = tmp_path_factory.mktemp("wf") / "results"
    rng = np.random.default_rng(0)
    stats = root / "stats"
    stats.mkdir(parents=True)
    effects = pd.DataFrame(
        {
            "phase": ["vectors", "sae"],
            "model": ["tiny-lm", "tiny-lm"],
            "metric": ["projection_on_mean_diff", "feature_auroc"],
            "estimate": [1.25, 0.5],
            "p_fdr_bh": [0.01, 0.2],
        }
    )
    effects.to_csv(stats / "effect_sizes.csv", index=False)
    store.write_manifest(stats / "effect_sizes.csv", kind="effect_sizes")
    acts = rng.normal(size=(4, 3, D_IN)).astype(np.float32)
    tokens = rng.normal(size=(64, D_IN)).astype(np.float32)
    _activations(root / "activations/emotion/tiny-lm.zarr", acts, tokens)
    _activations(root / "activations/emotion/org_big-lm.zarr", acts + 1, None)
    coords = _coords(4)
    direction = rng.normal(size=(1, 3, 1, D_IN))
    vectors = store.vectors_dataset(
        [HOOK],
        ["anger"],
        coords,
        {"direction": (["hook", "position", "condition", "d_model"], direction)},
        {},
    )
    store.write_dataset(root / "vectors/emotion/tiny-lm.zarr", vectors)
    store.write_manifest(root / "vectors/emotion/tiny-lm.zarr", kind="vectors")
    out = root / "sae/emotion/tiny-lm" / HOOK / "topk"
    torch.set_num_threads(1)
    model = _sae(out, tokens)
    return {"root": root, "acts": acts, "tokens": tokens, "direction": direction, "sae": model}


def test_open_results_reads_every_kind(tree):
    res = circuitflow.open_results(tree["root"])
    assert res.effects["estimate"].tolist() == [1.25, 0.5]
    assert res.effects["metric"].tolist() == ["projection_on_mean_diff", "feature_auroc"]
    assert res.table("results/stats/effect_sizes.csv").equals(res.effects)

    assert sorted(res.activations) == [("emotion", "org_big-lm"), ("emotion", "tiny-lm")]
    ds = res.activations["emotion", "tiny-lm"]
    np.testing.assert_array_equal(ds[HOOK].values, tree["acts"])
    assert ds[HOOK].dims == ("sample", "position", "d_model")
    assert ds["label"].values.tolist() == ["anger", "neutral", "anger", "neutral"]
    assert store.MANIFEST_ATTR not in ds.attrs
    assert res.activations["emotion", "tiny-lm"] is ds  # opened once
    big = res.activations["emotion", "org/big-lm"]  # the model's name, as in config
    np.testing.assert_array_equal(big[HOOK].values, tree["acts"] + 1)

    assert list(res.tokens) == [("emotion", "tiny-lm")]
    np.testing.assert_array_equal(res.tokens["emotion", "tiny-lm"][HOOK].values, tree["tokens"])

    vec = res.vectors["emotion", "tiny-lm"]
    np.testing.assert_allclose(vec["direction"].values, tree["direction"].astype(np.float32))
    assert vec["direction"].sel(hook=HOOK, position="last", condition="anger").shape == (D_IN,)

    assert list(res.saes) == [("emotion", "tiny-lm", HOOK, "topk")]
    from sae_lens import SAE

    loaded = res.saes["emotion", "tiny-lm", HOOK, "topk"]
    assert isinstance(loaded, SAE)
    assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.k) == (D_IN, 2 * D_IN, 2)
    assert loaded.cfg.metadata.hook_name == HOOK
    x = torch.as_tensor(tree["tokens"][:16])
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded.encode(x).numpy(), tree["sae"].encode(x).numpy(), rtol=1e-5, atol=1e-6
        )
    assert res.manifest("sae/emotion/tiny-lm/" + HOOK + "/topk")["kind"] == "sae"
    assert "activation store: 2" in repr(res)


def test_missing_results_name_the_path_and_the_command(tree, tmp_path):
    with pytest.raises(ResultsNotFoundError) as err:
        circuitflow.open_results(tmp_path / "nothing")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'nothing'}: no results folder")
    assert "snakemake --cores all results/stats/effect_sizes.csv" in message

    (tmp_path / "results").mkdir()
    empty = circuitflow.open_results(tmp_path / "results")  # nothing is read yet
    with pytest.raises(ResultsNotFoundError) as err:
        _ = empty.effects
    assert str(err.value) == (
        f"{tmp_path / 'results/stats/effect_sizes.csv'}: no such table; make it with "
        "`snakemake --cores all results/stats/effect_sizes.csv`"
    )
    assert len(empty.activations) == 0 and len(empty.saes) == 0

    res = circuitflow.open_results(tree["root"])
    assert ("emotion", "nope") not in res.activations
    assert res.vectors.get(("emotion", "nope")) is None
    with pytest.raises(MissingResultError) as err:
        res.activations["emotion", "nope"]
    assert str(err.value) == (
        f"{tree['root'] / 'activations/emotion/nope.zarr'}: no activation store; make it with "
        "`snakemake --cores all results/activations/emotion/nope.zarr` "
        "(have: emotion/org_big-lm, emotion/tiny-lm)"
    )
    with pytest.raises(MissingResultError, match="keys are \\(dataset, model, hook, architecture"):
        res.saes["emotion", "tiny-lm"]


def test_loading_is_lazy(tree, tmp_path):
    """Listing a tree opens nothing: a broken SAE fails only when it is loaded; a store made
    after the listing is found."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(tree["root"], root)
    cfg = root / "sae/emotion/tiny-lm" / HOOK / "topk" / sae.CFG_FILE
    cfg.write_text("{not json")
    res = circuitflow.open_results(root)
    assert list(res.saes) == [("emotion", "tiny-lm", HOOK, "topk")]
    assert res.saes.path(("emotion", "tiny-lm", HOOK, "topk")) == cfg.parent
    assert res.effects["estimate"].tolist() == [1.25, 0.5]
    with pytest.raises(json.JSONDecodeError):
        res.saes["emotion", "tiny-lm", HOOK, "topk"]
    assert len(res.activations) == 2
    late = root / "activations/emotion/late-lm.zarr"
    _activations(late, tree["acts"] * 2, None)  # made after the listing
    np.testing.assert_array_equal(res.activations["emotion", "late-lm"][HOOK], tree["acts"] * 2)
