"""The report page: verdict sentences computed from constructed effect tables (a planted
effect, a null table, n < headline_n rows, a phase that did not run), the HTML's sections and
links, a feature card from a tiny SAE and a tiny activation store, and the page as a
Snakemake target."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from circuitflow import report, sae, stats, store
from circuitflow.report.questions import questions

QUESTIONS = {q.key: q for q in questions()}
KINDS = {"emotion": "prompts", "photos": "images", "captions": "captions"}


def _vectors_row(layer, condition, p, n=30, estimate=1.2, **kw):
    row = {
        "phase": "vectors",
        "dataset": "emotion",
        "model": "m",
        "layer": layer,
        "site": "hook_resid_post",
        "position": "last",
        "condition": condition,
        "setting": "contrast=vs_neutral",
        "comparison": "vs_baseline",
        "metric": "projection_on_mean_diff",
        "family": "vectors/emotion/m/projection_on_mean_diff/vs_baseline",
        "design": "independent",
        "test": "welch_t by sample",
        "n_treatment": n,
        "n_baseline": n,
        "mean_treatment": 1.0,
        "sd_treatment": 1.0,
        "mean_baseline": 0.0,
        "sd_baseline": 1.0,
        "effect_size": "hedges_g",
        "estimate": estimate,
        "ci_low": estimate - 0.5,
        "ci_high": estimate + 0.5,
        "ci_method": "bca_bootstrap",
        "statistic": 4.0,
        "df": 2 * n - 2.0,
        "p": p,
        "note": "",
    }
    row.update(kw)
    return row


def _head_row(layer, head, p, n=32, estimate=1.0, **kw):
    return _vectors_row(
        layer, "all", p, n=n, estimate=estimate, phase="patching", site="attn.hook_z",
        position="suffix", setting=f"head={head}", metric="head_patch_recovery",
        family="patching/emotion/m/head_patch_recovery/vs_baseline", design="paired",
        test="ttest_rel by frame", effect_size="cohens_dz", **kw,
    )  # fmt: skip


@pytest.fixture
def planted():
    """Layers 0-4 x two emotions; both emotions separate at layers 2 and 3, only anger at 4."""
    rows = []
    for layer in range(5):
        for condition in ("anger", "gratitude"):
            hit = layer in (2, 3) or (layer == 4 and condition == "anger")
            rows.append(_vectors_row(layer, condition, 1e-8 if hit else 0.6,
                                     estimate=1.5 if hit else 0.1))  # fmt: skip
    return stats.finalize(rows)


def test_planted_effect_is_yes_with_its_n_and_null(planted):
    a = report.answer(planted, QUESTIONS["directions"], KINDS)
    assert a.status == "yes"
    sentence = a.verdict.sentence
    # layer 4 has only one emotion: the claim asks for every emotion
    assert sentence.startswith("Yes at 2 of 5 layers in m (L2-L3): separation of every emotion")
    assert "null: no difference from neutral test samples" in sentence
    assert "Welch t, BH q < 0.05, n = 30 vs 30 samples" in sentence
    assert a.verdict.counts == {"m": (2, 5)}
    # the other claims of the question have no rows here
    assert [v.status for _, v in a.also] == ["not_run", "not_run"]
    assert a.also[0][1].sentence.startswith("Not run: effect_sizes.csv has no vectors rows")


def test_null_table_is_no():
    table = stats.finalize(
        [_vectors_row(layer, c, 0.5, estimate=0.05) for layer in range(4) for c in ("anger", "apology")]
    )  # fmt: skip
    a = report.answer(table, QUESTIONS["directions"], KINDS)
    assert a.status == "no"
    assert a.verdict.sentence.startswith("No: separation of every emotion's test prompts")
    assert "at none of 4 layers in m" in a.verdict.sentence
    assert "no headline row with BH q < 0.05" in a.verdict.sentence
    head, flagged = report.supporting_rows(a.verdict.rows)
    assert len(head) == 8 and flagged.empty  # the smallest p shown, nothing flagged


def test_small_n_rows_are_flagged_and_never_headlines():
    # head 1 (n = 32) is a modest effect; heads 2 and 3 are larger but have 6 frames
    rows = [_head_row(5, 1, 1e-4, estimate=0.9), _head_row(5, 0, 0.7, estimate=0.05)]
    rows += [_head_row(6, h, 1e-9, n=6, estimate=9.0) for h in (2, 3)]
    table = stats.finalize(rows)
    a = report.answer(table, QUESTIONS["heads"], KINDS)
    assert a.status == "yes"
    assert a.verdict.sentence.startswith("Yes at 1 of 4 screened heads in m (L5H1)")
    assert "n = 32 frames" in a.verdict.sentence
    head, flagged = report.supporting_rows(a.verdict.rows)
    assert list(head.setting) == ["head=1"]
    assert sorted(flagged.setting) == ["head=2", "head=3"] and flagged.small_n.all()

    only_small = stats.finalize([_head_row(6, h, 1e-9, n=6, estimate=9.0) for h in (2, 3)])
    b = report.answer(only_small, QUESTIONS["heads"], KINDS)
    assert b.status == "not_established"
    assert "only in rows with n < 10, which are not headlines" in b.verdict.sentence
    assert "n = 6 frames" in b.verdict.sentence
    head, flagged = report.supporting_rows(b.verdict.rows)
    assert head.empty and len(flagged) == 2
    # the statistics phase's flag in note counts too, whatever n says
    noted = stats.finalize([_head_row(6, 2, 1e-9, note="6 units < headline_n 10: not a headline")])
    assert report.small_n_mask(noted).tolist() == [True]


def test_summary_lists_no_small_n_row_as_largest():
    rows = [_head_row(5, 1, 1e-4, estimate=0.9), _head_row(6, 2, 1e-9, n=6, estimate=9.0)]
    text = report.summary_markdown(stats.finalize(rows))
    line = next(x for x in text.splitlines() if x.startswith("- head_patch_recovery"))
    assert "Largest: all at layer 5" in line and "= 9.00" not in line
    assert "1 of them with n < 10 units (not headlines" in line


def test_permutation_p_at_its_floor_is_not_a_no():
    """20 tests at p = 1/201 (200 shuffled pairings) in a family of 1080 survive no BH: the
    verdict says more draws are needed, not that the overlap is absent."""
    rows = [
        _vectors_row(
            layer, "anger", 1 / 201, n=1, estimate=4.0, phase="alignment",
            model="a__b", site="hook_resid_pre", setting=f"method=ridge k=1 layer_b={layer}",
            comparison="vs_shuffled_pairs", metric="overlap_after", design="permutation",
            test="permutation_empirical_p", effect_size="z_null", n_baseline=200,
            family="alignment/emotion/a__b/overlap_after/vs_shuffled_pairs", n_family=1080,
        )
        for layer in range(20)
    ]  # fmt: skip
    table = stats.finalize(rows)
    assert (table.p_fdr_bh > 0.05).all()
    a = report.answer(table, QUESTIONS["aligned"], KINDS)
    assert a.status == "not_established"
    assert "20 tests sit at the smallest p that 200 null draws allow (1/201)" in a.verdict.sentence
    assert "200 null draws per test" in a.verdict.sentence


def test_a_phase_that_did_not_run_says_so(planted):
    a = report.answer(planted, QUESTIONS["steering"], KINDS)
    assert a.status == "not_run"
    assert a.verdict.sentence.startswith("Not run: effect_sizes.csv has no steering rows")


def test_report_page_has_every_section_and_its_links(tmp_path, planted):
    table = pd.concat(
        [planted, stats.finalize([_head_row(5, 1, 1e-4), _head_row(6, 2, 1e-9, n=6, estimate=9.0)])],
        ignore_index=True,
    )  # fmt: skip
    effects = tmp_path / "stats" / "effect_sizes.csv"
    effects.parent.mkdir()
    table.to_csv(effects, index=False)
    card_dir = (
        tmp_path / "report" / "features" / "emotion" / "m" / "blocks.1.hook_resid_post" / "topk"
    )
    cards = pd.DataFrame([{
        "condition": "anger", "feature": 7, "file": "anger_f7.html", "auroc_train": 0.9,
        "auroc_test": 0.88, "ci_low": 0.8, "ci_high": 0.95, "p_fdr_bh": 1e-6, "top_token": "grr",
        "dir": str(card_dir), "sae": "m blocks.1.hook_resid_post topk",
    }])  # fmt: skip
    index = tmp_path / "report" / "index.html"
    answers = report.write_report(
        table, index, tmp_path / "report" / "answers", effects, KINDS, cards=cards
    )
    html = index.read_text()
    assert len(answers) == len(QUESTIONS)
    for q in QUESTIONS.values():
        assert f'<h2 id="{q.key}">' in html and f'href="#{q.key}"' in html
        assert f'href="answers/{q.key}.csv"' in html
        assert (tmp_path / "report" / "answers" / f"{q.key}.csv").exists()
    assert 'href="../stats/effect_sizes.csv"' in html
    assert 'src="answers/directions.png"' in html and 'src="answers/heads.png"' in html
    assert not (tmp_path / "report" / "answers" / "steering.png").exists()  # not run
    assert "Yes at 2 of 5 layers in m (L2-L3)" in html
    assert 'class="flag"' in html and "n &lt; headline_n: not a headline" in html
    assert 'href="features/emotion/m/blocks.1.hook_resid_post/topk/anger_f7.html"' in html
    rows = pd.read_csv(tmp_path / "report" / "answers" / "heads.csv")
    assert rows.small_n.tolist() == [False, True] and rows.counts.tolist() == [True, False]


# ---------------------------------------------------------------- feature cards
WORDS = ["<bos>", "I", "am", "thank", "you", "late", "sorry", "."]


def _decode(ids):
    return "".join(("" if i == 0 else " ") + WORDS[t] for i, t in enumerate(ids))


@pytest.fixture
def tiny_sae_and_store(tmp_path):
    """An identity ReLU SAE on 4 dims (feature 0 = relu(x_0)) saved in the SAELens layout,
    and a store whose tokens group has x_0 = 5 on "thank" in gratitude samples, 0 elsewhere."""
    d = 4
    eye = torch.eye(d)
    training = {k: v for k, v in report_schema_sae().items() if k not in sae.WORKFLOW_KEYS}
    cfg = sae.SAETrainConfig(
        d_in=d, architecture="standard", seed=0, **{**training, "expansion_factor": 2}
    )
    model = sae.SAE(W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(2 * d),
                    W_dec=torch.cat([eye, -eye], 0), b_dec=torch.zeros(d), cfg=cfg)  # fmt: skip
    sae_dir = sae.save_sae(model, tmp_path / "sae", {"hook_name": "blocks.1.hook_resid_post"})
    texts = {"gratitude": [1, 2, 3, 4, 7], "neutral": [1, 2, 5, 7]}
    labels = ["gratitude"] * 4 + ["neutral"] * 4
    rows, x, sample_index, token_id = [], [], [], []
    for s, label in enumerate(labels):
        ids = texts[label]
        rows.append({"sample_id": f"s{s}", "label": label, "text": _decode(ids), "split": "test"})
        for t in ids:
            x.append([5.0 + s if t == 3 else 0.0, 0.5, -0.5, 0.0])
            sample_index.append(s)
            token_id.append(t)
    ds = store.vectors_dataset(
        ["blocks.1.hook_resid_post"], ["gratitude"],
        {"sample": np.array([r["sample_id"] for r in rows]), "label": np.array(labels),
         "split": np.array(["test"] * 8), "frame_id": np.array([""] * 8)},
        {}, {},
    )  # fmt: skip
    path = tmp_path / "acts.zarr"
    store.write_dataset(path, ds)
    import zarr

    group = zarr.open_group(path, mode="a").create_group(store.TOKENS_GROUP)
    group.create_array("blocks.1.hook_resid_post", data=np.array(x, dtype=np.float16))
    group.create_array("sample_index", data=np.array(sample_index, dtype=np.int64))
    group.create_array("position", data=np.arange(len(x), dtype=np.int64))
    group.create_array("token_id", data=np.array(token_id, dtype=np.int64))
    return sae_dir, path, rows


def report_schema_sae():
    from circuitflow.workflow import schema_defaults

    return schema_defaults("sae")


def test_feature_card_renders_from_a_tiny_sae_and_store(tmp_path, tiny_sae_and_store):
    sae_dir, path, samples = tiny_sae_and_store
    model = sae.load_sae(sae_dir)
    tokens = sae.read_tokens(path, "blocks.1.hook_resid_post")
    features = pd.DataFrame([
        {"feature": 0, "label": "gratitude", "auroc_train": 0.95, "fire_rate": 0.2, "selected": True},
        {"feature": 5, "label": "gratitude", "auroc_train": 0.7, "fire_rate": 0.9, "selected": True},
        {"feature": 1, "label": "gratitude", "auroc_train": 0.99, "fire_rate": 0.9, "selected": False},
    ])  # fmt: skip
    chosen = report.choose_features(features, 1, "neutral")
    assert chosen.feature.tolist() == [0]  # the best tested feature, not the untested one
    effects = stats.finalize([_vectors_row(
        1, "gratitude", 1e-3, n=4, estimate=1.0, phase="sae", position="token_max",
        setting="architecture=standard feature=0", metric="feature_max_activation",
        design="rank", test="mannwhitneyu_asymptotic by sample", effect_size="auroc",
        family="sae/emotion/m/feature_max_activation/vs_baseline",
    )])  # fmt: skip
    unembed = torch.zeros(len(WORDS), 4)
    unembed[3, 0], unembed[6, 0] = 2.0, -1.0  # "thank" promoted, "sorry" suppressed
    acts = model.encode(tokens.x).numpy()[:, [0]]
    logits = report.logit_effects(model.W_dec[[0]].numpy(), unembed, k=2)
    table = report.write_cards(
        tmp_path / "cards", feature_acts=acts, sample_index=tokens.sample_index,
        token_ids=tokens.token_id, samples=samples, chosen=chosen,
        effects=report.sae_effect_rows(effects, "m", 1, "hook_resid_post", "standard"),
        decode=_decode, logits=logits,
        meta={"model": "m", "hook": "blocks.1.hook_resid_post", "architecture": "standard",
              "dataset": "emotion", "baseline": "neutral"},
        n_samples=3, index_href="../index.html",
    )  # fmt: skip
    assert table.file.tolist() == ["gratitude_f0.html"] and table.top_token[0] == " thank"
    assert table.auroc_test[0] == 1.0
    html = (tmp_path / "cards" / "gratitude_f0.html").read_text()
    assert (tmp_path / "cards" / "gratitude_f0.png").exists()
    assert html.count('class="sample"') == 3  # neutral samples never fire: only gratitude ones
    assert "<b>s3</b>" in html  # the largest activation (5 + 3) comes first
    assert html.index("<b>s3</b>") < html.index("<b>s2</b>")
    assert 'title="8.000"\n> thank</span>' in html  # the activating token, fully shaded
    assert "rgba(230,111,81,1.00)" in html and "rgba(230,111,81,0.00)" in html
    assert "<code>thank</code></td>\n<td>+2.000</td>" in html
    assert "<code>sorry</code></td>\n<td>-1.000</td>" in html
    assert "AUROC 1.000" in html and "n = 4 vs 4 samples" in html
    assert "not a headline" in html  # 4 units < headline_n: flagged on the card too
    assert 'href="../index.html"' in html


def test_token_pieces_follow_the_decoded_prefix():
    assert report.token_pieces([1, 2, 3], _decode) == ["I", " am", " thank"]


def test_unembedding_of_a_prepared_folder(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    for arch in ("llama", "gemma3"):
        folder = tiny_model_dirs[arch]
        matrix, scale = report.unembedding(folder)
        hf = AutoModelForCausalLM.from_pretrained(folder)
        assert torch.equal(matrix.float(), hf.get_output_embeddings().weight.float())
        norm = hf.model.norm.weight.float()
        assert torch.allclose(scale, 1 + norm if arch == "gemma3" else norm)


# ---------------------------------------------------------------- the workflow target
def test_report_index_is_a_target_of_the_default_config():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "results/report/index.html",
         "--forcerun", "report_index", "feature_cards", "--quiet", "rules"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "report_index" in proc.stdout and "feature_cards" in proc.stdout
