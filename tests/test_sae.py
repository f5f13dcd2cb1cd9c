"""circuitflow.sae: dictionary recovery, SAELens round trip, determinism, CE-loss recovered."""

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from circuitflow import models, sae, stats
from circuitflow.core import tokens
from circuitflow.core.errors import CircuitflowError
from circuitflow.workflow import config_schema, schema_defaults

D_IN = 32
N_ATOMS = 48


def _schema_sae() -> dict:
    """The schema's ``sae`` properties (name -> JSON-schema entry)."""
    return config_schema()["properties"]["sae"]["properties"]


def _section(**kw) -> dict:
    """The ``sae`` config section as validation leaves it: schema defaults, then ``kw``."""
    return {**schema_defaults("sae"), **kw}


def _config(d_in, architecture, seed=0, **kw) -> sae.SAETrainConfig:
    """SAETrainConfig with the workflow defaults (the schema's) except ``kw``."""
    training = {k: v for k, v in _section().items() if k not in sae.WORKFLOW_KEYS}
    return sae.SAETrainConfig(d_in=d_in, architecture=architecture, seed=seed, **{**training, **kw})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread is faster and immune to OpenMP stalls on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synthetic():
    """x = codes @ atoms + offset: 48 unit-norm atoms in 32 dims, 3 active per token with
    nonnegative magnitudes in [1, 3]; returns (x float32 [n, 32], atoms [48, 32])."""
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(N_ATOMS, D_IN))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    n = 12000
    codes = np.zeros((n, N_ATOMS))
    active = np.argsort(rng.random((n, N_ATOMS)), axis=1)[:, :3]
    np.put_along_axis(codes, active, rng.uniform(1, 3, size=(n, 3)), axis=1)
    offset = rng.normal(size=D_IN)
    x = codes @ atoms + offset + 0.01 * rng.normal(size=(n, D_IN))
    return x.astype(np.float32), atoms


def _cfg(architecture, **kw):
    settings = dict(
        expansion_factor=4, k=3, l1_coefficient=1.0, lr=3e-3, batch_size=256, n_epochs=8, seed=0
    )
    settings.update(kw)
    return _config(D_IN, architecture, **settings)


@pytest.fixture(scope="module")
def trained(synthetic):
    x, _ = synthetic
    return {arch: sae.train_sae(x, _cfg(arch)) for arch in sae.ARCHITECTURES}


def _recovered(W_dec: torch.Tensor, atoms: np.ndarray) -> float:
    cos = atoms @ W_dec.numpy().T  # rows of both are unit norm
    return float((cos.max(axis=1) > 0.9).mean())


def test_topk_recovers_dictionary(trained, synthetic):
    x, atoms = synthetic
    model = trained["topk"]
    np.testing.assert_allclose(model.W_dec.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    assert _recovered(model.W_dec, atoms) >= 0.8
    metrics = sae.reconstruction_metrics(model, x[:2000])
    assert metrics.l0 <= 3.0 + 1e-9
    assert metrics.explained_variance > 0.9


def test_standard_explains_variance(trained, synthetic):
    x, atoms = synthetic
    model = trained["standard"]
    metrics = sae.reconstruction_metrics(model, x[:2000])
    assert metrics.explained_variance > 0.85, metrics
    assert 1 < metrics.l0 < 40
    assert _recovered(model.W_dec, atoms) >= 0.5


@pytest.mark.parametrize("architecture", sae.ARCHITECTURES)
def test_hand_written_gradients_equal_autograd(architecture):
    gen = torch.Generator().manual_seed(0)
    B, d, m, k, l1 = 64, 12, 40, 5, 0.7
    x = torch.randn(B, d, generator=gen, dtype=torch.float64)
    params = [
        torch.randn(m, d, generator=gen, dtype=torch.float64) / 3,  # W_encT
        torch.randn(m, generator=gen, dtype=torch.float64) / 3,  # b_enc
        torch.randn(m, d, generator=gen, dtype=torch.float64),  # W_dec
        torch.randn(d, generator=gen, dtype=torch.float64),  # b_dec
    ]
    loss, _, grads = sae.get_sae_class(architecture).grads(
        x, params, SimpleNamespace(l1_coefficient=l1, k=k)
    )
    leaves = [p.clone().requires_grad_(True) for p in params]
    W_encT, b_enc, W_dec, b_dec = leaves
    pre = (x - b_dec) @ W_encT.T + b_enc
    if architecture == "standard":
        f = pre.relu()
    else:
        vals, idx = pre.topk(k, dim=1)
        f = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    x_hat = f @ W_dec + b_dec
    ref = (x_hat - x).pow(2).sum(1).mean()
    if architecture == "standard":
        ref = ref + l1 * f.sum(1).mean()
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12)


def test_metrics_definitions(trained, synthetic):
    x, _ = synthetic
    model = trained["topk"]
    xt = torch.as_tensor(x[:500])
    f = model.encode(xt)
    x_hat = model.decode(f)
    m = sae.reconstruction_metrics(model, x[:500], chunk=128)
    xd, hd = xt.double(), x_hat.double()
    ev = 1 - (xd - hd).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()
    assert m.explained_variance == pytest.approx(float(ev), rel=1e-6)
    assert m.mse == pytest.approx(float((xd - hd).pow(2).mean()), rel=1e-6)
    assert m.l0 == pytest.approx(float((f > 0).sum(1).double().mean()))
    assert m.n_dead == int(((f > 0).sum(0) == 0).sum())
    assert m.dead_fraction == m.n_dead / model.cfg.d_sae


@pytest.mark.parametrize("architecture", sae.ARCHITECTURES)
def test_sae_lens_loads_ours(architecture, trained, synthetic, tmp_path):
    from sae_lens import SAE

    x, _ = synthetic
    model = trained[architecture]
    sae.save_sae(model, tmp_path, metadata={"hook_name": "blocks.1.hook_resid_post"})
    cfg = json.loads((tmp_path / sae.CFG_FILE).read_text())
    assert cfg["architecture"] == architecture
    assert (cfg["d_in"], cfg["d_sae"]) == (D_IN, 4 * D_IN)
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert (architecture == "topk") == ("k" in cfg)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.architecture() == architecture
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    xt = torch.as_tensor(x[:1000])
    with torch.no_grad():
        theirs = loaded.encode(xt)
        np.testing.assert_allclose(theirs.numpy(), model.encode(xt).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            loaded.decode(theirs).numpy(), model.reconstruct(xt).numpy(), rtol=1e-5, atol=1e-4
        )
    back = sae.load_sae(tmp_path)
    torch.testing.assert_close(back.encode(xt), model.encode(xt))


def test_same_seed_same_bytes(synthetic, tmp_path):
    x, _ = synthetic
    for architecture in sae.ARCHITECTURES:
        cfg = _cfg(architecture, n_epochs=2)
        digests = []
        for run in range(2):
            out = tmp_path / f"{architecture}{run}"
            sae.save_sae(sae.train_sae(x, cfg), out, metadata={})
            digests.append(
                ((out / sae.WEIGHTS_FILE).read_bytes(), (out / sae.CFG_FILE).read_text())
            )
        assert digests[0] == digests[1], architecture
        other = sae.train_sae(x, _cfg(architecture, n_epochs=2, seed=1))
        assert not torch.equal(other.W_dec, sae.load_sae(tmp_path / f"{architecture}0").W_dec)


def test_batches_mix_samples():
    """Rows sorted by sample (as the store holds them): every batch draws from many samples,
    each epoch uses every row once, training_tokens overrides n_epochs."""
    sample_of_row = np.repeat(np.arange(100), 20)  # 100 samples x 20 tokens, in order
    cfg = _config(4, "standard", batch_size=300, n_epochs=3, seed=5)
    batches = list(sae.batch_indices(len(sample_of_row), cfg))
    assert len(batches) == cfg.n_steps(2000) == 20  # ceil(3 * 2000 / 300)
    assert all(len(b) == 300 for b in batches)  # full batches across epoch boundaries
    for b in batches:
        assert len(np.unique(sample_of_row[b.numpy()])) > 70  # sequence order would give 15
    stream = np.concatenate([b.numpy() for b in batches])
    for epoch in range(3):
        np.testing.assert_array_equal(
            np.sort(stream[epoch * 2000 : (epoch + 1) * 2000]), np.arange(2000)
        )
    again = list(sae.batch_indices(2000, cfg))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    by_tokens = _config(4, "standard", batch_size=4, training_tokens=10)
    assert by_tokens.n_steps(1000) == 3


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"architecture": "gated"},
            "sae.architectures: 'gated' is invalid; expected one of standard, topk",
        ),
        (
            {"architecture": "topk", "k": 0},
            "sae.k: 0 is invalid; expected an integer in 1..d_sae=32 (expansion_factor * d_in)",
        ),
        (
            {"architecture": "topk", "k": 33},
            "sae.k: 33 is invalid; expected an integer in 1..d_sae=32 (expansion_factor * d_in)",
        ),
        ({"batch_size": 0}, "sae.batch_size: 0 is invalid; expected an integer >= 1"),
        ({"n_epochs": 1.5}, "sae.n_epochs: 1.5 is invalid; expected an integer >= 1"),
        (
            {"training_tokens": -5},
            "sae.training_tokens: -5 is invalid; expected an integer >= 1 or null",
        ),
        ({"lr": 0}, "sae.lr: 0 is invalid; expected a number > 0"),
        (
            {"l1_coefficient": -1.0},
            "sae.l1_coefficient: -1.0 is invalid; expected a finite number >= 0",
        ),
        (
            {"normalize_activations": "layer_norm"},
            "sae.normalize_activations: 'layer_norm' is invalid; expected one of none, "
            "expected_average_only_in, expected_average_centered",
        ),
        (
            {"b_dec_init": "median"},
            "sae.b_dec_init: 'median' is invalid; expected one of geometric_median, mean, zeros",
        ),
    ],
)
def test_config_errors_name_the_key(kwargs, message):
    settings = {"architecture": "topk", "expansion_factor": 4, **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as err:
        _config(8, **settings)
    assert isinstance(err.value, CircuitflowError)


def test_config_from_section_drops_workflow_keys():
    section = _section(architectures=["topk"], ce_loss_prompts=8, k=4, lr=1e-3)
    cfg = sae.SAETrainConfig.from_config(section, d_in=16, architecture="topk", seed=3)
    assert (cfg.d_sae, cfg.k, cfg.lr, cfg.seed) == (64, 4, 1e-3, 3)
    assert cfg.normalize_activations == _schema_sae()["normalize_activations"]["default"]
    with pytest.raises(TypeError):
        sae.SAETrainConfig.from_config(_section(bogus=1), d_in=16, architecture="topk", seed=0)
    incomplete = {"k": 4, "lr": 1e-3}
    with pytest.raises(ValueError, match=r"^sae\.expansion_factor: missing .*set_default=True\)$"):
        sae.SAETrainConfig.from_config(incomplete, d_in=16, architecture="topk", seed=0)


def test_defaults_live_in_the_schema():
    """Every training setting with a config key has no dataclass default; the schema's
    architecture enum is the registry."""
    schema = _schema_sae()
    fields = {f.name: f for f in dataclasses.fields(sae.SAETrainConfig)}
    backed = [key for key in schema if key in fields] + ["architecture", "seed"]
    assert len(backed) == 12
    for key in backed:
        assert fields[key].default is dataclasses.MISSING, key
        assert fields[key].default_factory is dataclasses.MISSING, key
    assert set(schema) - set(fields) == set(sae.WORKFLOW_KEYS)
    assert tuple(schema["architectures"]["items"]["enum"]) == sae.ARCHITECTURES
    assert sae.ARCHITECTURES == sae.architecture_names() == ("standard", "topk")
    assert schema["normalize_activations"]["enum"] == list(sae.NORMALIZATIONS)
    assert schema["b_dec_init"]["enum"] == list(sae.B_DEC_INITS)


class _CappedReLU(sae.SAEArchitecture):
    """A toy architecture, as a contributor would add one: ReLU features capped at 6."""

    encoder_init_scale = 0.1

    @staticmethod
    def activate(pre, cfg):
        return pre.clamp_(0, 6)

    @staticmethod
    def grads(x, params, cfg):  # the standard step (ignores the cap): enough for a test
        return sae.get_sae_class("standard").grads(x, params, cfg)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the architecture registry for one test."""
    monkeypatch.setattr(sae.base, "_REGISTRY", dict(sae.base._REGISTRY))


def test_an_architecture_is_one_registered_class(registry, synthetic, tmp_path):
    x, _ = synthetic
    sae.register_sae_class("capped_relu", _CappedReLU)
    assert sae.architecture_names() == ("standard", "topk", "capped_relu")
    cfg = _cfg("capped_relu", n_epochs=1)
    model = sae.train_sae(x, cfg)
    assert float(model.encode(x[:200]).max()) <= 6
    sae.save_sae(model, tmp_path, metadata={})
    saved = json.loads((tmp_path / sae.CFG_FILE).read_text())
    assert saved["architecture"] == "capped_relu" and "k" not in saved
    assert saved["metadata"]["training_architecture_details"] == {}
    back = sae.load_sae(tmp_path)
    assert back.cfg == cfg  # the training config comes back from metadata.training
    torch.testing.assert_close(back.encode(x[:200]), model.encode(x[:200]))


def test_register_sae_class_errors(registry):
    class NoStep(sae.SAEArchitecture):
        @staticmethod
        def activate(pre, cfg):
            return pre

    with pytest.raises(TypeError, match="NoStep must define grads"):
        sae.register_sae_class("nostep", NoStep)
    with pytest.raises(ValueError, match="'topk' is already TopKSAE"):
        sae.register_sae_class("topk", _CappedReLU)
    with pytest.raises(ValueError, match=r"^sae\.architectures: 'gated' is invalid"):
        sae.get_sae_class("gated")


def test_load_sae_trained_elsewhere(trained, synthetic, tmp_path):
    """A SAELens cfg.json without our training metadata loads for inference."""
    x, _ = synthetic
    model = trained["topk"]
    sae.save_sae(model, tmp_path, metadata={})
    cfg = json.loads((tmp_path / sae.CFG_FILE).read_text())
    cfg["metadata"] = {"sae_lens_version": "6.54.12"}
    (tmp_path / sae.CFG_FILE).write_text(json.dumps(cfg))
    back = sae.load_sae(tmp_path)
    assert (back.cfg.architecture, back.cfg.d_sae, back.cfg.k) == ("topk", 4 * D_IN, 3)
    torch.testing.assert_close(back.encode(x[:200]), model.encode(x[:200]))


def test_training_input_errors():
    cfg = _config(4, "topk", k=2)
    with pytest.raises(ValueError, match=r"shape \(3, 5\); expected \[n, 4\]"):
        sae.train_sae(np.zeros((3, 5), np.float32), cfg)
    bad = np.zeros((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        sae.train_sae(bad, cfg)


# ---------------------------------------------------------------- CE-loss recovered
def _identity_sae(d: int) -> sae.SAE:
    """A real ReLU SAE that reconstructs exactly: f = [relu(x), relu(-x)], x_hat = f+ - f-."""
    eye = torch.eye(d)
    cfg = _config(d, "standard", expansion_factor=2)
    return sae.SAE(
        W_enc=torch.cat([eye, -eye], dim=1),
        b_enc=torch.zeros(2 * d),
        W_dec=torch.cat([eye, -eye], dim=0),
        b_dec=torch.zeros(d),
        cfg=cfg,
    )


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dirs, tiny_rows):
    bridge = models.load_bridge(tiny_model_dirs["llama"])
    toks = tokens.tokenize(bridge.tokenizer, tiny_rows[:12], prepend_bos=True)
    return bridge, [t.ids for t in toks]


def test_ce_loss_recovered_identity_and_zero(tiny_llama):
    bridge, ids = tiny_llama
    d = bridge.cfg.d_model
    identity = _identity_sae(d)
    x = torch.randn(50, d)
    torch.testing.assert_close(identity.reconstruct(x), x)
    hook = "blocks.1.hook_resid_post"
    perfect = sae.ce_loss_recovered(bridge, ids, hook, identity.reconstruct, batch_size=5)
    # a random model predicts badly either way, but the ablation changes its loss
    assert abs(perfect.ce_loss_zero - perfect.ce_loss_clean) > 1e-3
    assert perfect.ce_loss_sae == pytest.approx(perfect.ce_loss_clean, abs=1e-6)
    assert perfect.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert perfect.n_prompts == len(ids)
    assert perfect.n_predictions == sum(len(t) - 1 for t in ids)
    assert perfect.delta_ce == pytest.approx(0.0, abs=1e-6)
    assert "per_prompt" not in perfect.as_dict() and "delta_ce" in perfect.as_dict()

    zero = sae.SAE(
        W_enc=identity.W_enc,
        b_enc=identity.b_enc,
        W_dec=torch.zeros_like(identity.W_dec),
        b_dec=torch.zeros(d),
        cfg=identity.cfg,
    )
    dead = sae.ce_loss_recovered(bridge, ids, hook, zero.reconstruct, batch_size=7)
    assert dead.ce_loss_recovered == pytest.approx(0.0, abs=1e-4)
    assert dead.ce_loss_clean == pytest.approx(perfect.ce_loss_clean, rel=1e-5)  # batching-free
    assert dead.delta_ce == pytest.approx(dead.ce_loss_zero - dead.ce_loss_clean, rel=1e-6)


def test_delta_ce_per_prompt_rows_through_the_engine(tiny_llama):
    """Per-prompt losses weight back to the token-weighted ones; the paired rows' mean
    difference is the prompt-averaged Delta CE, tested by prompt."""
    bridge, ids = tiny_llama
    d = bridge.cfg.d_model
    rng = torch.Generator().manual_seed(0)
    noisy = sae.SAE(
        W_enc=torch.eye(d),
        b_enc=torch.zeros(d),
        W_dec=torch.eye(d) + 0.3 * torch.randn(d, d, generator=rng),
        b_dec=torch.zeros(d),
        cfg=_config(d, "standard", expansion_factor=1),
    )
    res = sae.ce_loss_recovered(bridge, ids, "blocks.1.hook_resid_post", noisy.reconstruct)
    n_pred = np.array([len(t) - 1 for t in ids])
    for mode, total in (("clean", res.ce_loss_clean), ("sae", res.ce_loss_sae)):
        weighted = (res.per_prompt[mode] * n_pred).sum() / n_pred.sum()
        assert weighted == pytest.approx(total, rel=1e-6)
    assert res.delta_ce == pytest.approx(res.ce_loss_sae - res.ce_loss_clean)
    assert abs(res.delta_ce) > 1e-4  # the noisy decoder changes the loss
    metrics = {"dataset": "e", "model": "m", "hook": "blocks.1.hook_resid_post",
               "architecture": "standard"}  # fmt: skip
    prompt_ids = [f"p{i}" for i in range(len(ids))]
    m = sae.ce_measurements(res, prompt_ids, metrics)
    rows, skipped = stats.effect_rows(stats.validate_measurements(m), seed=0, n_resamples=100)
    (r,) = rows
    diff = res.per_prompt["sae"] - res.per_prompt["clean"]
    assert r["metric"] == "ce_loss" and r["test"] == "ttest_rel by prompt"
    assert r["mean_treatment"] - r["mean_baseline"] == pytest.approx(diff.mean())
    assert r["estimate"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert r["setting"] == "architecture=standard" and r["layer"] == 1
    with pytest.raises(sae.SAEError, match="prompt ids for"):
        sae.ce_measurements(res, prompt_ids[:-1], metrics)


def test_ce_loss_clean_matches_hf(tiny_llama, tiny_model_dirs):
    """The clean loss is the model's own next-token loss (no padding leaks into it)."""
    from transformers import AutoModelForCausalLM

    bridge, ids = tiny_llama
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.float32)
    total, count = 0.0, 0
    with torch.no_grad():
        for t in ids:
            out = hf(torch.as_tensor(t)[None], labels=torch.as_tensor(t)[None])
            total += float(out.loss) * (len(t) - 1)
            count += len(t) - 1
    res = sae.ce_loss_recovered(bridge, ids, "blocks.0.hook_resid_post", lambda x: x, batch_size=4)
    assert res.ce_loss_clean == pytest.approx(total / count, rel=1e-4)


def test_bos_position_is_left_alone(tiny_llama):
    """Replacing only positions >= first: with first past every prompt the SAE is never used."""
    bridge, ids = tiny_llama
    calls = []

    def spy(x):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    res = sae.ce_loss_recovered(bridge, ids[:3], "blocks.1.hook_resid_post", spy, first=1)
    assert res.ce_loss_sae == pytest.approx(res.ce_loss_zero)
    B = len(ids[:3])
    P = max(len(t) for t in ids[:3])
    assert sum(calls) == B * (P - 1)  # every position but BOS of the padded batch


# ---------------------------------------------------------------- feature table
def test_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    scores = np.round(rng.random((60, 5)), 1)  # ties
    scores[:, 4] = 0.0  # a feature that never fires: 0.5
    positive = rng.random(60) < 0.4
    got = sae.auroc(scores, positive)
    want = [roc_auc_score(positive, scores[:, j]) for j in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_feature_table():
    # 4 samples (2 neutral, 2 anger), 2 features; feature 1 fires only on anger tokens
    samples = [
        {"sample_id": f"s{i}", "label": lab, "text": f"text {i}"}
        for i, lab in enumerate(["neutral", "anger", "neutral", "anger"])
    ]
    sample_index = np.array([0, 0, 1, 1, 1, 2, 3])
    token_ids = np.array([10, 11, 12, 13, 14, 15, 16])
    f = torch.tensor([[1.0, 0], [2.0, 0], [0.5, 3.0], [0.0, 5.0], [0.0, 0], [1.5, 0], [0.0, 4.0]])
    table = sae.feature_table(
        f, sample_index, token_ids, samples, ["anger", "neutral"], "neutral", decode=str
    )
    assert list(table.columns[:7]) == [
        "feature",
        "label",
        "n_samples",
        "mean_max_activation",
        "auroc_vs_baseline",
        "sample_fire_rate",
        "fire_rate",
    ]
    assert len(table) == 4  # feature x label
    row = table[(table.feature == 1) & (table.label == "anger")].iloc[0]
    assert row.mean_max_activation == pytest.approx(4.5)
    assert row.auroc_vs_baseline == pytest.approx(1.0)
    assert row.fire_rate == pytest.approx(3 / 7)
    assert (row.top1_sample_id, row.top1_token, row.top1_activation) == ("s1", "13", 5.0)
    assert (row.top2_sample_id, row.top2_token) == ("s3", "16")
    assert row.top3_sample_id == "" or np.isnan(row.top3_activation)
    f0 = table[(table.feature == 0) & (table.label == "anger")].iloc[0]
    assert f0.auroc_vs_baseline == pytest.approx(0.0)  # anger max 0.5, 0 < neutral 2, 1.5
    assert f0.top1_sample_id == "s0" and f0.top1_token == "11"
    assert np.isnan(table[table.label == "neutral"].auroc_vs_baseline).all()


def test_per_sample_max():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.5]])
    got = sae.per_sample_max(f, np.array([1, 1, 0]), 3)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.5], [3.0, 2.0], [0.0, 0.0]]))


def test_sample_max_activations_in_chunks(trained, synthetic):
    model = trained["topk"]
    x = synthetic[0][:300]
    index = np.sort(np.random.default_rng(0).integers(0, 40, len(x)))
    want = sae.per_sample_max(model.encode(x), index, 40).numpy()
    np.testing.assert_array_equal(sae.sample_max_activations(model, x, index, 40, chunk=7), want)


def test_features_are_chosen_on_train_samples_only():
    """The choice sees only the samples it is given; a feature silent on train (2) is not
    live and is not a hypothesis."""
    labels = ["anger"] * 3 + ["neutral"] * 3 + ["apology"] * 3
    train = np.array([[0.1, 3.0, 0], [0.2, 2.5, 0], [0.3, 2.8, 0],
                      [0.2, 0.1, 0], [0.1, 0.2, 0], [0.3, 0.0, 0],
                      [0.0, 0.0, 0], [0.0, 0.0, 0], [0.0, 0.0, 0]])  # fmt: skip
    chosen, n_live = sae.select_features(
        train, labels, ["anger", "neutral", "apology"], "neutral", 1
    )
    assert list(zip(chosen.condition, chosen.feature, strict=True)) == [
        ("anger", 1),
        ("apology", 0),
    ]
    # apology never fires: feature 0 (always above it on neutral) beats feature 1 (a tie)
    assert chosen.auroc_select.tolist() == [1.0, 0.0]
    assert n_live == 4  # features 0 and 1 for each of the two conditions
    aurocs = sae.label_aurocs(train, labels, ["anger", "neutral", "apology"], "neutral")
    assert set(aurocs) == {"anger", "apology"} and aurocs["anger"][0] == pytest.approx(0.5)
    table = pd.DataFrame(
        {"feature": [0, 1, 0, 1], "label": ["anger", "anger", "neutral", "neutral"]}
    )
    annotated = sae.annotate_selection(table, aurocs, chosen)
    assert annotated.selected.tolist() == [False, True, False, False]
    assert annotated.auroc_train.iloc[1] == 1.0 and np.isnan(annotated.auroc_train.iloc[2])
    test = train[::-1].copy()  # other values for the same sample ids
    metrics = {"dataset": "e", "model": "m", "hook": "blocks.2.hook_resid_post",
               "architecture": "topk"}  # fmt: skip
    ids = [f"s{i}" for i in range(9)]
    m = sae.feature_measurements(chosen, test, ids, labels, "neutral", metrics, n_family_part=4)
    anger = m[(m.condition == "anger")]
    assert anger[anger.arm == "treatment"].value.tolist() == test[:3, 1].tolist()
    assert anger[anger.arm == "baseline"].unit.tolist() == ["s3", "s4", "s5"]
    assert set(m.design) == {"rank"} and set(m.unit_kind) == {"sample"}
    assert set(m.family_part) == {"blocks.2.hook_resid_post/topk"} and set(m.n_family_part) == {4}


# ---------------------------------------------------------------- the rule, end to end
@pytest.mark.slow
def test_train_sae_rule_on_a_tiny_model(tmp_path, tiny_model_dirs):
    """snakemake on results/sae/...: SAELens loads the output, files and manifest agree, a
    hook without per-token activations fails in one line and leaves nothing behind."""
    import os
    import subprocess
    import sys

    import pandas as pd
    import yaml
    from conftest import REPO, TESTS
    from sae_lens import SAE

    from circuitflow import store

    config = {
        "seed": 0,
        "datasets": {
            "tiny": {
                "prompts": str(TESTS / "data" / "prompts.jsonl"),
                "frames": str(TESTS / "data" / "frames.jsonl"),
                "labels": ["gratitude", "anger", "apology", "neutral"],
                "baseline": "neutral",
                "test_fraction": 0.5,
            }
        },
        "models": {"tiny": {"source": str(tiny_model_dirs["llama"]), "per_token_layers": [1]}},
        "extract": {"layers": [1]},
        "sae": {
            "expansion_factor": 2,
            "k": 4,
            "n_epochs": 3,
            "batch_size": 128,
            "ce_loss_prompts": 10,
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def run(*targets):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d"]
        cmd += [str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        return subprocess.run([*cmd, *targets], env=env, capture_output=True, text=True)

    out = tmp_path / "results/sae/tiny/tiny/blocks.1.hook_resid_post/topk"
    proc = run(str(out.relative_to(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir() if p.name not in store.NOT_CONTENT) == sorted(
        [
            sae.WEIGHTS_FILE,
            sae.CFG_FILE,
            sae.METRICS_FILE,
            sae.FEATURES_FILE,
            store.MEASUREMENTS_FILE,
        ]
    )
    assert store.verify(out) == []
    manifest = store.read_manifest(out)
    assert manifest["kind"] == "sae"
    assert manifest["params"]["hook"] == "blocks.1.hook_resid_post"
    loaded = SAE.load_from_disk(out)
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert loaded.cfg.metadata.model_name == "tiny"
    assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.k) == (64, 128, 4)
    metrics = json.loads((out / sae.METRICS_FILE).read_text())
    assert metrics["held_out"]["l0"] <= 4
    assert metrics["ce_loss"]["n_prompts"] == 10
    ce = metrics["ce_loss"]
    assert ce["delta_ce"] == pytest.approx(ce["ce_loss_sae"] - ce["ce_loss_clean"])
    table = pd.read_csv(out / sae.FEATURES_FILE, keep_default_na=False)
    assert len(table) == 128 * 4
    assert set(table.label) == {"gratitude", "anger", "apology", "neutral"}
    assert table.selected.astype(str).eq("True").sum() <= 3 * 5
    m = stats.validate_measurements(pd.read_csv(out / store.MEASUREMENTS_FILE))
    assert set(m.metric) == {"feature_max_activation", "ce_loss"}
    assert len(m[m.metric == "ce_loss"]) == 2 * 10
    rows, _ = stats.effect_rows(m, seed=0, n_resamples=100)
    assert {r["design"] for r in rows if r["metric"] == "feature_max_activation"} == {"rank"}

    missing = "results/sae/tiny/tiny/blocks.0.hook_resid_post/standard"
    proc = run(missing)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("circuitflow [")]
    # one line, printed by the job and repeated after Snakemake's summary
    assert proc.returncode != 0 and len(set(lines)) == 1, proc.stderr[-3000:]
    assert "no per-token activations for blocks.0.hook_resid_post" in lines[0]
    assert "models.<model>.per_token_layers" in lines[0]
    assert not (tmp_path / missing).exists()


# ---------------------------------------------------------------- image tokens
def _planted_photos(n_photos=24, n_tok=16, d=16, seed=0):
    """Image tokens of photos with a planted exposure feature: each photo has its own content
    (one of atoms 1..23 on every token) and each token one more; exposure_high variants add
    atom 0 (x3) to half of their tokens, the other labels add nothing. Returns (x [n_tokens,
    d], sample_index, rows, planted atom [d])."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(24, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    layout = ["original"] * 3 + ["exposure_high"] * 2 + ["exposure_low"] * 2 + ["tone_high"] * 2
    layout += ["crop_center"]  # composition: not a graded attribute
    xs, rows = [], []
    for p in range(n_photos):
        content = rng.uniform(1, 2) * atoms[rng.integers(1, 24)]
        for v, label in enumerate(layout):
            codes = np.zeros((n_tok, 24))
            codes[np.arange(n_tok), rng.integers(1, 24, size=n_tok)] = rng.uniform(1, 2, n_tok)
            if label == "exposure_high":
                codes[rng.permutation(n_tok)[: n_tok // 2], 0] = 3.0
            xs.append(content + codes @ atoms + 0.02 * rng.normal(size=(n_tok, d)))
            attribute = "original" if label == "original" else label.rsplit("_", 1)[0]
            rows.append(
                {
                    "sample_id": f"p{p}.{v}",
                    "label": label,
                    "frame_id": f"p{p}",
                    "split": "train" if p < n_photos // 2 else "test",
                    "attribute": "composition" if label == "crop_center" else attribute,
                }
            )
    x = np.concatenate(xs).astype(np.float32)
    return x, np.repeat(np.arange(len(rows)), n_tok), rows, atoms[0]


@pytest.fixture(scope="module")
def planted():
    x, sample_index, rows, atom = _planted_photos()
    split = np.array([r["split"] for r in rows])
    cfg = _config(16, "topk", expansion_factor=4, k=3, lr=3e-3, batch_size=128, n_epochs=40)
    model = sae.train_sae(x[split[sample_index] == "train"], cfg)
    smax = sae.sample_max_activations(model, x, sample_index, len(rows))
    return model, smax, rows, atom


def _columns(rows):
    return (np.array([r[k] for r in rows]) for k in ("label", "frame_id", "split"))


def _survivors(measurements: pd.DataFrame) -> pd.DataFrame:
    rows, _ = stats.effect_rows(stats.validate_measurements(measurements), seed=0, n_resamples=200)
    table = stats.finalize(rows)
    return table[table.p_fdr_bh < 0.05]


def test_graded_conditions_and_permutation_within_photos():
    _, _, rows, _ = _planted_photos(n_photos=2)
    labels = ["original", "exposure_high", "exposure_low", "tone_high", "crop_center"]
    assert sae.graded_conditions(rows, labels, "original") == {
        "exposure_high": "exposure",
        "exposure_low": "exposure",
        "tone_high": "tone",
    }
    label, frame, _ = _columns(rows)
    permuted = sae.permute_within(label, frame, seed=1)
    assert (permuted != label).any()
    for f in set(frame):  # each photo keeps its own labels, only their order changes
        assert sorted(permuted[frame == f]) == sorted(label[frame == f])


def test_image_sae_recovers_a_planted_attribute_on_held_out_photos(planted):
    """The feature chosen for exposure_high on the train photos is the planted atom, separates
    the test photos' exposure_high images from their originals, and survives BH-FDR with
    every live feature counted; the unplanted conditions have no survivor."""
    model, smax, rows, atom = planted
    label, frame, split = _columns(rows)
    conditions = sae.graded_conditions(rows, list(dict.fromkeys(label)), "original")
    tests = sae.feature_tests(smax, label, frame, split, conditions, "original", top_n=3)
    top = tests.selected[tests.selected.condition == "exposure_high"].iloc[0]
    assert abs(float(model.W_dec[int(top.feature)] @ torch.from_numpy(atom).float())) > 0.9
    assert tests.aurocs_test["exposure_high"][int(top.feature)] > 0.95
    metrics = {"dataset": "img", "model": "m", "hook": "projector.hook_out", "architecture": "topk"}
    m = sae.photo_measurements(tests, smax, frame, split, "original", metrics)
    assert set(m.unit) == {f"p{p}" for p in range(12, 24)}  # test photos only
    assert (m.layer.iloc[0], m.site.iloc[0], m.unit_kind.iloc[0]) == (
        0,
        "projector.hook_out",
        "photo",
    )
    assert set(m.n_family_part) == {tests.n_live} and tests.n_live > len(tests.selected)
    hits = _survivors(m)
    assert set(hits.condition) == {"exposure_high"}
    assert hits.test.eq("ttest_rel by photo").all() and (hits.n_treatment == 12).all()
    table = sae.image_feature_table(
        tests, smax, conditions, [r["sample_id"] for r in rows], frame, split, np.ones(64)
    )
    assert len(table) == 64 * 3 and set(table.attribute) == {"exposure", "tone"}
    row = table[(table.feature == top.feature) & (table.label == "exposure_high")].iloc[0]
    assert row.selected and row.n_photos == 12 and row.top1_label == "exposure_high"


def test_image_sae_on_permuted_labels_has_no_survivors(planted):
    """The null: the same SAE, choice and test on labels permuted within each photo."""
    _, smax, rows, _ = planted
    label, frame, split = _columns(rows)
    conditions = sae.graded_conditions(rows, list(dict.fromkeys(label)), "original")
    metrics = {"dataset": "img", "model": "m", "hook": "blocks.2.hook_out", "architecture": "topk"}
    for seed in range(3):
        permuted = sae.permute_within(label, frame, seed)
        null = sae.feature_tests(smax, permuted, frame, split, conditions, "original", top_n=3)
        m = sae.photo_measurements(null, smax, frame, split, "original", metrics, null_seed=seed)
        assert set(m.metric) == {sae.NULL_METRIC}
        assert m.setting.str.endswith(f"labels=permuted{seed}").all()
        assert _survivors(m).empty
        best = max(
            abs(null.aurocs_test[c][j] - 0.5)
            for c, j in zip(null.selected.condition, null.selected.feature, strict=True)
        )
        assert best < 0.4  # the planted feature's true-label AUROC is > 0.95


def test_capture_tokens_pool_to_the_stored_mean_and_name_the_key(tmp_path):
    """The SAE's tokens are the extraction's: their mean per image is the store's "mean"
    position; a hook the model lacks is one line naming sae.images.hooks."""
    from tiny_models import build_llava_folder

    from circuitflow import extract, store

    src = build_llava_folder(tmp_path / "src")
    spec = models.ModelSpec("tiny-llava", str(src), family="vlm", backend="hf")
    models.prepare_model(spec, tmp_path / "llava")
    vm = models.load_vision_model(tmp_path / "llava", "tiny-llava")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    rows = [
        {"sample_id": f"s{i}", "label": "original", "frame_id": "f", "split": "train",
         "attribute": "original", "level": 0.0, "image_index": 4 - i}
        for i in range(5)
    ]  # fmt: skip
    tokens = sae.capture_tokens(vm, rows, images, store.PROJECTOR_HOOK, batch_size=2)
    assert tokens.x.shape == (5 * 16, 48) and tokens.grid == (4, 4)
    assert tokens.sample_index.tolist() == np.repeat(np.arange(5), 16).tolist()
    extract.extract_images_to_zarr(vm, rows, images, tmp_path / "a.zarr", progress=False)
    stored = store.read_array(tmp_path / "a.zarr", store.PROJECTOR_HOOK)[:, 0]  # "mean"
    mean = tokens.x.reshape(5, 16, 48).mean(1)
    np.testing.assert_allclose(mean, stored, rtol=2e-3, atol=2e-3)  # float16 store
    with pytest.raises(sae.SAEError, match=r"sae\.images\.hooks\.tiny-llava$"):
        sae.capture_tokens(vm, rows, images, "blocks.9.hook_resid_post")
