"""The report page: every question answered (:mod:`.answers`), its figure and its rows
written next to ``index.html``, and the page rendered (:mod:`.html`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from circuitflow.report import figures
from circuitflow.report.answers import Answer, answer, projector_lead, supporting_rows
from circuitflow.report.common import save
from circuitflow.report.html import index_html
from circuitflow.report.questions import questions
from circuitflow.report.text import steering_heatmap
from circuitflow.workflow import schema_backed


@dataclass(frozen=True, kw_only=True)
@schema_backed("report")
class ReportConfig:
    """Config keys ``report.*`` (defaults in the schema) plus ``stats.alpha`` and
    ``stats.headline_n``."""

    site: str
    position: str
    top_rows: int
    feature_cards: int
    card_samples: int
    card_logits: int
    alpha: float = 0.05
    headline_n: int = 10


def _figure(key: str, a: Answer, table: pd.DataFrame, ranking) -> Figure | None:
    """The one figure of a question (None: it has none)."""
    draw: dict[str, Callable[[], Figure]] = {
        "directions": lambda: figures.directions_figure(a.rows),
        "flow": lambda: figures.flow_figure(a.rows),
        "shared": lambda: figures.alignment_figure(a.rows, "overlap_vs_permuted"),
        "aligned": lambda: figures.alignment_figure(a.rows, "overlap_vs_shuffled"),
        "steering": lambda: steering_heatmap(
            table[table.dataset.isin(a.rows.dataset.unique())], "marker_target"
        ),
        "heads": lambda: figures.heads_figure(a.rows),
        "features": lambda: figures.features_figure(a.rows),
        "projectors": lambda: figures.projectors_figure(ranking, a.verdict.rows),
    }
    if key.startswith("aesthetics_"):
        group = key.removeprefix("aesthetics_")
        return figures.aesthetics_figure(a.rows, f"{group}_probes")
    return draw[key]() if key in draw else None


def card_links(cards: pd.DataFrame, index_dir: str | os.PathLike) -> list[dict]:
    """Rows of the feature-card table: ``cards`` has the cards.csv columns plus ``dir`` (the
    card folder) and ``sae`` (its name); links are relative to ``index_dir``."""
    out = []
    for r in cards.itertuples():
        href = os.path.relpath(Path(r.dir) / r.file, index_dir)
        ci = f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if pd.notna(r.ci_low) else ""
        out.append(
            {
                "sae": r.sae,
                "condition": r.condition,
                "feature": int(r.feature),
                "href": Path(href).as_posix(),
                "auroc_train": f"{r.auroc_train:.3f}",
                "auroc_test": f"{r.auroc_test:.3f}{ci}" if pd.notna(r.auroc_test) else "",
                "p_fdr_bh": f"{r.p_fdr_bh:.2g}" if pd.notna(r.p_fdr_bh) else "",
                "top_token": r.top_token if isinstance(r.top_token, str) else "",
            }
        )
    return out


def write_report(
    table: pd.DataFrame,
    index: str | os.PathLike,
    answers_dir: str | os.PathLike,
    effects_path: str | os.PathLike,
    kinds: Mapping[str, str] | None = None,
    ranking: pd.DataFrame | None = None,
    cards: pd.DataFrame | None = None,
    cfg: ReportConfig | None = None,
) -> list[Answer]:
    """Answer every question on ``table``; write ``{answers_dir}/{key}.png`` (its figure) and
    ``{key}.csv`` (every row its claims read, annotated) and the page ``index``, which links
    them, the full table at ``effects_path`` and the feature cards (:func:`card_links`)."""
    cfg = cfg or ReportConfig()
    index, answers_dir = Path(index), Path(answers_dir)
    answers_dir.mkdir(parents=True, exist_ok=True)
    rel = lambda p: Path(os.path.relpath(p, index.parent)).as_posix()  # noqa: E731
    done, sections = [], []
    for q in questions(cfg.site, cfg.position):
        a = answer(table, q, kinds, cfg.alpha, cfg.headline_n)
        if q.key == "projectors":
            a.extra = projector_lead(ranking)
        done.append(a)
        csv = answers_dir / f"{q.key}.csv"
        a.rows.to_csv(csv, index=False)
        figure = None
        if a.status != "not_run":
            fig = _figure(q.key, a, table, ranking)
            if fig is not None:
                save(fig, answers_dir / f"{q.key}.png")
                figure = rel(answers_dir / f"{q.key}.png")
        top, flagged = supporting_rows(a.verdict.rows, cfg.top_rows)
        sections.append(
            {
                "key": q.key,
                "title": q.title,
                "ask": q.ask,
                "status": a.status,
                "sentence": a.verdict.sentence,
                "extra": a.extra,
                "figure": figure,
                "also": [(v.status, v.sentence) for _, v in a.also],
                "top": top if len(top) else None,
                "flagged": flagged if len(flagged) else None,
                "cards": card_links(cards, index.parent)
                if q.key == "features" and cards is not None and len(cards)
                else [],
                "csv": rel(csv),
            }
        )
    datasets = sorted(table.dataset.unique()) if len(table) else []
    kinds = kinds or {}
    models = sorted(m for m in (table.model.unique() if len(table) else []) if "__" not in m)
    pairs = sorted(m for m in (table.model.unique() if len(table) else []) if "__" in m)
    summary = (
        "Datasets: "
        + ", ".join(f"{d} ({kinds[d]})" if d in kinds else d for d in datasets)
        + f". Models: {', '.join(models)}"
        + (f"; model pairs: {', '.join(pairs)}." if pairs else ".")
    )
    meta = {
        "summary": summary,
        "effects_href": rel(effects_path),
        "n_rows": len(table),
        "alpha": f"{cfg.alpha:g}",
        "headline_n": cfg.headline_n,
    }
    index.write_text(index_html(sections, meta))
    return done
