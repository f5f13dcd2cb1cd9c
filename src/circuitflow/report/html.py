"""HTML of the report (jinja2, autoescaped): the index with one section per question, and
the SAE feature cards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from circuitflow.report.answers import STATUS_WORDS, plural

STYLE = """
body{font-family:'DejaVu Sans',system-ui,sans-serif;max-width:1180px;margin:2em auto;
 padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{margin-top:2.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.9em} .ask{color:#444;font-style:italic}
.verdict{border-left:6px solid #999;background:#f6f6f6;padding:.6em .9em;margin:.8em 0;
 font-size:1.02em}
.yes{border-color:#2a9d8f} .no{border-color:#e63946} .not_established{border-color:#e9c46a}
.not_run{border-color:#aaa}
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-size:.78em;color:#fff;
 background:#999;white-space:nowrap} .badge.yes{background:#2a9d8f} .badge.no{background:#e63946}
.badge.not_established{background:#c9a227} .badge.not_run{background:#999}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0} td,th{border:1px solid #ddd;
 padding:.2em .45em;vertical-align:top} th{background:#f0f0f0;text-align:left}
tr.flag td{background:#fff6e0} span.flag,p.flag{color:#a05a00;font-weight:600}
img.figure{max-width:100%;border:1px solid #eee;margin:.5em 0}
ul.also li{margin:.35em 0} .glance td:first-child{white-space:nowrap}
.tok{white-space:pre-wrap}
.sample{font-family:'DejaVu Sans Mono',monospace;font-size:.86em;margin:.35em 0;padding:.3em;
 border:1px solid #eee} .logits td:nth-child(2){text-align:right}
"""

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>circuitflow report</title>
<style>{{ style | safe }}</style></head><body>
<h1>circuitflow: what the run found</h1>
<p class="meta">{{ meta.summary }} Full table:
<a href="{{ meta.effects_href }}">effect_sizes.csv</a> ({{ meta.n_rows }} rows).
Corrected p = Benjamini-Hochberg within each family (phase x dataset x model x metric x
comparison); a row counts when p_fdr_bh &lt; {{ meta.alpha }} and it has at least
{{ meta.headline_n }} units. Rows with fewer units are shown with their CI and flagged,
never as headlines.</p>
<h2 id="glance">At a glance</h2>
<table class="glance"><tr><th>question</th><th>answer</th><th>verdict</th></tr>
{% for a in answers %}<tr><td><a href="#{{ a.key }}">{{ a.title }}</a></td>
<td><span class="badge {{ a.status }}">{{ a.status_words }}</span></td>
<td>{{ a.sentence }}</td></tr>
{% endfor %}</table>
{% for a in answers %}
<h2 id="{{ a.key }}">{{ a.title }}</h2>
<p class="ask">{{ a.ask }}</p>
<div class="verdict {{ a.status }}"><span class="badge {{ a.status }}">{{ a.status_words }}</span>
 {{ a.sentence }}{% if a.extra %}<br><small>{{ a.extra }}</small>{% endif %}</div>
{% if a.figure %}<img class="figure" src="{{ a.figure }}" alt="{{ a.title }}">{% endif %}
{% if a.also %}<p><b>Also tested</b></p><ul class="also">
{% for s, sentence in a.also %}<li><span class="badge {{ s }}">{{ status_words[s] }}</span>
 {{ sentence }}</li>
{% endfor %}</ul>{% endif %}
{% if a.top is not none %}<p><b>Supporting rows</b> (the verdict's claim, smallest corrected p
first)</p>
{{ table(a.top) }}{% endif %}
{% if a.flagged is not none %}<p class="flag">Never headlines: rows with n &lt;
{{ meta.headline_n }} units (shown with their CI) and rows a note excludes</p>
{{ table(a.flagged) }}{% endif %}
{% if a.cards %}<p><b>Feature cards</b> (top features per emotion, chosen on train prompts)</p>
<table><tr><th>SAE</th><th>condition</th><th>feature</th><th>train AUROC</th>
<th>test AUROC [95% CI]</th><th>p_fdr_bh</th><th>top token</th></tr>
{% for c in a.cards %}<tr><td>{{ c.sae }}</td><td>{{ c.condition }}</td>
<td><a href="{{ c.href }}">f{{ c.feature }}</a></td><td>{{ c.auroc_train }}</td>
<td>{{ c.auroc_test }}</td><td>{{ c.p_fdr_bh }}</td><td><code>{{ c.top_token }}</code></td></tr>
{% endfor %}</table>{% endif %}
<p class="meta">Rows used: <a href="{{ a.csv }}">{{ a.csv }}</a> ·
full table: <a href="{{ meta.effects_href }}">effect_sizes.csv</a></p>
{% endfor %}
</body></html>
"""

ROWS = """<table><tr><th>model</th><th>where</th><th>condition</th><th>vs</th><th>n</th>
<th>effect [95% CI]</th><th>p</th><th>p_fdr_bh</th><th>note</th></tr>
{% for r in rows %}<tr{% if r.flag %} class="flag"{% endif %}><td>{{ r.model }}</td>
<td>{{ r.where }}</td><td>{{ r.condition }}</td><td>{{ r.comparison }}</td><td>{{ r.n }}</td>
<td>{{ r.effect }}</td><td>{{ r.p }}</td><td>{{ r.q }}</td>
<td>{% if r.flag %}<span class="flag">{{ r.flag }}</span> {% endif %}{{ r.note }}</td></tr>
{% endfor %}</table>"""

CARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ model }} {{ hook }} {{ architecture }} feature {{ feature }}</title>
<style>{{ style | safe }}</style></head><body>
{% if index_href %}<p><a href="{{ index_href }}">&larr; report</a></p>{% endif %}
<h1>Feature {{ feature }} <small>({{ condition }})</small></h1>
<p class="meta">{{ model }} · <code>{{ hook }}</code> · {{ architecture }} SAE ·
 dataset {{ dataset }}</p>
<div class="verdict {{ 'yes' if auroc.flag == '' else 'not_established' }}">
Held-out: {{ auroc.text }}.
Chosen on train samples (train AUROC {{ '%.3f' % auroc_train }}); fires on
{{ '%.1f' % (100 * fire_rate) }}% of test tokens.{% if auroc.flag %}
<span class="flag">{{ auroc.flag }}</span>{% endif %}</div>
<h2>Activations</h2><img class="figure" src="{{ figure }}" alt="activation histogram">
<h2>Logit effect</h2>
{% if logits %}<p class="meta">W_dec[{{ feature }}] @ W_U (final-norm scale folded in): the tokens
this feature's decoder direction promotes and suppresses.</p>
<div style="display:flex;gap:2em"><table class="logits"><tr><th>promoted</th><th>logit</th></tr>
{% for t, v in logits.promoted %}<tr><td><code>{{ t }}</code></td>
<td>{{ '%+.3f' % v }}</td></tr>{% endfor %}
</table><table class="logits"><tr><th>suppressed</th><th>logit</th></tr>
{% for t, v in logits.suppressed %}<tr><td><code>{{ t }}</code></td>
<td>{{ '%+.3f' % v }}</td></tr>{% endfor %}
</table></div>{% else %}<p>No unembedding in the model folder.</p>{% endif %}
<h2>Top-activating test samples</h2>
{% for s in samples %}<div class="sample"><b>{{ s.sample_id }}</b> ({{ s.label }}, max
{{ '%.2f' % s.max }}):<br>{% for piece, act, w in s.tokens %}<span class="tok"
 style="background:rgba(230,111,81,{{ '%.2f' % w }})" title="{{ '%.3f' % act }}"
>{{ piece }}</span>{% endfor %}</div>
{% else %}<p>The feature never fires on a test sample.</p>{% endfor %}
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def _fmt(value, spec: str = ".2f") -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and np.isnan(value))
        else format(value, spec)
    )


def row_records(rows: pd.DataFrame, flag_words: str = "not a headline") -> list[dict]:
    """Table cells of annotated effect rows (:func:`.answers.annotate`)."""
    out = []
    for r in rows.itertuples():
        where = " ".join(
            x
            for x in (
                f"L{int(r.layer)}" if pd.notna(r.layer) else "",
                r.site if isinstance(r.site, str) else "",
                r.position if isinstance(r.position, str) else "",
                r.setting if isinstance(r.setting, str) else "",
            )
            if x
        )
        ci = f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if pd.notna(r.ci_low) else ""
        n = (
            f"{int(r.n_treatment)}"
            if r.design == "paired"
            else f"{_fmt(r.n_treatment, '.0f')} vs {_fmt(r.n_baseline, '.0f')}"
        )
        summary = r.design in ("permutation", "single_case")
        unit = "null draws" if summary else plural(r.unit, r.n_treatment) if r.unit else ""
        flags = []
        if r.small_n:
            flags.append(f"n < headline_n: {flag_words}")
        if r.excluded:
            flags.append("not counted (see note)")
        out.append({
            "model": r.model, "where": where, "condition": r.condition,
            "comparison": str(r.comparison).replace("_", " "),
            "n": f"{n} {unit}".strip(), "effect": f"{r.effect_size} = {_fmt(r.estimate)}{ci}",
            "p": _fmt(r.p, ".2g"), "q": _fmt(r.p_fdr_bh, ".2g"), "flag": "; ".join(flags),
            "note": r.note if isinstance(r.note, str) else "",
        })  # fmt: skip
    return out


def index_html(sections: Sequence[Mapping], meta: Mapping) -> str:
    """The index page: meta (summary, effects_href, n_rows, alpha, headline_n) and per
    section: key, title, ask, status, sentence, extra, figure, also [(status, sentence)],
    top / flagged (annotated rows), cards (dicts), csv."""
    rows_tpl = _ENV.from_string(ROWS)

    def table(rows):
        return Markup(rows_tpl.render(rows=row_records(rows)))

    shown = [{**s, "status_words": STATUS_WORDS[s["status"]]} for s in sections]
    return _ENV.from_string(INDEX).render(
        style=STYLE, answers=shown, meta=meta, table=table, status_words=STATUS_WORDS
    )


def card_html(context: Mapping) -> str:
    """One feature card (see :func:`.cards.write_cards` for the context keys)."""
    return _ENV.from_string(CARD).render(style=STYLE, **context)
