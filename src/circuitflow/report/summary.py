"""The plain-words summary (``results/stats/summary.md``): per model and phase, which
effects survive BH-FDR, the largest of them with at least ``headline_n`` units (those with
fewer are counted and flagged, never listed as the largest), then calibration, power and the
selected alignment dimensions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.report.answers import small_n_mask
from circuitflow.report.common import ALPHA

PHASE_WORDS = {
    "vectors": "held-out separability of each emotion from neutral along its train-split "
    "direction (Hedges' g, Welch t)",
    "patching": "causal patching: recovery of the emotional lean when a residual site or a head "
    "is patched, head ablation effects, and directional ablation of the emotion direction / "
    "subspace against the unablated run and against random directions (Cohen's d_z, paired t)",
    "steering": "steering during generation: evaluator scores of steered vs unsteered "
    "generations of the same prompt and vs random directions of equal norm (d_z, paired t)",
    "alignment": "cross-model overlap of emotion subspaces against random subspaces and "
    "shuffled-pairing maps (Crawford-Howell z_cc, single-case t)",
    "sae": "SAE features selective for an emotion (AUROC vs neutral, Mann-Whitney z); only the "
    "top features are listed but every live feature counts in the correction",
}

IMAGE_PHASE_WORDS = {
    "vectors": "held-out separability of each image edit from the unchanged photos along its "
    "train-split direction (Hedges' g, Welch t)",
    "probes": "held-out error of linear probes for each attribute's level against a constant "
    "predictor and shuffled-target probes (per image, d_z, paired t)",
    "patching": "recovery of the aesthetic readout (probe score at the readout hook, or CLIP "
    "prompt similarity) when the attribute direction's component of the good variant is "
    "patched into the poor one, against the unpatched run and random directions (d_z)",
    "steering": "shift of the aesthetic readout towards the original when the attribute "
    "direction is added, against no steering and random directions of equal norm (d_z)",
}
# metrics only the vision track writes: a model with any of them is reported in image words
IMAGE_METRICS = {
    "probe_error",
    "probe_sq_error",
    "recovery",
    "recovery_clip_prompts",
    "readout_shift",
    "readout_shift_clip_prompts",
    "description_changed",
}


def _where(row) -> str:
    parts = []
    if pd.notna(row.layer):
        parts.append(f"layer {int(row.layer)}")
    parts += [str(x) for x in (row.site, row.position) if isinstance(x, str) and x]
    if isinstance(row.setting, str) and row.setting:
        parts.append(row.setting)
    return " ".join(parts)


def _describe(row) -> str:
    ci = (
        f" [{row.ci_low:.2f}, {row.ci_high:.2f}]"
        if pd.notna(row.ci_low) and pd.notna(row.ci_high)
        else ""
    )
    return (
        f"{row.condition} at {_where(row)}: {row.effect_size} = {row.estimate:.2f}{ci} "
        f"(n = {int(row.n_treatment)}/{int(row.n_baseline)}, p_fdr_bh = {row.p_fdr_bh:.2g})"
    )


def calibration_lines(calibration: pd.DataFrame) -> list[str]:
    """The summary's calibration section: every phase that fails calibration (a metric x
    comparison whose rate of p < alpha on permuted labels is not shown to stay at or below
    max_rate), then each failing metric x comparison with its rates."""
    lines = ["", "## Calibration (permuted labels)", ""]
    if not len(calibration):
        return [*lines, "No calibration copies were run (calibration.seeds is empty)."]
    passed = calibration["pass"].astype(str).str.lower().isin(["true", "1", "1.0"])
    tests = calibration["null"] == "labels"
    alpha, max_rate = calibration["alpha"].iloc[0], calibration["max_rate"].iloc[0]
    lines.append(
        "The same tests on copies of the prompt datasets with permuted labels "
        "(results/stats/calibration.csv). A metric x comparison passes when the upper "
        f"Clopper-Pearson bound of its rate of p < {alpha:g} is at most {max_rate:.0%}. Null "
        "'labels': nothing is there to find; 'intervention': a paired comparison with the "
        "unit's own unmodified run, which permuting labels keeps, so a rejection there shows "
        "the intervention acts, not that it acts on the labelled property; 'pairing': "
        "shuffled cross-model pairings, which permuting labels keeps too. Only label nulls "
        "are calibration tests."
    )
    failing = sorted(set(calibration.loc[~passed & tests, "phase"]))
    line = f"Phases failing calibration: {', '.join(failing) or 'none'}"
    shown = sorted(set(calibration.loc[calibration["verdict"] == "miscalibrated", "phase"]))
    if failing:
        line += (
            f" (a rate shown above {alpha:g}: {', '.join(shown) or 'none'}; the others have too "
            "few tests to show a rate at or below the bound)"
        )
    lines += ["", line + "."]
    for r in calibration[~passed & tests].itertuples():
        lines.append(
            f"- {r.phase} {r.metric}, {r.comparison.replace('_', ' ')} ({r.null}): "
            f"{r.n_p}/{r.n} p < {alpha:g} = {r.rate_p:.0%} [{r.rate_p_ci_low:.0%}, "
            f"{r.rate_p_ci_high:.0%}], {r.n_fdr} survive BH-FDR ({r.rate_fdr:.0%}): {r.verdict}"
        )
    lines.append(
        f"{int((passed & tests).sum())} of {int(tests.sum())} label-null metric x comparisons "
        f"pass; {int((~tests).sum())} have an intervention or pairing null (rejections expected)."
    )
    return lines


def summary_markdown(
    table: pd.DataFrame,
    alpha: float = ALPHA,
    top: int = 3,
    power: pd.DataFrame | None = None,
    k_selection: pd.DataFrame | None = None,
    calibration: pd.DataFrame | None = None,
    headline_n: int = 10,
) -> str:
    """Plain-words summary: the phases failing calibration (when given), then per model and
    phase, which effects survive BH-FDR (per metric x comparison: how many, and the largest
    surviving ones with at least ``headline_n`` units; the others are counted and flagged);
    then the power per family and the selected alignment dimensions, when given."""
    lines = ["# circuitflow summary", ""]
    lines.append(
        "The questions of the study, each answered in one sentence with its figure and "
        "supporting rows: results/report/index.html."
    )
    lines.append("")
    lines.append(
        "Effects are tested within families (one phase x dataset x model x metric) and "
        f"corrected with Benjamini-Hochberg; 'survive' means p_fdr_bh < {alpha}. Sizes: "
        "Hedges' g (independent groups), Cohen's d_z (paired: same prompt / pair / sample), "
        "z_cc (one observation vs random draws), AUROC; 95% BCa bootstrap CIs in brackets."
    )
    if calibration is not None:
        lines += calibration_lines(calibration)
    for model, mrows in table.groupby("model", sort=True):
        lines += ["", f"## {model}"]
        words = IMAGE_PHASE_WORDS if mrows.metric.isin(IMAGE_METRICS).any() else PHASE_WORDS
        for phase, rows in mrows.groupby("phase", sort=True):
            sig = rows[rows.p_fdr_bh < alpha]
            lines += ["", f"### {phase}", ""]
            if phase in words:
                lines.append(f"What is tested: {words[phase]}.")
                lines.append("")
            lines.append(f"{len(sig)} of {len(rows)} comparisons survive BH-FDR.")
            for (metric, comparison), part in rows.groupby(["metric", "comparison"], sort=True):
                psig = part[part.p_fdr_bh < alpha]
                pos, neg = int((psig.estimate > 0).sum()), int((psig.estimate < 0).sum())
                line = (
                    f"- {metric}, {comparison.replace('_', ' ')}: {len(psig)}/{len(part)} survive"
                )
                small = small_n_mask(psig, headline_n)
                heads = psig[~small]
                if len(psig):
                    line += f" ({pos} positive, {neg} negative)"
                if len(heads):
                    line += ". Largest: " + "; ".join(
                        _describe(r)
                        for r in heads.reindex(
                            heads.estimate.abs().sort_values(ascending=False).index
                        )
                        .head(top)
                        .itertuples()
                    )
                if small.any():
                    line += (
                        f"; {int(small.sum())} of them with n < {headline_n} units "
                        "(not headlines, see their CIs in effect_sizes.csv)"
                    )
                if not len(psig):
                    best = part.loc[[part.p.idxmin()]]
                    small_best = small_n_mask(best, headline_n).any()
                    flag = " (n < headline_n: not a headline)" if small_best else ""
                    line += f". Smallest p: {_describe(best.iloc[0])}{flag}"
                lines.append(line + ".")
    if power is not None and len(power):
        lines += ["", "## Power", ""]
        lines.append(
            "Per family: median units per arm, median |effect| (as d), post-hoc power at that "
            "effect, and the units needed for 80% power at d = 0.5 (two-sided, alpha 0.05)."
        )
        for r in power[power.design != "single_case"].itertuples():
            need = getattr(r, "n_for_d_0_5", np.nan)
            lines.append(
                f"- {r.family}: n = {r.n_observed:g} {r.n_unit}, |d| = {r.effect_observed:.2f}, "
                f"power {r.power_observed:.2f}; n for d = 0.5: "
                + (f"{int(need)}" if pd.notna(need) else "n/a")
            )
    if k_selection is not None and len(k_selection):
        lines += ["", "## Subspace dimension (alignment k selection)", ""]
        chosen = k_selection[k_selection.selected.astype(bool)]
        for r in chosen.itertuples():
            lines.append(
                f"- {r.model_a} -> {r.model_b} {r.site} L{r.layer_a}/L{r.layer_b} ({r.position}), "
                f"{r.condition}, {r.method}: k = {r.k_selected} "
                f"[{r.k_ci_low:g}, {r.k_ci_high:g}] (stability {r.k_stability:.2f}), overlap "
                f"{r.overlap:.2f} [{r.overlap_ci_low:.2f}, {r.overlap_ci_high:.2f}] vs permuted "
                f"labels {r.overlap_permuted:.3f} (n = {r.n_permuted:g}); p_fdr_bh = "
                f"{r.p_fdr_bh:.2g}"
            )
    return "\n".join(lines) + "\n"
