"""report_index: effect_sizes.csv (+ the projector ranking, the feature cards) ->
results/report/index.html and results/report/answers/ (a figure and the rows of each
question)."""

from pathlib import Path

import pandas as pd

from circuitflow import report, store
from circuitflow.report.page import ReportConfig
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    cfg = ReportConfig(**p.report, alpha=p.alpha, headline_n=p.headline_n)
    table = pd.read_csv(smk.input.effects)
    ranking = None
    if smk.input.get("projectors"):
        ranking = pd.read_csv(Path(smk.input.projectors) / "ranking.csv")
    cards = [
        pd.read_csv(Path(d) / report.CARDS_FILE).assign(dir=d, sae=" ".join(Path(d).parts[-3:]))
        for d in smk.input.cards
    ]
    cards = pd.concat(cards, ignore_index=True) if cards else None
    answers = report.write_report(
        table,
        smk.output.index,
        smk.output.answers,
        smk.input.effects,
        kinds=p.kinds,
        ranking=ranking,
        cards=cards,
        cfg=cfg,
    )
    for a in answers:
        print(f"{a.question.key}: {a.verdict.sentence}", flush=True)
    for out in (smk.output.index, smk.output.answers):  # a rerun leaves no stale manifest
        store.write_manifest(
            out,
            kind="report_index",
            inputs=store.keyable_inputs(smk.input),
            params={**p.report, "alpha": p.alpha, "headline_n": p.headline_n},
        )


run_logged(snakemake, main)  # noqa: F821
