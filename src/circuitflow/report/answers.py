"""The study's questions answered from the effect table.

A :class:`Question` names the tests (:class:`Claim`) whose rows answer it; the first is the
verdict, the others are listed beside it. Each claim selects rows of ``effect_sizes.csv``
(phase, metric, comparison, fixed columns and setting keys), says which sign supports it and
what one counted thing is (a layer, a head, a tested feature). A row supports the claim when
it was tested, its ``p_fdr_bh`` is below alpha and its estimate has the claim's sign; a row
with fewer than ``headline_n`` units (or flagged "not a headline" in ``note``) is shown with
its CI but never counts. The verdict is one sentence naming the null, the test and the units.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from circuitflow.report.text import parse_setting

PER_UNIT_DESIGNS = ("paired", "independent", "rank")
SUMMARY_DESIGNS = ("permutation", "single_case")
NOT_HEADLINE = "not a headline"
TEST_WORDS = {
    "welch_t": "Welch t",
    "ttest_rel": "paired t",
    "mannwhitneyu": "Mann-Whitney U",
    "permutation_empirical_p": "empirical p over null draws",
    "crawford_howell_t": "Crawford-Howell t",
}
# image conditions by aesthetic property (a condition belongs to a group by its prefix)
ATTRIBUTE_GROUPS = {
    "composition": ("composition", "crop", "headroom", "tilt"),
    "lighting": ("exposure", "contrast", "tone"),
    "color": ("saturation", "color_cast"),
}
FLAGS = ("small_n", "tested", "supports", "excluded", "counts")  # boolean columns of annotate
STATUS_WORDS = {
    "yes": "yes",
    "no": "no",
    "not_established": "not established",
    "not_run": "not run",
}


@dataclass(frozen=True)
class Claim:
    """One tested claim: its rows, the sign that supports it and what is counted.

    ``claim`` is a noun phrase ("separation of every emotion from neutral ..."), ``null`` the
    reference it is tested against. ``where``: exact column values (a tuple: any of them);
    ``setting``: keys of the parsed ``setting`` (value ``"=condition"``: equal to the row's
    condition). ``by``: the columns that identify one counted thing within a model (with
    ``pooled``, across models); ``all_conditions``: a thing counts only when every condition
    of it supports the claim. ``label``: a format string of a thing for examples (row columns
    and setting keys). ``exclude_note``: rows whose note contains it are shown but never count.
    """

    key: str
    claim: str
    null: str
    phase: str
    metrics: tuple[str, ...]
    comparison: str
    sign: int = 1
    where: tuple[tuple[str, object], ...] = ()
    setting: tuple[tuple[str, str], ...] = ()
    things: str = "layers"
    by: tuple[str, ...] = ("layer",)
    all_conditions: bool = False
    pooled: bool = False
    label: str = ""
    exclude_note: str = ""


@dataclass(frozen=True)
class Question:
    """A research question: its claims (the first gives the verdict) and the datasets it
    reads (``kind`` of dataset: prompts, images, captions; ``conditions``: prefixes)."""

    key: str
    title: str
    ask: str
    claims: tuple[Claim, ...]
    kind: str = "prompts"
    conditions: tuple[str, ...] = ()


@dataclass
class Verdict:
    """The verdict of one claim: status (yes | no | not_established | not_run), the sentence,
    per model (or pooled) the counted things and hits, and the annotated rows."""

    status: str
    sentence: str
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)


# ---------------------------------------------------------------- rows
def _match(values: pd.Series, wanted) -> pd.Series:
    if isinstance(wanted, tuple):
        return values.isin(wanted)
    return values == wanted


def claim_rows(
    table: pd.DataFrame,
    claim: Claim,
    datasets: Sequence[str] | None = None,
    conditions: Sequence[str] = (),
) -> pd.DataFrame:
    """The rows of ``table`` that test ``claim`` (only ``datasets`` when given; only conditions
    starting with one of ``conditions`` when given)."""
    t = table
    keep = (
        (t.phase == claim.phase) & t.metric.isin(claim.metrics) & (t.comparison == claim.comparison)
    )
    if datasets is not None:
        keep &= t.dataset.isin(list(datasets))
    for column, wanted in claim.where:
        keep &= _match(t[column], wanted)
    if conditions:
        keep &= t.condition.astype(str).str.startswith(tuple(conditions))
    rows = t[keep]
    if claim.setting and len(rows):
        parsed = rows.setting.map(parse_setting)
        ok = np.ones(len(rows), dtype=bool)
        for key, wanted in claim.setting:
            got = parsed.map(lambda d, k=key: d.get(k))
            target = rows.condition if wanted == "=condition" else wanted
            ok &= (got == target).to_numpy()
        rows = rows[ok]
    return rows.copy()


def unit_of(test: object) -> str:
    """The unit named in ``test`` ("ttest_rel by frame" -> "frame"); "" when none is named."""
    text = str(test) if isinstance(test, str) else ""
    return text.rpartition(" by ")[2] if " by " in text else ""


def test_words(test: object) -> str:
    """Plain name of a test ("welch_t by sample" -> "Welch t")."""
    base = str(test).partition(" by ")[0]
    for key, words in TEST_WORDS.items():
        if base.startswith(key):
            return words
    return base


def _designs(rows: pd.DataFrame) -> pd.Series:
    """Each row's design (a table without the column: per-unit, as most are)."""
    if "design" in rows:
        return rows.design.fillna("").astype(str)
    return pd.Series("paired", index=rows.index)


def n_units(rows: pd.DataFrame) -> pd.Series:
    """Units per row: the smaller arm of a per-unit design; the null draws of a summary one."""
    n_t = pd.to_numeric(rows.n_treatment, errors="coerce")
    n_b = pd.to_numeric(rows.n_baseline, errors="coerce")
    summary = _designs(rows).isin(SUMMARY_DESIGNS)
    return pd.Series(np.where(summary, n_b, np.fmin(n_t, n_b)), index=rows.index)


def small_n_mask(rows: pd.DataFrame, headline_n: int = 10) -> pd.Series:
    """Rows that are not headlines: a per-unit design with fewer than ``headline_n`` units,
    or ``note`` saying so (the statistics phase flags them)."""
    note = rows.note.fillna("").astype(str) if "note" in rows else pd.Series("", index=rows.index)
    few = _designs(rows).isin(PER_UNIT_DESIGNS) & (n_units(rows) < headline_n)
    return few | note.str.contains(NOT_HEADLINE, regex=False)


def annotate(rows: pd.DataFrame, claim: Claim, alpha: float, headline_n: int = 10) -> pd.DataFrame:
    """``rows`` with ``unit``, ``n_units``, ``small_n`` (a per-unit design with fewer than
    ``headline_n`` units, or flagged in note), ``tested``, ``supports`` (BH-significant with
    the claim's sign; AUROCs are signed around 0.5), ``excluded`` (note names
    ``claim.exclude_note``) and ``counts`` (supports, not small, not excluded)."""
    out = rows.copy()
    if not len(out):
        out["unit"], out["n_units"] = pd.Series(dtype=str), pd.Series(dtype=float)
        for col in FLAGS:
            out[col] = pd.Series(dtype=bool)
        return out
    note = out.note.fillna("").astype(str) if "note" in out else pd.Series("", index=out.index)
    out["unit"] = out.test.map(unit_of)
    out["n_units"] = n_units(out)
    out["small_n"] = small_n_mask(out, headline_n)
    estimate = pd.to_numeric(out.estimate, errors="coerce")
    centre = np.where(out.effect_size.astype(str) == "auroc", 0.5, 0.0)
    direction = np.sign(estimate - centre)
    out["tested"] = (out.test.astype(str) != "none") & estimate.notna()
    significant = out.tested & (pd.to_numeric(out.p_fdr_bh, errors="coerce") < alpha)
    out["supports"] = significant & ((direction == claim.sign) if claim.sign else direction != 0)
    out["excluded"] = (
        note.str.contains(claim.exclude_note, regex=False)
        if claim.exclude_note
        else pd.Series(False, index=out.index)
    )
    out["counts"] = out.supports & ~out.small_n & ~out.excluded
    return out


# ---------------------------------------------------------------- words
def plural(unit: str, n: float) -> str:
    if not unit:
        return "units (kind not recorded)"
    return unit if n == 1 or unit.endswith("s") else unit + "s"


def _span(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "?"
    lo, hi = int(v.min()), int(v.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def n_phrase(rows: pd.DataFrame) -> str:
    """The units of ``rows`` in words: "n = 32 prompts", "n = 105 vs 105 samples",
    "200 null draws per test" (summary designs)."""
    if not len(rows):
        return "no units"
    design = rows.design.mode().iloc[0]
    if design in SUMMARY_DESIGNS:
        return f"{_span(rows.n_baseline)} null draws per test"
    unit = rows.unit.mode().iloc[0] if "unit" in rows and len(rows.unit.mode()) else ""
    n_max = pd.to_numeric(rows.n_treatment, errors="coerce").max()
    if design == "paired":
        return f"n = {_span(rows.n_treatment)} {plural(unit, n_max)}"
    return f"n = {_span(rows.n_treatment)} vs {_span(rows.n_baseline)} {plural(unit, n_max)}"


def thing_label(row: Mapping, claim: Claim) -> str:
    """A counted thing in words, by ``claim.label`` (default: L{layer})."""
    fields = {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
    fields.update(parse_setting(row.get("setting")))
    if "layer" in fields:
        fields["layer"] = int(float(fields["layer"]))
    template = claim.label or "L{layer}"
    try:
        return template.format(**fields)
    except (KeyError, ValueError):
        return "/".join(str(row.get(c)) for c in claim.by)


def _details(claim: Claim, rows: pd.DataFrame, alpha: float, supported: bool) -> str:
    test = test_words(rows.test[rows.tested].mode().iloc[0]) if rows.tested.any() else "untested"
    q = f"BH q < {alpha:g}" if supported else f"no headline row with BH q < {alpha:g}"
    return f"(null: {claim.null}; {test}, {q}, {n_phrase(rows)})"


# ---------------------------------------------------------------- verdicts
def _things(rows: pd.DataFrame, claim: Claim) -> pd.DataFrame:
    """One row per counted thing: hit (counts), small (supports only through small-n or
    excluded rows), best p and its label; grouped per model unless pooled."""
    by = list(dict.fromkeys(["model", *claim.by]))
    by = [c for c in by if c in rows]
    keys = rows[by].astype(object).where(rows[by].notna(), "")
    out = []
    for _, part in rows.groupby([keys[c] for c in by], sort=True):
        if claim.all_conditions:
            per = part.groupby("condition")
            hit = bool(per.counts.any().all())
            small = not hit and bool(per.supports.any().all())
        else:
            hit = bool(part.counts.any())
            small = not hit and bool(part.supports.any())
        best = part.sort_values("p_fdr_bh", kind="stable").iloc[0]
        out.append(
            {
                "model": best.model,
                "hit": hit,
                "small": small,
                "p": float(best.p_fdr_bh),
                "label": thing_label(best.to_dict(), claim),
            }
        )
    return pd.DataFrame(out)


def _ranges(labels: Sequence[str]) -> str:
    """ "hook_out L0-L16" from labels "{site} L{layer}"; with several sites each says how
    many it has ("vision.hook_out L0-L15 (16), hook_resid_post L0-L1 (2)")."""
    groups: dict[str, list[int]] = {}
    for lab in labels:
        found = re.fullmatch(r"(.*?)\s*L(\d+)", lab)
        if found is None:
            return ", ".join(labels)
        groups.setdefault(found[1], []).append(int(found[2]))
    parts = []
    for site, layers in groups.items():
        lo, hi = min(layers), max(layers)
        span = f"L{lo}" if lo == hi else f"L{lo}-L{hi}"
        count = f"({len(layers)})" if len(groups) > 1 else ""
        parts.append(" ".join(x for x in (site, span, count) if x))
    return ", ".join(parts)


def _examples(part: pd.DataFrame, claim: Claim, column: str, examples: int) -> str:
    """The supported things of one part: layer ranges (all but a few when most count), or
    the best ``examples`` labels."""
    hits = part[part[column]].sort_values("p", kind="stable")
    if not len(hits) or not examples:
        return ""
    if claim.things in ("layers", "hooks"):
        missing = list(part[~part[column]].label)
        if claim.things == "layers" and 0 < len(missing) <= min(examples, len(hits) - 1):
            return " (all but " + ", ".join(missing) + ")"
        return f" ({_ranges(list(hits.label))})"
    more = ", ..." if len(hits) > examples else ""
    return " (" + ", ".join(hits.label.head(examples)) + more + ")"


def _where(things: pd.DataFrame, claim: Claim, column: str, examples: int) -> str:
    """ "30 of 30 layers in m1 (L0-L29) and 18 of 18 in m2 (L0-L17)"."""
    groups = [("", things)] if claim.pooled else list(things.groupby("model", sort=True))
    parts = []
    for i, (model, part) in enumerate(groups):
        text = f"{int(part[column].sum())} of {len(part)}" + (f" {claim.things}" if i == 0 else "")
        if model:
            text += f" in {model}"
        parts.append(text + _examples(part, claim, column, examples))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def claim_verdict(
    rows: pd.DataFrame,
    claim: Claim,
    alpha: float = 0.05,
    headline_n: int = 10,
    examples: int = 3,
    absent_conditions: Sequence[str] = (),
) -> Verdict:
    """The verdict of ``claim`` on its rows (from :func:`claim_rows`) in one sentence:

    - yes: some thing counts ("Yes at k of K {things} in {model}: {claim} (null: ...)");
    - not established: things are supported only by rows with n < headline_n (or excluded);
    - no: nothing is supported;
    - not run: no rows (the phase did not run in this configuration, or its rows test none
      of ``absent_conditions``)."""
    if not len(rows):
        what = f"{claim.phase} rows of {', '.join(claim.metrics)}"
        sentence = (
            f"Not run: effect_sizes.csv has no {what} ({claim.comparison.replace('_', ' ')}); "
            "the phase is not in this configuration."
            if not absent_conditions
            else f"Not run: the {what} test none of {', '.join(absent_conditions)}."
        )
        return Verdict("not_run", sentence, rows=annotate(rows, claim, alpha, headline_n))
    rows = annotate(rows, claim, alpha, headline_n)
    things = _things(rows, claim)
    counts = {
        m: (int(p.hit.sum()), len(p))
        for m, p in ([("all", things)] if claim.pooled else things.groupby("model", sort=True))
    }
    counted = rows[rows.counts]
    if things.hit.any():
        where = _where(things, claim, "hit", examples)
        sentence = f"Yes at {where}: {claim.claim} {_details(claim, counted, alpha, True)}."
        return Verdict("yes", sentence, counts, rows)
    tested = rows[rows.tested] if rows.tested.any() else rows
    if things.small.any():
        small = rows[rows.supports]
        flagged = "n < " + str(headline_n) if small.small_n.any() else ""
        if small.excluded.any():
            flagged = " or ".join(x for x in (flagged, claim.exclude_note) if x)
        where = _where(things, claim, "small", examples)
        sentence = (
            f"Not established: {claim.claim} only in rows with {flagged}, which are not "
            f"headlines (supported at {where}) {_details(claim, small, alpha, True)}."
        )
        return Verdict("not_established", sentence, counts, rows)
    n = len(things)
    where = f"{n} {claim.things}" + (
        "" if claim.pooled else " in " + " and ".join(sorted(things.model.unique()))
    )
    details = _details(claim, tested, alpha, False)
    draws = pd.to_numeric(tested.n_baseline, errors="coerce")
    floor = tested.design.isin(SUMMARY_DESIGNS) & (
        pd.to_numeric(tested.p, errors="coerce") <= 1.0 / (draws + 1) + 1e-12
    )
    if floor.any():
        n_draws = int(draws[floor].max())
        sentence = (
            f"Not established: {claim.claim} at none of {where} after correction, but "
            f"{int(floor.sum())} tests sit at the smallest p that {n_draws} null draws allow "
            f"(1/{n_draws + 1}): more draws are needed to tell {details}."
        )
        return Verdict("not_established", sentence, counts, rows)
    if tested.small_n.all():
        sentence = (
            f"Not established: {claim.claim} at none of {where}, and every row has n < "
            f"{headline_n} units, too few to rule it out {details}."
        )
        return Verdict("not_established", sentence, counts, rows)
    sentence = f"No: {claim.claim} at none of {where} {details}."
    return Verdict("no", sentence, counts, rows)


@dataclass
class Answer:
    """One question's answer: the verdict (first claim), the other claims' verdicts, and the
    rows of every claim (annotated, with ``claim`` naming it)."""

    question: Question
    verdict: Verdict
    also: list[tuple[Claim, Verdict]]
    rows: pd.DataFrame
    extra: str = ""

    @property
    def status(self) -> str:
        return self.verdict.status


def answer(
    table: pd.DataFrame,
    question: Question,
    kinds: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    headline_n: int = 10,
) -> Answer:
    """Every claim of ``question`` on ``table`` (only datasets of ``question.kind`` when
    ``kinds`` maps dataset -> kind)."""
    datasets = None if kinds is None else [d for d, k in kinds.items() if k == question.kind]
    verdicts, frames = [], []
    for claim in question.claims:
        rows = claim_rows(table, claim, datasets, question.conditions)
        absent = ()
        if not len(rows) and question.conditions and len(claim_rows(table, claim, datasets)):
            absent = question.conditions
        v = claim_verdict(rows, claim, alpha, headline_n, absent_conditions=absent)
        verdicts.append((claim, v))
        frames.append(v.rows.assign(claim=claim.key))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in FLAGS:
        if col in rows:
            rows[col] = rows[col].astype(bool)
    return Answer(question, verdicts[0][1], verdicts[1:], rows)


def supporting_rows(rows: pd.DataFrame, top: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(headline rows, flagged rows) of one claim: the ``top`` counted rows by corrected p then
    |estimate|, else the ``top`` tested rows with n >= headline_n and the smallest p; and the
    ``top`` rows that never count: n < headline_n (supporting ones first) or a note that
    excludes them while they support the claim."""
    if not len(rows):
        return rows, rows
    order = rows.assign(_abs=pd.to_numeric(rows.estimate, errors="coerce").abs()).sort_values(
        ["p_fdr_bh", "_abs"], ascending=[True, False], kind="stable"
    )
    order = order.drop(columns="_abs")
    counted = order[order.counts]
    head = counted if len(counted) else order[order.tested & ~order.small_n & ~order.excluded]
    flagged = order[(order.tested & order.small_n) | (order.supports & order.excluded)]
    flagged = flagged.sort_values("supports", ascending=False, kind="stable")
    return head.head(top), flagged.head(top)


def projector_lead(ranking: pd.DataFrame) -> str:
    """The ranking's first projector by image gain, in words ("" without a ranking)."""
    if ranking is None or not len(ranking) or "caption_nll_image_gain" not in ranking:
        return ""
    best = ranking.sort_values("rank").iloc[0]
    return (
        f"ranking.csv puts {best.architecture} first by image gain (caption NLL with a "
        f"mismatched image minus with its own: {best.caption_nll_image_gain:.3f} nats per token)"
    )
