"""Attribution patching (AtP): exact on a linear metric, the gradients of the real hooks, the
screen -> exact hand-off and the agreement with exact patching on tiny random models."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from test_patching import LABELS, TINY_WORDS
from tiny_models import ARCHS

from circuitflow import models, patching
from circuitflow.core.hooks import attach_bridge
from circuitflow.core.tokens import Tokenized
from circuitflow.patching import attribution as atp


@pytest.fixture(scope="module")
def bridges(tiny_model_dirs):
    return {arch: models.load_bridge(tiny_model_dirs[arch]) for arch in ARCHS}


def _tok(ids, span):
    ids = np.asarray(ids)
    return Tokenized(ids=ids, span=np.asarray(span), first=1)


def _pair(n_pre=3, n_phrase=2, n_suf=4, seed=0, vocab=300):
    rng = np.random.default_rng(seed)
    pre, suf = rng.integers(3, vocab, n_pre), rng.integers(3, vocab, n_suf)
    a, b = rng.integers(3, vocab, n_phrase), rng.integers(3, vocab, n_phrase)
    clean = _tok(np.r_[1, pre, a, suf], np.arange(1 + n_pre, 1 + n_pre + n_phrase))
    corrupted = _tok(np.r_[1, pre, b, suf], np.arange(1 + n_pre, 1 + n_pre + n_phrase))
    return patching.align_pair("f0", "anger", "f0.anger", "f0.neutral", clean, corrupted)


def test_atp_equals_exact_patching_on_a_metric_linear_in_the_activations():
    """metric = sum_l <W_l, a_l> (linear): the AtP delta of every site is the exact change of
    the metric when the site's source positions are written into the destination."""
    rng = np.random.default_rng(0)
    pair = _pair()
    L, d = 3, 5
    Tc, Tx = len(pair.clean.ids), len(pair.corrupted.ids)
    acts = {
        sid: {(node, layer): torch.as_tensor(rng.normal(size=(T, d))) for node in ("resid", "mlp")
              for layer in range(L)}
        for sid, T in (("clean", Tc), ("corr", Tx))
    }  # fmt: skip
    W = {key: torch.as_tensor(rng.normal(size=v.shape)) for key, v in acts["corr"].items()}

    def metric(a):
        return sum(float((W[k] * a[k]).sum()) for k in W)

    out = atp.site_deltas(acts["clean"], acts["corr"], W, pair, "clean_to_corrupted", L)
    sites, _ = patching.pair_sites(pair, "clean_to_corrupted")
    assert len(out) == 2 * len(sites)
    for (node, position, n, delta), site in zip(out, sites * 2, strict=True):
        assert position == site.position and n == len(site.dest)
        for layer in range(L):
            patched = {k: v.clone() for k, v in acts["corr"].items()}
            patched[(node, layer)][site.dest] = acts["clean"][(node, layer)][site.src]
            exact = metric(patched) - metric(acts["corr"])
            assert delta[layer] == pytest.approx(exact, rel=1e-10, abs=1e-10)


def test_head_deltas_are_exact_on_a_linear_metric():
    rng = np.random.default_rng(1)
    pair = _pair(n_suf=3)
    L, H, dh = 2, 3, 4
    T = len(pair.clean.ids)
    z = {s: {("z", layer): torch.as_tensor(rng.normal(size=(T, H, dh))) for layer in range(L)}
         for s in ("clean", "corr")}  # fmt: skip
    g = {k: torch.as_tensor(rng.normal(size=v.shape)) for k, v in z["corr"].items()}
    mean_z = {layer: torch.as_tensor(rng.normal(size=(H, dh))) for layer in range(L)}
    out = atp.head_deltas(z["clean"], z["corr"], g, g, pair, mean_z, L)
    suffix = np.arange(T - 3, T)
    for layer in range(L):
        for h in range(H):
            key = ("z", layer)
            diff = z["clean"][key][suffix, h] - z["corr"][key][suffix, h]
            assert out["head_patch"][layer, h] == pytest.approx(
                float((diff * g[key][suffix, h]).sum())
            )
            zero = -(z["clean"][key][:, h] * g[key][:, h]).sum()
            assert out["zero_ablation"][layer, h] == pytest.approx(float(zero))
            mean = ((mean_z[layer][h] - z["clean"][key][:, h]) * g[key][:, h]).sum()
            assert out["mean_ablation"][layer, h] == pytest.approx(float(mean))


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_gradients_match_small_exact_patches(bridges, arch):
    """Through the real hooks: the exact lean change of patching a small step eps of the
    clean activation into the corrupted run, divided by eps, tends to the AtP estimate
    (residual sites and heads), so the gradient pass differentiates what exact patching edits."""
    bridge = bridges[arch]
    metric = patching.metric_tokens(bridge.tokenizer, TINY_WORDS, LABELS, "neutral")
    pair = _pair(vocab=bridge.cfg.d_vocab)
    runner = atp.GradientRunner(bridge, metric)
    L = bridge.cfg.n_layers
    with attach_bridge(bridge, runner.hooks(False)):
        r_clean, r_corr = runner.forward(pair.clean.ids), runner.forward(pair.corrupted.ids)
        g = runner.gradients(r_corr, 1)
    clean, corr = atp.detached(r_clean), atp.detached(r_corr)
    sites, _ = patching.pair_sites(pair, "clean_to_corrupted")
    deltas = atp.site_deltas(clean, corr, g, pair, "clean_to_corrupted", L)
    est = {(n, p): d for n, p, _, d in deltas}
    patcher = patching.Patcher(
        bridge, metric.flat_ids(), resid_layers=range(L), head_layers=range(L)
    )
    eps = 1e-3
    base = float(r_corr["leans"][0, 1].detach())
    with torch.no_grad(), patcher.attached():
        for layer in range(L):
            site = sites[-1]  # the last token
            value = corr[("resid", layer)][site.dest] + eps * (
                clean[("resid", layer)][site.src] - corr[("resid", layer)][site.dest]
            )
            plan = {
                ("resid", layer): (torch.tensor([0]), torch.as_tensor(site.dest), value.float())
            }
            lean = patching.lean(patcher.forward(torch.as_tensor(pair.corrupted.ids[None]),
                                                 plan=plan), metric)[0, 1]  # fmt: skip
            assert (lean - base) / eps == pytest.approx(est[("resid", site.position)][layer],
                                                        rel=0.05, abs=1e-3)  # fmt: skip
        heads = atp.head_deltas(clean, corr, g, None, pair, {}, L)["head_patch"]
        T = len(pair.corrupted.ids)
        dpos = np.arange(T - pair.n_suffix, T)
        layer, h = L - 1, 0
        key = ("z", layer)
        value = corr[key][dpos, h] + eps * (clean[key][dpos, h] - corr[key][dpos, h])
        plan = {key: (torch.zeros(len(dpos), dtype=torch.long), torch.as_tensor(dpos),
                      torch.full((len(dpos),), h), value.float())}  # fmt: skip
        lean = patching.lean(patcher.forward(torch.as_tensor(pair.corrupted.ids[None]), plan=plan),
                             metric)[0, 1]  # fmt: skip
        assert (lean - base) / eps == pytest.approx(heads[layer, h], rel=0.05, abs=1e-3)


def _screen_table():
    """AtP rows with planted |recovery| per site and head (screen split train)."""
    out = []
    for pair in range(4):
        for layer in range(3):
            for position in ("last", "post_phrase"):
                rec = 1.0 if (layer, position) == (2, "last") else 0.1 * layer
                out.append({"split": "train", "clean_id": f"p{pair}", "patch": "clean_to_corrupted",
                            "node": "resid", "layer": layer, "head": -1, "position": position,
                            "recovery": rec + 0.01 * pair, "small_denominator": False,
                            "grad_drop_score": np.nan})  # fmt: skip
            for h in range(4):
                rec = 0.9 if (layer, h) == (1, 2) else 0.05 * h
                out.append({"split": "train", "clean_id": f"p{pair}", "patch": "head_patch",
                            "node": "z", "layer": layer, "head": h, "position": "suffix",
                            "recovery": rec, "small_denominator": False,
                            "grad_drop_score": np.nan})  # fmt: skip
    out += [{**out[0], "split": "test", "recovery": 99.0}]  # the test split never chooses
    return pd.DataFrame(out)


def test_screen_picks_the_configured_top_k_and_a_seeded_check():
    table = _screen_table()
    cfg = atp.AttributionConfig(top_k_sites=2, top_k_heads=3, check_sites=1, check_heads=2)
    s = atp.screen(table, cfg, seed=0)
    sites, heads = s[s.kind == "site"], s[s.kind == "head"]
    assert len(sites) == 6 and len(heads) == 12
    assert (sites.chosen == "top").sum() == 2 and (sites.chosen == "check").sum() == 1
    assert (heads.chosen == "top").sum() == 3 and (heads.chosen == "check").sum() == 2
    top = sites[sites["rank"] == 1].iloc[0]
    assert (top.layer, top.position) == (2, "last") and top.score == pytest.approx(1.015)
    assert (heads[heads["rank"] == 1][["layer", "head"]].to_numpy() == [[1, 2]]).all()
    chosen = atp.chosen_sites(s)
    assert len(chosen) == 3 and (2, "last") in chosen
    assert len(atp.chosen_heads(s)) == 5 and (1, 2) in atp.chosen_heads(s)
    again = atp.screen(table, cfg, seed=0)
    pd.testing.assert_frame_equal(s, again)
    other = atp.screen(table, cfg, seed=5)
    assert atp.chosen_heads(other) != atp.chosen_heads(s) or atp.chosen_sites(
        other
    ) != atp.chosen_sites(s)


def test_attribution_config_errors():
    with pytest.raises(patching.PatchingError.__bases__[0], match="screen_split"):
        atp.AttributionConfig(screen_split="all")
    with pytest.raises(ValueError, match="patching.attribution.top_k_heads: must be >= 1"):
        atp.AttributionConfig(top_k_heads=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_agrees_with_exact_patching_and_ranks_the_same_top_site(bridges, tiny_rows, arch):
    """Full pipeline on a tiny random model: the AtP grid, the screen, exact patching of the
    screened sites and heads, and the exact full grid on the validation frames. The top
    residual site by mean recovery is the same for AtP and exact patching, and their rank
    correlation over the full grid is high."""
    bridge = bridges[arch]
    L, d = bridge.cfg.n_layers, bridge.cfg.d_model
    att = {"screen_frames": 3, "top_k_sites": 3, "top_k_heads": 4, "check_sites": 1,
           "check_heads": 1, "validation_frames": 3}  # fmt: skip
    cfg = patching.PatchConfig(
        n_frames=3, split="test", mean_samples=4, min_denominator=0.0, metric_words=TINY_WORDS,
        ablation_samples=2, random_seeds=1, subspace_k=2, control_samples=4, refit_samples=3,
        attribution=att,
    )  # fmt: skip
    run = patching.run_attribution(bridge, tiny_rows, cfg, LABELS, "neutral", progress=False)
    table = run["attribution"]
    assert list(table.columns) == atp.ATTRIBUTION_COLUMNS
    n_pairs = run["info"]["n_pairs"]
    H = bridge.cfg.n_heads
    for patch in atp.HEAD_PATCHES:
        assert (table["patch"] == patch).sum() == n_pairs * L * H
    s = atp.screen(table, atp.AttributionConfig(**att), 0)
    rng = np.random.default_rng(0)
    conds = LABELS[:3]
    dirs = {c: {layer: rng.normal(size=d) for layer in range(L)} for c in conds}
    subs = {c: {layer: rng.normal(size=(4, d)) for layer in range(L)} for c in conds}
    probe = {c: (rng.normal(size=(20, d)), np.r_[np.zeros(10), np.ones(10)].astype(int))
             for c in conds}  # fmt: skip
    out = patching.run_text_patching(
        bridge, tiny_rows, cfg, LABELS, "neutral", dirs, subs, probe, progress=False,
        screen_table=s, atp=table,
    )  # fmt: skip
    residual, heads = out["residual"], out["heads"]
    assert set(zip(residual.layer, residual.position, strict=True)) <= atp.chosen_sites(s)
    assert set(zip(heads.layer, heads["head"], strict=True)) == set(atp.chosen_heads(s))
    val = out["validation"]
    assert set(val["residual"].layer) == set(range(L))
    assert len(val["heads"]) == out["info"]["n_validation_pairs"] * L * H
    agree = val["agreement"].set_index("scope")
    assert agree.loc["all", "spearman"].iloc[0] > 0.8  # residual grid
    assert agree.loc["all", "spearman"].iloc[1] > 0.8  # every pair x head
    v = val["residual"][val["residual"].direction == "clean_to_corrupted"]
    a = table[(table.node == "resid") & (table.patch == "clean_to_corrupted")]
    a = a[a.clean_id.isin(set(v.clean_id))]
    exact_top = v.groupby(["layer", "position"]).recovery.mean().idxmax()
    atp_top = a.groupby(["layer", "position"]).recovery.mean().idxmax()
    assert exact_top == atp_top
    m = patching.attribution_measurements(table, run["info"]["exact_frames"])
    assert set(m.metric) == {
        "atp_recovery_clean_to_corrupted", "atp_recovery_corrupted_to_clean",
        "atp_mlp_recovery_clean_to_corrupted", "atp_mlp_recovery_corrupted_to_clean",
        "atp_head_patch_recovery",
    }  # fmt: skip
    assert (m.unit_kind == "frame").all() and set(m.arm) == {"treatment", "baseline"}


def test_screened_sites_a_pair_lacks_give_empty_tables_with_every_column():
    """A screen chosen on train frames may name sites (phrase tokens) no test pair has: exact
    patching then writes empty tables that the measurements and summary still read."""
    from types import SimpleNamespace

    metric = SimpleNamespace(conditions=("anger",))
    residual = patching.patch_residual(None, [], {}, {}, metric, [0], only={(0, "phrase_first")})
    heads = patching.patch_heads(SimpleNamespace(device="cpu", n_heads=2), [], {}, {}, metric,
                                 [0], {}, heads=[(0, 1)])  # fmt: skip
    assert list(residual.columns) == patching.residual.RESIDUAL_COLUMNS and len(residual) == 0
    assert residual["recovery"].dtype == float and heads["zero_effect"].dtype == float
    assert len(patching.residual_measurements(residual)) == 0
    assert len(patching.head_measurements(heads)) == 0
    # as patch_model reads them back from CSV (no rows: every column is text)
    back = [pd.read_csv(io.StringIO(t.to_csv(index=False))) for t in (residual, heads)]
    assert len(patching.residual_measurements(back[0])) == 0
    assert len(patching.head_measurements(back[1])) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_gradients_equal_one_sentence_passes(bridges, arch):
    """Right-padded rows of one pass give each sentence's own nodes and gradients: a frame
    is one forward and one backward pass however many conditions share its neutral sentence."""
    bridge = bridges[arch]
    metric = patching.metric_tokens(bridge.tokenizer, TINY_WORDS, LABELS, "neutral")
    short, long_ = _pair(vocab=bridge.cfg.d_vocab), _pair(n_pre=6, seed=1, vocab=bridge.cfg.d_vocab)
    sentences = [long_.clean.ids, short.corrupted.ids, short.corrupted.ids]
    conditions = [0, 1, 0]
    runner = atp.GradientRunner(bridge, metric)
    with attach_bridge(bridge, runner.hooks(False)):
        run = runner.forward_batch(sentences)
        batched = runner.gradients_batch(run, conditions)
        for r, (ids, ci) in enumerate(zip(sentences, conditions, strict=True)):
            one = runner.forward(ids)
            grad = runner.gradients(one, ci)
            assert run["lengths"][r] == len(ids)
            torch.testing.assert_close(run["leans"][r], one["leans"][0], rtol=1e-5, atol=1e-6)
            for key, value in atp.detached(one).items():
                torch.testing.assert_close(atp.detached(run, r)[key], value, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(batched[r][key], grad[key], rtol=1e-4, atol=1e-6)
    assert not torch.equal(batched[1][("resid", 0)], batched[2][("resid", 0)])  # per condition
