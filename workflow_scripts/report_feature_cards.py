"""feature_cards: one SAE + its activation store, model folder, dataset and effect_sizes.csv
-> results/report/features/{dataset}/{model}/{hook}/{architecture}/ (a card per top feature
per condition, cards.csv)."""

import os

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from circuitflow import report, sae, store
from circuitflow.report.page import ReportConfig
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    cfg = ReportConfig(**p.report)
    features = pd.read_csv(f"{smk.input.sae}/{sae.FEATURES_FILE}")
    chosen = report.choose_features(features, cfg.feature_cards, p.baseline)
    model = sae.load_sae(smk.input.sae)
    tokens = sae.read_tokens(smk.input.activations, p.hook)
    rows = {row["sample_id"]: row for row in store.read_samples(smk.input.dataset)}
    test = np.flatnonzero(tokens.splits == "test")
    keep = np.flatnonzero(tokens.token_mask("test"))
    local = np.searchsorted(test, tokens.sample_index[keep])
    ids = chosen.feature.to_numpy(dtype=np.int64)
    acts = model.encode(tokens.x[keep]).numpy()[:, ids]
    directions = model.W_dec[ids.tolist()].numpy()
    unembed = report.unembedding(smk.input.model)
    logits = (
        None
        if unembed is None or not len(chosen)
        else report.logit_effects(directions, *unembed, k=cfg.card_logits)
    )
    tokenizer = AutoTokenizer.from_pretrained(smk.input.model)
    layer, site = store.parse_hook_name(p.hook)
    table = pd.read_csv(smk.input.effects)
    print(f"{len(chosen)} cards from {len(keep)} test tokens", flush=True)
    report.write_cards(
        smk.output[0],
        feature_acts=acts,
        sample_index=local,
        token_ids=tokens.token_id[keep],
        samples=[rows[tokens.sample_ids[i]] for i in test],
        chosen=chosen,
        effects=report.sae_effect_rows(table, p.model, layer, site, p.architecture),
        decode=lambda ids: tokenizer.decode(ids),
        logits=logits,
        meta={
            "model": p.model,
            "hook": p.hook,
            "architecture": p.architecture,
            "dataset": p.dataset,
            "baseline": p.baseline,
        },
        n_samples=cfg.card_samples,
        index_href=os.path.relpath(p.index, smk.output[0]),
        headline_n=p.headline_n,
    )


run_logged(snakemake, main)  # noqa: F821
