"""circuitflow.evaluators: known scores on fixed sentences, hand-computed fluency values."""

import math

import numpy as np
import pytest
import torch
from tiny_models import build_tokenizer

from circuitflow import evaluators as ev
from circuitflow import models
from circuitflow.evaluators import Item, fluency, politeness
from circuitflow.workflow import config_schema


def _scores(names, texts, **kw):
    return ev.score_all(ev.build_evaluators(names, **kw), [Item(t) for t in texts])


# ---------------------------------------------------------------- sentiment
def test_sentiment_known_values():
    # published examples: VADER README, TextBlob quickstart, AFINN README
    s = _scores(
        ["sentiment"],
        [
            "VADER is smart, handsome, and funny.",
            "Textblob is amazingly simple to use. What great fun!",
            "This is utterly excellent!",
        ],
    )
    assert s["vader_compound"][0] == pytest.approx(0.8316)
    assert s["textblob_polarity"][1] == pytest.approx(0.39166666666666666)
    assert s["afinn"][2] == 3.0


def test_sentiment_equals_the_libraries():
    from afinn import Afinn
    from textblob import TextBlob
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["Thank you so much for your help!", "I hate this. I am furious.", ""]
    s = _scores(["sentiment"], texts)
    vader = SentimentIntensityAnalyzer()
    for i, t in enumerate(texts):
        assert s["vader_compound"][i] == vader.polarity_scores(t)["compound"]
        assert s["textblob_polarity"][i] == TextBlob(t).sentiment.polarity
        assert s["afinn"][i] == Afinn().score(t)
    assert s["vader_compound"][0] > 0 > s["vader_compound"][1]
    assert s["vader_compound"][2] == 0.0


# ---------------------------------------------------------------- emotion
def test_nrc_counts_per_emotion():
    s = _scores(["emotion"], ["Abandon, happy happy... FURIOUS!", ""])
    # NRC: abandon -> fear, negative, sadness; happy -> anticipation, joy, positive, trust;
    # furious -> anger, disgust, negative
    expected = {
        "anger": 1,
        "anticipation": 2,
        "disgust": 1,
        "fear": 1,
        "joy": 2,
        "negative": 2,
        "positive": 2,
        "sadness": 1,
        "surprise": 0,
        "trust": 2,
    }
    for emotion, count in expected.items():
        assert s[f"nrc_{emotion}"][0] == count, emotion
        assert s[f"nrc_{emotion}"][1] == 0


def test_words_tokenizer():
    assert ev.words("I'm SO sorry—it’s fine, 3 pm.") == [
        "i'm",
        "so",
        "sorry",
        "it's",
        "fine",
        "3",
        "pm",
    ]


# ---------------------------------------------------------------- politeness
@pytest.mark.parametrize(
    ("text", "fires", "silent"),
    [
        (
            "Could you please send the file? Thank you!",
            {"counterfactual_modal", "please", "gratitude"},
            {"please_start", "apologizing"},
        ),
        ("I'm sorry for the delay.", {"apologizing", "first_person_start"}, {"gratitude"}),
        ("Please do it now.", {"please_start"}, {"please"}),
        ("What is your name?", {"direct_question", "second_person"}, {"counterfactual_modal"}),
        (
            "So, can you fix it? I think it might work.",
            {"direct_start", "indicative_modal", "hedges"},
            set(),
        ),
        (
            "Hi there. By the way, we really liked it.",
            {"greeting", "indirect_btw", "first_person_plural", "factuality"},
            set(),
        ),
        ("Nice work on the draft.", {"deference"}, {"greeting"}),
        ("You should fix it.", {"second_person_start"}, {"second_person"}),
        ("Whatever happens, thanks a lot.", {"gratitude"}, {"direct_question"}),
    ],
)
def test_politeness_rules_fire(text, fires, silent):
    found = politeness.strategies(text)
    assert {k for k, v in found.items() if v} >= fires, found
    assert not any(found[k] for k in silent), found


def test_politeness_columns_score_and_markers():
    texts = [
        "Could you please send it? Thank you, I really appreciate it.",
        "I'm so sorry, I apologize.",
        "This is ridiculous! I hate it, I'm furious and fed up.",
        "",
    ]
    s = _scores(["politeness"], texts)
    assert s["marker_gratitude"].tolist() == [2, 0, 0, 0]  # "thank you", "appreciate"
    assert s["marker_apology"].tolist() == [0, 2, 0, 0]  # "sorry", "apologize"
    assert s["marker_anger"].tolist() == [0, 0, 4, 0]  # ridiculous, hate, furious, fed up
    # gratitude + please + counterfactual modal - factuality ("really") = 2
    assert s["polite_score"][0] == 2
    assert s["polite_score"][1] == 1  # apologizing
    assert s["polite_score"][3] == 0
    assert set(s) == set(politeness.PolitenessEvaluator.columns)


# ---------------------------------------------------------------- fluency
def test_distinct_2_and_repetition_by_hand():
    text = "The cat, the cat; the dog."
    # words: the cat the cat the dog -> 6 words, 3 unique; bigrams: (the cat) (cat the)
    # (the cat) (cat the) (the dog) -> 5 bigrams, 3 unique
    assert fluency.distinct_n(text, 2) == pytest.approx(3 / 5)
    assert fluency.repetition_rate(text) == pytest.approx(1 - 3 / 6)
    assert fluency.distinct_n("a b c d", 2) == 1.0
    assert fluency.repetition_rate("a b c d") == 0.0
    assert fluency.repetition_rate("go go go go") == pytest.approx(0.75)
    assert fluency.distinct_n("go go go go", 2) == pytest.approx(1 / 3)
    # too short to measure is the worst case, never NaN
    assert fluency.distinct_n("one", 2) == 0.0
    assert fluency.distinct_n("1111111111111111", 2) == 0.0  # one "word" of gibberish
    assert fluency.repetition_rate("") == 1.0


def test_perplexity_equals_direct_forward(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dirs["llama"]
    bridge = models.load_bridge(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    items = [
        Item("x", prompt_ids=[1, 10, 11, 12, 13], tokens=[20, 21, 22]),
        Item("y", prompt_ids=[1, 30], tokens=[40, 41, 42, 43, 44]),
        Item("", prompt_ids=[1, 30, 31], tokens=[]),
        Item("z", prompt_ids=[1, 50, 51, 52], tokens=[60]),
    ]
    got = fluency.perplexities(bridge, items, batch_size=8)
    for i, it in enumerate(items):
        if not it.tokens:
            assert math.isnan(got[i])
            continue
        seq = torch.tensor([it.prompt_ids + it.tokens])
        with torch.no_grad():
            logp = torch.log_softmax(hf(seq).logits[0].float(), -1)
        n, P = len(it.tokens), len(it.prompt_ids)
        nll = -torch.stack([logp[P - 1 + k, it.tokens[k]] for k in range(n)]).mean()
        assert got[i] == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    one_by_one = [fluency.perplexities(bridge, [it], batch_size=1)[0] for it in items]
    np.testing.assert_allclose(got, one_by_one, rtol=1e-4)
    s = ev.score_all(ev.build_evaluators(["fluency"], bridge=bridge), items)
    assert set(s) == {"perplexity", "repetition_rate", "distinct_2", "empty_generation"}
    np.testing.assert_allclose(s["perplexity"][[0, 1, 3]], got[[0, 1, 3]])


def test_empty_generations_score_as_the_worst_case_not_nan(tiny_model_dirs):
    """An empty continuation (no tokens after EOS truncation, or nothing visible) has
    empty_generation 1 and the worst fluency: the run's largest perplexity (or the configured
    cap), distinct-2 0, repetition 1."""
    bridge = models.load_bridge(tiny_model_dirs["llama"])
    items = [
        Item("a b c d", prompt_ids=[1, 10, 11], tokens=[20, 21, 22, 23]),
        Item("", prompt_ids=[1, 10, 11], tokens=[]),
        Item("e f g", prompt_ids=[1, 30], tokens=[40, 41, 42]),
        Item("  ", prompt_ids=[1, 30], tokens=[50]),  # decodes to whitespace only
    ]
    raw = fluency.perplexities(bridge, items)
    assert math.isnan(raw[1])
    s = ev.score_all(ev.build_evaluators(["fluency"], bridge=bridge), items)
    assert s["empty_generation"].tolist() == [0.0, 1.0, 0.0, 1.0]
    for col in ("perplexity", "distinct_2", "repetition_rate"):
        assert np.isfinite(s[col]).all(), col
    worst = max(raw[0], raw[2])
    assert s["perplexity"][1] == s["perplexity"][3] == pytest.approx(worst)
    assert s["perplexity"][0] == pytest.approx(raw[0]) and s["perplexity"][2] == pytest.approx(
        raw[2]
    )
    assert s["distinct_2"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert s["repetition_rate"].tolist() == [0.0, 1.0, 0.0, 1.0]
    # a configured cap is the worst case and caps every value
    cap = float(min(raw[0], raw[2])) * 0.9
    capped = ev.score_all(
        ev.build_evaluators(
            ["fluency"], bridge=bridge, options={"fluency": {"perplexity_cap": cap}}
        ),
        items,
    )["perplexity"]
    assert capped.tolist() == pytest.approx([cap] * 4)
    # all empty: a uniform guess over the vocabulary
    empty = ev.score_all(ev.build_evaluators(["fluency"], bridge=bridge), [items[1]])
    assert empty["perplexity"].tolist() == [float(bridge.cfg.d_vocab)]
    with pytest.raises(ev.EvaluatorError, match="options for \\['fluency'\\]"):
        ev.build_evaluators(["sentiment"], options={"fluency": {"perplexity_cap": 9.0}})


# ---------------------------------------------------------------- hub classifiers and registry
def _tiny_classifier(folder, labels, multi_label=False):
    from transformers import BertConfig, BertForSequenceClassification

    tok = build_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else None,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_hub_classifier_plugs_into_the_interface(tmp_path):
    single = _tiny_classifier(tmp_path / "sent", ["negative", "neutral", "positive"])
    multi = _tiny_classifier(tmp_path / "goemo", ["Gratitude", "anger!", "remorse"], True)
    evs = ev.build_evaluators(
        ["sentiment"], hub_classifiers={"roberta": str(single), "goemotions": str(multi)}
    )
    items = [Item("Thank you so much."), Item("I am so angry about this."), Item("")]
    s = ev.score_all(evs, items)
    cols = ["roberta_negative", "roberta_neutral", "roberta_positive"]
    probs = np.stack([s[c] for c in cols], axis=1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    multi_cols = ["goemotions_gratitude", "goemotions_anger", "goemotions_remorse"]
    m = np.stack([s[c] for c in multi_cols], axis=1)
    assert ((m > 0) & (m < 1)).all()
    assert "vader_compound" in s


def test_registry_names_are_the_schema_enum():
    steering = config_schema()["properties"]["steering"]["properties"]
    assert sorted(ev.NAMES) == sorted(steering["evaluators"]["items"]["enum"])
    assert {name: cls.name for name, cls in ev.REGISTRY.items()} == {n: n for n in ev.NAMES}
    assert ev.NEEDS_MODEL == {"fluency"}


def test_registry_errors():
    with pytest.raises(ev.EvaluatorError, match="unknown evaluator 'toxicity'"):
        ev.build_evaluators(["toxicity"])
    with pytest.raises(ValueError, match="needs the unsteered model"):
        ev.build_evaluators(["fluency"])
    with pytest.raises(FileNotFoundError, match="steering.hub_classifiers.x"):
        ev.build_evaluators([], hub_classifiers={"x": "/nonexistent/folder"})
