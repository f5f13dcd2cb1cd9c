"""circuitflow.patching on tiny random models: exact patch identities, head decomposition,
ablations, directional ablation and the per-sample tables."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from tiny_models import ARCHS

from circuitflow import models, patching
from circuitflow.core import rand, tokens
from circuitflow.core.layers import resolve_layers
from circuitflow.workflow import schema_defaults

LABELS = ["gratitude", "anger", "apology", "neutral"]
TINY_WORDS = {  # single tokens of the tiny test tokenizer (others fall back to sub-tokens)
    "gratitude": ["thank"],
    "anger": ["angry", "furious"],
    "apology": ["sorry"],
    "neutral": ["the"],
}


@pytest.fixture(scope="module")
def bridges(tiny_model_dirs):
    return {arch: models.load_bridge(tiny_model_dirs[arch]) for arch in ARCHS}


def _vocab_patcher(bridge, **kwargs):
    return patching.Patcher(bridge, range(bridge.cfg.d_vocab), **kwargs)


def _pair_ids(bridge, n_pre=4, n_phrase=3, n_suf=5, seed=0):
    """Equal-length clean / corrupted ids differing only in a middle block."""
    rng = np.random.default_rng(seed)
    V = bridge.cfg.d_vocab
    clean = np.r_[bridge.tokenizer.bos_token_id, rng.integers(3, V, n_pre + n_phrase + n_suf)]
    corrupted = clean.copy()
    corrupted[1 + n_pre : 1 + n_pre + n_phrase] = rng.integers(3, V, n_phrase)
    return clean, corrupted, 1 + n_pre


def _full_logits(bridge, ids):
    with torch.no_grad():
        return bridge(torch.as_tensor(ids)[None])[0, -1]


# ---------------------------------------------------------------- config and metric
def test_layer_specs_of_the_patching_config():
    assert resolve_layers("all", 4) == (0, 1, 2, 3)
    assert resolve_layers(4, 30) == (0, 10, 19, 29)
    assert resolve_layers(50, 3) == (0, 1, 2)
    assert resolve_layers([0.0, 0.5, 1.0], 18) == (0, 9, 17)  # 8.5 rounds half up
    with pytest.raises(ValueError, match="patching.head_layers"):
        resolve_layers([1.5], 18, "patching.head_layers")
    with pytest.raises(ValueError, match="patching.split"):
        patching.PatchConfig(split="dev")


def _tokenizers(tiny_model_dirs):
    from transformers import AutoTokenizer

    out = {"tiny": (AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]), TINY_WORDS)}
    for name in ("smollm2-135m", "gemma3-270m"):
        folder = REPO / "resources" / "models" / name
        if (folder / "tokenizer_config.json").exists():
            out[name] = (
                AutoTokenizer.from_pretrained(folder),
                schema_defaults("patching")["metric_words"],
            )
    return out


def test_metric_tokens_are_single_tokens(tiny_model_dirs):
    for name, (tok, words) in _tokenizers(tiny_model_dirs).items():
        metric = patching.metric_tokens(tok, words, LABELS, "neutral")
        ids = metric.flat_ids()
        assert len(ids) == len(set(ids)), name  # no token counts for two labels
        for label in LABELS:
            assert metric.ids[label], (name, label)
            for i, text in zip(metric.ids[label], metric.tokens[label], strict=True):
                assert tok.convert_tokens_to_ids(text) == i
                if not metric.fallback[label]:
                    # the decoded token encodes back to exactly this one token
                    assert tok.encode(tok.decode([i]), add_special_tokens=False) == [i], name
        if name != "tiny":
            assert not any(metric.fallback.values()), name
            assert len(metric.ids["gratitude"]) >= 3


def test_metric_tokens_fallback_and_errors(tiny_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    metric = patching.metric_tokens(
        tok, schema_defaults("patching")["metric_words"], LABELS, "neutral"
    )
    assert metric.fallback["anger"] or metric.ids["anger"]
    with pytest.raises(patching.PatchingError, match="metric_words: no words for label 'anger'"):
        patching.metric_tokens(tok, {"gratitude": ["thank"]}, LABELS, "neutral")


def test_lean_and_recovery():
    metric = patching.MetricTokens(
        labels=("a", "n"),
        baseline="n",
        ids={"a": [0, 1], "n": [2]},
        tokens={"a": ["x", "y"], "n": ["z"]},
        fallback={"a": False, "n": False},
        dropped_shared=[],
    )
    logits = torch.log(torch.tensor([[0.1, 0.3, 0.2]]))
    np.testing.assert_allclose(patching.lean(logits, metric), [[np.log(0.4 / 0.2)]])
    rec, small = patching.recovery([1.0, 2.0, 0.5], [2.0, 2.0, 0.6], [0.0, 0.0, 0.5], 0.5)
    np.testing.assert_allclose(rec, [0.5, 1.0, 0.0])
    assert small.tolist() == [False, False, True]


# ---------------------------------------------------------------- exact patching identities
@pytest.mark.parametrize("arch", ARCHS)
def test_full_residual_patch_gives_clean_logits_at_every_layer(bridges, arch):
    bridge = bridges[arch]
    L = bridge.cfg.n_layers
    clean, corrupted, n_pre = _pair_ids(bridge)
    ref_clean, ref_corr = _full_logits(bridge, clean), _full_logits(bridge, corrupted)
    patcher = _vocab_patcher(bridge, resid_layers=range(L))
    T = len(clean)
    with torch.no_grad(), patcher.attached():
        acts, logits = patching.record_activations(patcher, [_tok(clean), _tok(corrupted)], 0)
        torch.testing.assert_close(torch.as_tensor(logits[0]), ref_clean, atol=1e-4, rtol=1e-4)
        # patching nothing: the corrupted output, recovery 0
        nothing = patcher.forward(torch.as_tensor(corrupted)[None])[0]
        torch.testing.assert_close(nothing, ref_corr, atol=1e-4, rtol=1e-4)
        for start in (0, n_pre):  # from scratch, and from the cached identical prefix
            cache = patcher.prefix_cache(corrupted, start)
            for layer in range(L):
                pos = np.arange(start, T)
                plan = {
                    ("resid", layer): (
                        torch.zeros(len(pos), dtype=torch.long),
                        torch.as_tensor(pos),
                        acts[0][("resid", layer)][pos],
                    )
                }
                out = patcher.forward(
                    torch.as_tensor(corrupted[start:])[None],
                    cache=patcher.expand(cache, 1),
                    offset=start,
                    plan=plan,
                )[0]
                torch.testing.assert_close(out, ref_clean, atol=1e-4, rtol=1e-4)
    # the same identities in lean units: recovery 1 for the full patch, 0 for none
    words_metric = _metric(bridge)
    ids = words_metric.flat_ids()
    lean = patching.lean(
        torch.stack([ref_clean[ids], ref_corr[ids], nothing[ids], out[ids]]), words_metric
    )
    rec, _ = patching.recovery(lean[2:], lean[0], lean[1])
    np.testing.assert_allclose(rec[0], 0.0, atol=1e-4)
    np.testing.assert_allclose(rec[1], 1.0, atol=1e-3)


def _tok(ids):
    return tokens.Tokenized(np.asarray(ids), np.array([1]), 1)


def _metric(bridge):
    return patching.metric_tokens(bridge.tokenizer, TINY_WORDS, LABELS, "neutral")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_frame_pairs_phrase_block_at_layer0_is_exact(bridges, tiny_rows, arch):
    bridge = bridges[arch]
    metric = _metric(bridge)
    toks = dict(
        zip(
            [r["sample_id"] for r in tiny_rows],
            tokens.tokenize(bridge.tokenizer, tiny_rows, True),
            strict=True,
        )
    )
    frames = patching.choose_frames(tiny_rows, "all", 10, LABELS, 0)
    pairs, excluded = patching.frame_pairs(tiny_rows, toks, frames, LABELS[:3], "neutral")
    assert pairs and not excluded
    patcher = patching.Patcher(bridge, metric.flat_ids(), resid_layers=[0, 2])
    ids = sorted({p.clean_id for p in pairs} | {p.corrupted_id for p in pairs})
    with torch.no_grad(), patcher.attached():
        acts, logits = patching.record_activations(patcher, [toks[i] for i in ids], 0)
        leans = dict(zip(ids, patching.lean(logits, metric), strict=True))
        table = patching.patch_residual(
            patcher,
            pairs,
            dict(zip(ids, acts, strict=True)),
            leans,
            metric,
            [0, 2],
            batch_size=7,
            tokenizer=bridge.tokenizer,
        )
    n_sites = sum(len(patching.pair_sites(p, d)[0]) for p in pairs for d in patching.DIRECTIONS)
    assert len(table) == 2 * n_sites
    assert set(table["position"]) >= {"last", "post_phrase"}
    assert (table["role"] == "suffix").sum() == 2 * 2 * sum(p.n_suffix for p in pairs)
    # the phrase (as a block, or its only token) patched at the embeddings: all that differs
    equal = [p for p in pairs if p.phrase_equal]
    assert equal, "tests/data should hold a frame whose phrases tokenize to equal lengths"
    for p in equal:
        whole = "phrase_block" if len(p.clean.span) > 1 else "phrase_last"
        rows = table[
            (table.sample_id == p.clean_id) & (table.layer == 0) & (table.position == whole)
        ]
        by_dir = dict(zip(rows.direction, rows.lean_patched, strict=True))
        np.testing.assert_allclose(by_dir["clean_to_corrupted"], rows.lean_clean.iloc[0], atol=1e-5)
        np.testing.assert_allclose(
            by_dir["corrupted_to_clean"], rows.lean_corrupted.iloc[0], atol=1e-5
        )
    # suffix tokens are the same token ids in both versions: patching them at layer 0 is a no-op
    at0 = table[
        (table.layer == 0) & (table.role == "suffix") & (table.direction == "clean_to_corrupted")
    ]
    np.testing.assert_allclose(at0.lean_patched, at0.lean_corrupted, atol=1e-5)


# ---------------------------------------------------------------- heads
def _b_O(bridge, layer):
    b = getattr(bridge.blocks[layer].attn, "b_O", None)
    return 0.0 if b is None else b.detach()


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_head_outputs_sum_to_attention_output(bridges, arch):
    bridge = bridges[arch]
    layer, H = 1, bridge.cfg.n_heads
    clean, corrupted, _ = _pair_ids(bridge, seed=1)
    seen = {}
    extra = [
        (
            f"blocks.{layer}.attn.hook_out",
            lambda x: seen.__setitem__("out", x.detach().clone()),
        )
    ]
    patcher = _vocab_patcher(bridge, head_layers=[layer], extra_hooks=extra)
    T = len(clean)
    with torch.no_grad(), patcher.attached():
        acts, _ = patching.record_activations(patcher, [_tok(clean)], 0)
        pos = np.arange(T)
        plan = {
            ("z", layer): (
                torch.zeros(T, dtype=torch.long),
                torch.as_tensor(pos),
                torch.full((T,), 2),
                acts[0][("z", layer)][:, 2],
            )
        }
        patcher.forward(torch.as_tensor(corrupted)[None], plan=plan, record={("z", layer)})
    z = patcher.recorded[("z", layer)][0]  # [T, H, d_head] after the patch
    torch.testing.assert_close(z[:, 2], acts[0][("z", layer)][:, 2])
    W_O = bridge.W_O[layer].detach()  # [H, d_head, d_model]
    per_head = torch.einsum("thd,hdm->thm", z, W_O)
    torch.testing.assert_close(
        per_head.sum(1) + _b_O(bridge, layer), seen["out"][0], atol=1e-4, rtol=1e-4
    )
    assert per_head.shape[1] == H


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ablating_all_heads_equals_zero_attention_output(bridges, arch):
    bridge = bridges[arch]
    layer, H = 1, bridge.cfg.n_heads
    ids, _, _ = _pair_ids(bridge, seed=2)
    T = len(ids)
    patcher = _vocab_patcher(bridge, head_layers=[layer])
    with torch.no_grad(), patcher.attached():
        acts, _ = patching.record_activations(patcher, [_tok(ids)], 0)
        dh = acts[0][("z", layer)].shape[-1]
        plan = {
            ("z", layer): (
                torch.zeros(T * H, dtype=torch.long),
                torch.as_tensor(np.repeat(np.arange(T), H)),
                torch.as_tensor(np.tile(np.arange(H), T)),
                torch.zeros(T * H, dh),
            )
        }
        ablated = patcher.forward(torch.as_tensor(ids)[None], plan=plan)[0]
    bias = _b_O(bridge, layer)
    # the attention block's output (after Gemma's post-attention norm: norm(0) = 0) set to b_O
    hook = (f"blocks.{layer}.hook_attn_out", lambda x, hook: torch.zeros_like(x) + bias)
    with torch.no_grad(), bridge.hooks(fwd_hooks=[hook]):
        ref = bridge(torch.as_tensor(ids)[None])[0, -1]
    torch.testing.assert_close(ablated, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ablated, _full_logits(bridge, ids), atol=1e-3)


# ---------------------------------------------------------------- directional ablation
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_projection_removes_the_direction_exactly(bridges, arch):
    bridge = bridges[arch]
    layer, d = 1, bridge.cfg.d_model
    ids, _, _ = _pair_ids(bridge, seed=3)
    T = len(ids)
    rng = np.random.default_rng(0)
    basis = rand.orthonormal_rows(rng.normal(size=(2, d)), 2)
    mask = (np.arange(T) % 2 == 0).astype(float)
    patcher = _vocab_patcher(bridge, resid_layers=[layer])
    with torch.no_grad(), patcher.attached():
        patcher.forward(torch.as_tensor(ids)[None], record={("resid", layer)})
        before = patcher.recorded[("resid", layer)][0].double().numpy()
        plan = {
            ("project", layer): (
                torch.as_tensor(basis[None], dtype=torch.float32),
                torch.as_tensor(mask[None], dtype=torch.float32),
                None,
            )
        }
        patcher.forward(torch.as_tensor(ids)[None], plan=plan, record={("resid", layer)})
        after = patcher.recorded[("resid", layer)][0].double().numpy()
    proj = after @ basis.T
    scale = np.abs(before @ basis.T).max()
    assert np.abs(proj[mask == 1]).max() < 1e-5 * max(scale, 1.0)
    np.testing.assert_allclose(after[mask == 0], before[mask == 0], atol=1e-6)
    # only the component along the basis changed
    np.testing.assert_allclose(
        after[mask == 1], before[mask == 1] - (before[mask == 1] @ basis.T) @ basis, atol=1e-5
    )


def test_random_ablation_keeps_planted_direction():
    rng = np.random.default_rng(12345)  # not a seed of the random bases below
    d, n = 64, 400
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    X = rng.normal(size=(n, d)) + np.outer(2 * y - 1, u) * 2.0
    train = np.arange(n) % 2 == 0
    probe = patching.Probe.fit(X[train], y[train])

    def acc(basis):
        x = torch.as_tensor(X[~train][None], dtype=torch.float64)
        b = torch.as_tensor(basis[None], dtype=torch.float64)
        xa = patching.project_out(x, b, torch.ones(1, x.shape[1], dtype=torch.float64))[0]
        return ((probe.prob(xa.numpy()) >= 0.5) == y[~train]).mean()

    base = acc(np.zeros((1, d)))
    planted = acc(rand.orthonormal_rows(u[None], 1))
    randoms = [acc(rand.random_bases(rand.rng(seed), 1, d, 3)[0].T) for seed in range(5)]
    assert base > 0.95
    assert min(randoms) > 0.9  # random 3-dim ablations leave the planted direction
    assert planted < 0.65  # the planted direction itself takes the classification away


def test_mean_ablation_keeps_a_constant_offset():
    """Residual streams with a large constant dimension (Gemma's): zero-ablating a random
    direction shifts every token by the same large offset and breaks a probe; mean ablation
    sets the component to its mean and keeps the probe, while still removing the planted
    direction's class information."""
    rng = np.random.default_rng(7)
    d, n = 32, 400
    u = np.eye(d)[1]
    offset = np.zeros(d)
    offset[0] = 300.0  # a massive, constant residual dimension
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    X = rng.normal(size=(n, d)) + offset + np.outer(2 * y - 1, u) * 2.0
    train = np.arange(n) % 2 == 0
    probe = patching.Probe.fit(X[train], y[train])
    x = torch.as_tensor(X[~train][None], dtype=torch.float64)
    mask = torch.ones(1, x.shape[1], dtype=torch.float64)
    center = torch.as_tensor(X[train].mean(0), dtype=torch.float64)

    def acc(basis, c):
        b = torch.as_tensor(basis[None], dtype=torch.float64)
        xa = patching.project_out(x, b, mask, c)[0].numpy()
        return ((probe.prob(xa) >= 0.5) == y[~train]).mean(), xa

    r = rand.random_bases(rand.rng(3), 1, d, 1)[0].T
    acc_zero, xa = acc(r, None)
    shift = (xa - X[~train]).mean(0)
    np.testing.assert_allclose(shift, -(offset @ r[0]) * r[0], atol=0.5)  # the offset moved
    acc_mean, xa = acc(r, center)
    assert np.abs((xa - X[~train]).mean(0)).max() < 0.3  # mean ablation: no shift
    base, _ = acc(np.zeros((1, d)), None)
    assert base > 0.9 and acc_mean >= base - 0.05 and acc_zero <= 0.6
    planted, xa = acc(rand.orthonormal_rows(u[None], 1), center)
    assert planted < 0.65
    np.testing.assert_allclose(xa[:, 1], center[1].item())  # the component is its mean


def test_position_masks(tiny_rows, bridges):
    tok = bridges["llama"].tokenizer
    row = next(r for r in tiny_rows if r["label"] == "anger")
    t = tokens.tokenize(tok, [row], True)[0]
    full = patching.position_mask(tok, t, "all")
    non = patching.position_mask(tok, t, "non_emotion")
    punct = patching.position_mask(tok, t, "punctuation")
    assert full[0] == 0 and full.sum() == len(t.ids) - 1  # BOS is never ablated
    assert non[t.span].sum() == 0 and non.sum() == len(t.ids) - 1 - len(t.span)
    assert punct[-1] == 1 and punct.sum() <= non.sum()  # the sentence ends with "."


# ---------------------------------------------------------------- end to end
def test_run_patching_tables(bridges, tiny_rows):
    bridge = bridges["llama"]
    L, d = bridge.cfg.n_layers, bridge.cfg.d_model
    rng = np.random.default_rng(0)
    conds = LABELS[:3]
    directions = {c: {layer: rng.normal(size=d) for layer in range(L)} for c in conds}
    subspaces = {c: {layer: rng.normal(size=(4, d)) for layer in range(L)} for c in conds}
    probe_data = {
        c: (rng.normal(size=(20, d)), np.r_[np.zeros(10), np.ones(10)].astype(int)) for c in conds
    }
    cfg = patching.PatchConfig(
        n_frames=3,
        split="all",
        residual_layers=2,
        head_layers=[1.0],
        head_frames=2,
        ablation_samples=2,
        random_seeds=1,
        subspace_k=2,
        mean_samples=4,
        control_samples=4,
        refit_samples=3,
        min_denominator=0.0,  # the tiny model's leans barely differ: keep every pair
        metric_words=TINY_WORDS,
        position_sets=("all", "non_emotion", "punctuation"),
        head_ablations=("zero", "mean"),
    )
    out = patching.run_text_patching(
        bridge,
        tiny_rows,
        cfg,
        LABELS,
        "neutral",
        directions,
        subspaces,
        probe_data,
        model_name="tiny",
        progress=False,
    )
    info = out["info"]
    assert info["n_pairs"] == 9 and info["residual_layers"] == [0, 2] and info["head_layers"] == [2]
    res, heads, ranking, abl = (
        out["residual"],
        out["heads"],
        out["heads_ranking"],
        out["directional_ablation"],
    )
    assert set(res["direction"]) == set(patching.DIRECTIONS)
    assert np.isfinite(res[["lean_clean", "lean_corrupted", "lean_patched"]].to_numpy()).all()
    assert len(heads) == info["n_head_pairs"] * bridge.cfg.n_heads
    assert {"recovery", "zero_effect", "mean_effect", "small_denominator"} <= set(heads.columns)
    assert np.isfinite(heads[["lean_zero", "lean_mean", "lean_patched"]].to_numpy()).all()
    # every ablation row carries its unablated baseline; "none" rows are the baseline itself
    none = abl[abl.ablation == "none"]
    assert (none.delta_lean == 0).all() and (none.probe_p == none.probe_p_base).all()
    n_members = {
        c: sum(r["label"] in (c, "neutral") for r in out["base_features"][0]) for c in conds
    }
    # treatments, matched direction / subspace and shuffled-label controls per seed
    n_abl = 2 + 3 * cfg.random_seeds
    assert len(abl) == sum(n * (1 + n_abl * len(cfg.position_sets)) for n in n_members.values())
    assert set(abl.positions) == {"none", "all", "non_emotion", "punctuation"}
    np.testing.assert_array_equal(
        abl[abl.positions == "all"].groupby("sample_id").n_ablated_positions.min() > 0, True
    )
    # the probe is refit for treatments and matched controls, on the same train samples
    refit = abl.ablation.isin(["none", "direction", "subspace", "matched_direction"])
    assert np.isfinite(abl.loc[refit, "probe_p_refit"]).all()
    assert abl.loc[abl.ablation == "shuffled_mean_diff", "probe_p_refit"].isna().all()
    assert (none.probe_p_refit == none.probe_p_refit_base).all()
    assert info["n_refit_samples"] == 4 * cfg.refit_samples
    assert abl.groupby("sample_id").frame_id.first().replace("", np.nan).dropna().is_unique
    # matched controls carry the treatment's train variance, isotropic ones would not
    ctrl = out["ablation_controls"]
    ratio = ctrl.groupby("ablation").variance_ratio.median()
    assert abs(ratio["matched_direction"] - 1) < 1e-6 and ratio["direction"] == 1
    summary = patching.summarize(res, heads, ranking, abl, ctrl)
    assert "ablation" in summary and "control_variance_ratio_test" in summary
    assert np.isfinite(ctrl.variance_test).all() and (ctrl.variance_test > 0).all()
    lost = patching.accuracy_lost(abl)
    assert set(lost.ablation) == {
        "direction",
        "subspace",
        "matched_direction",
        "matched_subspace",
        "shuffled_mean_diff",
    }
    assert np.isfinite(lost.loc[lost.ablation == "direction", "accuracy_refit"]).all()
    # measurements: residual and head rows per frame, directional ablation per test sample
    m = patching.text_measurements(res, heads, abl)
    frames = set(res.frame_id)
    by_kind = m.groupby("unit_kind").unit.agg(set)
    assert set(by_kind.index) == {"frame", "sample"}
    assert by_kind["frame"] <= frames
    assert by_kind["sample"] == set(abl.sample_id)
    pooled = m[(m.condition == "all") & (m.arm == "treatment")]
    assert pooled.groupby(["metric", "setting"]).unit.nunique().max() <= len(frames)
    assert set(m.loc[m.unit_kind == "frame", "phase"]) == {"patching"}
    assert {"ablation_probe_p_true", "ablation_probe_p_true_refit", "ablation_lean"} <= set(
        m.metric
    )
    assert set(m.loc[m.unit_kind == "sample", "setting"]) == {
        "ablation=direction k=1",
        "ablation=subspace k=2",
        "ablation=direction k=1 control=shuffled_mean_diff",
    }


# ---------------------------------------------------------------- controls from the train split
def test_moment_rows_reproduce_the_covariance_and_the_matched_draw():
    rng = np.random.default_rng(5)
    n, d = 900, 24
    x = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) * np.exp(-np.arange(d) / 4)) + 7.0
    xc = x - x.mean(0)
    cov = xc.T @ xc / (n - 1)
    rows = patching.moment_rows(cov)
    assert rows.shape == (d + 1, d)
    np.testing.assert_allclose(rows.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(rows.T @ rows / d, cov, atol=1e-10 * np.abs(cov).max())
    target = np.linalg.svd(xc, full_matrices=False)[2][2] + 0.2 * rng.normal(size=d)
    w = rand.matched_unit(rows, target, rand.rng(0, 1))
    t = target / np.linalg.norm(target)
    np.testing.assert_allclose((w @ cov @ w) / (t @ cov @ t), 1.0, rtol=1e-6)
    # the same variance on the tokens themselves
    np.testing.assert_allclose(((xc @ w) ** 2).sum() / ((xc @ t) ** 2).sum(), 1.0, rtol=1e-6)


def test_matched_controls_carry_the_direction_variance_of_the_train_tokens(bridges, tiny_rows):
    """The matched control of a high-variance direction carries its variance over the train
    split's hook_resid_pre tokens (recorded independently here) within 5%; an isotropic one
    carries far less; the mean-ablation centre is the train tokens' mean."""
    bridge = bridges["llama"]
    d, layers = bridge.cfg.d_model, [1, 2]
    toks = dict(
        zip(
            [r["sample_id"] for r in tiny_rows],
            tokens.tokenize(bridge.tokenizer, tiny_rows, True),
            strict=True,
        )
    )
    train = [r for r in tiny_rows if r["split"] == "train"]
    patcher = patching.Patcher(bridge, _metric(bridge).flat_ids(), resid_layers=layers)
    with torch.no_grad(), patcher.attached():
        stats = patching.record_train_stats(
            patcher, train, toks, 0, layers, "last", "mean", batch_size=5
        )
        acts, _ = patching.record_activations(patcher, [toks[r["sample_id"]] for r in train], 0)

    def tokens_at(layer):  # the train tokens without BOS, [n_tokens, d]
        rows = zip(acts, train, strict=True)
        x = [a[("resid", layer)][toks[r["sample_id"]].first :].numpy() for a, r in rows]
        return np.concatenate(x).astype(np.float64)

    def var(xc, b):
        return float(((xc @ np.atleast_2d(b).T) ** 2).sum() / (len(xc) - 1))

    rng = np.random.default_rng(0)
    directions, subspaces = {}, {}
    for layer in layers:
        x = tokens_at(layer)
        np.testing.assert_allclose(stats.centre[layer], x.mean(0), atol=1e-4)
        pcs = np.linalg.svd(x - x.mean(0), full_matrices=False)[2]
        directions[layer] = pcs[0] + 0.5 * pcs[3] + 0.1 * rng.normal(size=d)  # high variance
        subspaces[layer] = pcs[:4]
    abls = patching.ablation_set(
        directions, subspaces, layers, 2, 3, stats, "anger", "neutral", 1, 0,
        controls=("isotropic", "shuffled_mean_diff"),
    )  # fmt: skip
    by = {}
    for a in abls:
        by.setdefault(a.name, []).append(a)
    assert len(by["matched_direction"]) == 3 and by["matched_direction"][0].refit
    for j, layer in enumerate(layers):
        xc = tokens_at(layer) - tokens_at(layer).mean(0)
        want = var(xc, by["direction"][0].bases[j])
        for a in by["matched_direction"]:
            assert abs(var(xc, a.bases[j]) / want - 1) < 0.05, (layer, a.seed)
            assert abs(np.linalg.norm(a.bases[j]) - 1) < 1e-9
        iso = np.mean([var(xc, a.bases[j]) for a in by["random_direction"]])
        assert iso < 0.5 * want  # the control the matched one replaces
        # seeds and layers draw different controls
        assert (
            abs(by["matched_direction"][0].bases[j] @ by["matched_direction"][1].bases[j].T) < 0.99
        )
    assert not np.allclose(by["matched_direction"][0].bases[0], by["matched_direction"][0].bases[1])
    table = pd.DataFrame(patching.control_variances({"anger": abls}, stats, layers))
    matched = table[table.ablation == "matched_direction"]
    assert (abs(matched.variance_ratio - 1) < 1e-6).all()


def test_refit_probe_loses_a_planted_direction_but_not_a_matched_one():
    """Tigges et al. 2023: ablating the information-carrying direction defeats a probe refit
    on ablated train features; ablating a random direction matched in variance (it lies on the
    high-variance nuisance axes) does not."""
    rng = np.random.default_rng(11)
    d, n = 32, 600
    u = np.eye(d)[5]
    scale = np.ones(d)
    scale[:3] = 4.0  # high-variance axes that carry no label
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    X = rng.normal(size=(n, d)) * scale + np.outer(2 * y - 1, u) * 1.5
    train = np.arange(n) % 2 == 0
    centre = X[train].mean(0)
    xc = X[train] - centre
    cov = xc.T @ xc / (train.sum() - 1)

    def ablate(basis):
        x = torch.as_tensor(X[None], dtype=torch.float64)
        b = torch.as_tensor(np.atleast_2d(basis)[None], dtype=torch.float64)
        mask = torch.ones(1, n, dtype=torch.float64)
        return patching.project_out(x, b, mask, torch.as_tensor(centre))[0].numpy()

    def refit_accuracy(basis):
        xa = ablate(basis)
        probe = patching.Probe.fit(xa[train], y[train])
        return ((probe.prob(xa[~train]) >= 0.5) == y[~train]).mean()

    base = refit_accuracy(np.zeros(d))
    planted = refit_accuracy(u)
    matched = [rand.matched_unit(patching.moment_rows(cov), u, rand.rng(0, s)) for s in range(3)]
    for w in matched:
        assert abs((w @ cov @ w) / (u @ cov @ u) - 1) < 0.05
    kept = [refit_accuracy(w) for w in matched]
    assert base > 0.9
    assert planted < 0.62  # the information is gone: the refit probe is near chance
    assert min(kept) > base - 0.06  # a matched direction leaves it


def test_shuffled_mean_diff_uses_the_contrast_samples_only():
    rng = np.random.default_rng(2)
    labels = np.array(["anger"] * 60 + ["neutral"] * 60 + ["apology"] * 60)
    X = rng.normal(size=(180, 8))
    X[:60, 0] += 3.0  # a real anger - neutral difference along axis 0
    true = X[:60].mean(0) - X[60:120].mean(0)
    g = patching.shuffled_mean_diff
    a = g(X, labels, "anger", "neutral", "vs_neutral", rand.rng(0, 3, 0))
    np.testing.assert_allclose(np.linalg.norm(a), 1.0)
    assert abs(a @ true) / np.linalg.norm(true) < 0.6  # shuffled labels lose the difference
    np.testing.assert_array_equal(
        a, g(X, labels, "anger", "neutral", "vs_neutral", rand.rng(0, 3, 0))
    )
    moved = X.copy()
    moved[120:] += 50.0  # apology samples are not in the vs_neutral contrast
    np.testing.assert_allclose(
        g(moved, labels, "anger", "neutral", "vs_neutral", rand.rng(0, 3, 0)), a
    )
    assert not np.allclose(g(moved, labels, "anger", "neutral", "probe", rand.rng(0, 3, 0)), a)
    layered = np.stack([X, 2 * X], axis=1)  # [n, L, d]: one permutation for every layer
    both = g(layered, labels, "anger", "neutral", "vs_neutral", rand.rng(0, 3, 0))
    np.testing.assert_allclose(both[0], both[1])
    with pytest.raises(patching.PatchingError, match="direction_contrast"):
        g(X, labels, "anger", "neutral", "other", rand.rng(0))


def test_pick_samples_takes_one_version_per_frame(tiny_rows):
    picks = patching.pick_samples(tiny_rows, LABELS, "train", 50, np.random.default_rng(0))
    chosen = [r for label in LABELS for r in picks[label]]
    frames = [r["frame_id"] for r in chosen if r.get("frame_id")]
    assert frames and len(frames) == len(set(frames))
    assert all(r["split"] == "train" for r in chosen)
    assert all(r["label"] == label for label in LABELS for r in picks[label])


def test_direction_contrast_reads_its_store_variable_or_names_the_rule(tmp_path):
    from circuitflow import store

    hooks, conds, d = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], ["anger"], 4
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(2, 3, 1, d))
    coords = {"sample": np.array(["s0"]), "label": np.array(["anger"])}
    coords |= {"split": np.array(["train"]), "frame_id": np.array([""])}
    ds = store.vectors_dataset(
        hooks,
        conds,
        coords,
        {
            "direction": (["hook", "position", "condition", "d_model"], unit),
            "subspace": (
                ["hook", "position", "condition", "component", "d_model"],
                rng.normal(size=(2, 3, 1, 3, d)),
            ),
        },
        {},
    )
    store.write_dataset(tmp_path / "v.zarr", ds)
    directions, subspaces = patching.read_vectors(tmp_path / "v.zarr", conds, [1, 5], "mean", 2)
    np.testing.assert_allclose(directions["anger"][1], unit[1, 2, 0], rtol=1e-6)
    assert subspaces["anger"][1].shape == (2, d) and 5 not in directions["anger"]
    with pytest.raises(patching.PatchingError) as err:
        patching.read_vectors(tmp_path / "v.zarr", conds, [1], "mean", 2, "vs_others")
    msg = str(err.value)
    assert "\n" not in msg and "'direction_vs_others'" in msg and "rule directions" in msg


def test_patch_config_checks_the_new_keys():
    with pytest.raises(ValueError, match="patching.direction_contrast"):
        patching.PatchConfig(direction_contrast="vs_all")
    with pytest.raises(ValueError, match="patching.refit_samples"):
        patching.PatchConfig(control_samples=4, refit_samples=5)
    with pytest.raises(ValueError, match="patching.ablation_controls"):
        patching.PatchConfig(ablation_controls=("gaussian",))
    assert patching.PatchConfig().position_sets == ("all",)
    assert patching.PatchConfig().head_ablations == ("mean",)
    with pytest.raises(ValueError, match="patching.head_ablations: 'resample' not in zero, mean"):
        patching.PatchConfig(head_ablations=("resample",))


def test_head_and_residual_units_are_frames():
    """Two conditions of one frame are one unit: the pooled head rows average them."""
    rows = []
    for frame, conds in (("f1", ("anger", "apology")), ("f2", ("anger",))):
        for c in conds:
            rows.append(
                {
                    "frame_id": frame, "sample_id": f"{frame}.{c}", "clean_id": f"{frame}.{c}",
                    "condition": c, "layer": 1, "head": 0, "hook": "blocks.1.attn.hook_z",
                    "recovery": 0.5, "zero_effect": 0.1, "mean_effect": 0.2,
                    "small_denominator": False, "direction": "clean_to_corrupted",
                    "position": "last",
                }
            )  # fmt: skip
    table = pd.DataFrame(rows)
    for m in (patching.head_measurements(table), patching.residual_measurements(table)):
        assert set(m.unit) == {"f1", "f2"} and set(m.unit_kind) == {"frame"}
    heads = patching.head_measurements(table)
    pooled = heads[(heads.condition == "all") & (heads.arm == "treatment")]
    assert (
        pooled.groupby("metric").unit.apply(list).map(sorted).tolist() == [["f1", "f1", "f2"]] * 3
    )
