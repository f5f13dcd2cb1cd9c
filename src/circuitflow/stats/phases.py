"""Phase adapters: each phase's artifact -> measurements (for the engine) or effect rows.

They read phase-specific columns (patching residual and head tables, directional ablation,
steering samples, alignment overlaps, SAE features, vectors projections) and hand on either
:data:`~circuitflow.stats.engine.MEASUREMENT_COLUMNS` rows or finished effect rows for the
designs without per-unit values (single-case, AUROC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from circuitflow import store
from circuitflow.stats.corrections import COMPARISONS, family_name
from circuitflow.stats.effects import auroc_test, compare_independent, compare_single_case
from circuitflow.stats.engine import as_measurements


def separation_rows(
    projection: np.ndarray,
    hooks: Sequence[str],
    positions: Sequence[str],
    conditions: Sequence[str],
    labels: np.ndarray,
    split: np.ndarray,
    baseline: str,
    dataset: str,
    model: str,
    seed: int,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    min_n: int = 2,
) -> list[dict]:
    """vectors: held-out separation along each train-split direction, condition vs baseline
    samples of the test split (independent: Welch t, Hedges' g, AUROC).

    projection: [hook, position, condition, sample]. Comparisons where every held-out value is
    identical (e.g. the last token is the same "." in every prompt at the embedding), or with
    fewer than ``min_n`` held-out samples in an arm, have no defined effect size and are left
    out.
    """
    test = split == "test"
    base = test & (labels == baseline)
    metric = "projection_on_mean_diff"
    rows = []
    for h, hook in enumerate(hooks):
        layer, site = store.parse_hook_name(hook)
        for p, position in enumerate(positions):
            for c, condition in enumerate(conditions):
                treat = test & (labels == condition)
                values = projection[h, p, c]
                if min(treat.sum(), base.sum()) < max(min_n, 2):
                    continue
                if not np.isfinite(values[treat | base]).all() or np.ptp(values[treat | base]) == 0:
                    continue
                try:
                    result = compare_independent(
                        values[treat],
                        values[base],
                        seed=seed,
                        n_resamples=n_resamples,
                        confidence_level=confidence_level,
                    )
                except ValueError:  # no variation up to float rounding
                    continue
                rows.append(
                    {
                        "phase": "vectors",
                        "dataset": dataset,
                        "model": model,
                        "layer": layer,
                        "site": site,
                        "position": position,
                        "condition": condition,
                        "setting": "",
                        "comparison": COMPARISONS["baseline"],
                        "metric": metric,
                        "family": family_name("vectors", model, metric, dataset),
                        **result,
                    }
                )
    return rows


RECOVERY_REFERENCE = {"clean_to_corrupted": 0.0, "corrupted_to_clean": 1.0}


def patching_residual_measurements(residual: pd.DataFrame) -> pd.DataFrame:
    """patching residual.csv -> measurements: normalised recovery per pair (unit = clean
    sample) at each layer x position, treatment = patched, baseline = the unpatched run
    (recovery 0 for clean_to_corrupted, 1 for corrupted_to_clean, by definition), so the
    paired test is the one-sample t test of recovery against that value. Rows flagged
    ``small_denominator`` are left out; a position patched at several tokens of a pair
    (``suffix_mid``, ``phrase_mid``) is averaged within the pair."""
    ok = residual[~residual["small_denominator"].astype(bool) & np.isfinite(residual["recovery"])]
    t = ok.assign(
        metric="recovery_" + ok["direction"],
        unit=ok["clean_id"],
        value=ok["recovery"],
        site=ok["hook"].str.split(".", n=2).str[2],
    )
    b = t.assign(value=t["direction"].map(RECOVERY_REFERENCE))
    return pd.concat(
        [
            as_measurements(t.assign(arm="treatment"), phase="patching"),
            as_measurements(b.assign(arm="baseline"), phase="patching"),
        ],
        ignore_index=True,
    )


HEAD_METRICS = {
    "recovery": ("head_patch_recovery", "suffix"),
    "zero_effect": ("head_zero_ablation_effect", "all"),
    "mean_effect": ("head_mean_ablation_effect", "all"),
}


def patching_head_measurements(heads: pd.DataFrame) -> pd.DataFrame:
    """patching heads.csv -> measurements per head (setting ``head=H``), per condition and
    pooled (condition ``all``): patch recovery (clean -> corrupted at the suffix) and the
    zero / mean ablation effect (fraction of the clean-vs-corrupted lean removed), each
    against 0 (the unpatched / unablated run). ``small_denominator`` rows are left out."""
    ok = heads[~heads["small_denominator"].astype(bool)]
    frames = []
    for column, (metric, position) in HEAD_METRICS.items():
        part = ok[np.isfinite(ok[column])]
        for cond_frame in (part, part.assign(condition="all")):
            t = cond_frame.assign(
                metric=metric,
                position=position,
                site=cond_frame["hook"].str.split(".", n=2).str[2],
                setting="head=" + cond_frame["head"].astype(int).astype(str),
                unit=cond_frame["clean_id"],
                value=cond_frame[column],
            )
            frames.append(as_measurements(t.assign(arm="treatment"), phase="patching"))
            frames.append(as_measurements(t.assign(arm="baseline", value=0.0), phase="patching"))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else as_measurements(pd.DataFrame(), phase="patching")
    )


def directional_ablation_measurements(
    ablation: pd.DataFrame, site: str = "hook_resid_pre"
) -> pd.DataFrame:
    """patching directional_ablation.csv -> measurements per sample (unit): treatment =
    ablating the emotion direction / subspace at every chosen layer, baseline = unablated,
    control = ablating random directions / subspaces of the same dimension (seeds averaged
    per sample); position = the ablated position set. Metrics: ``ablation_probe_p_true``
    (final-layer probe probability of the sample's true class, all samples of the condition
    and the baseline label) and ``ablation_lean`` (next-token emotional lean, condition
    samples only)."""
    a = ablation.copy()
    a["probe_p_true"] = np.where(a["is_condition"].astype(bool), a["probe_p"], 1 - a["probe_p"])
    a["probe_p_true_base"] = np.where(
        a["is_condition"].astype(bool), a["probe_p_base"], 1 - a["probe_p_base"]
    )
    frames = []
    ablated = a[a["ablation"] != "none"]
    for kind in ("direction", "subspace"):
        treat = ablated[ablated["ablation"] == kind]
        ctrl = ablated[ablated["ablation"] == f"random_{kind}"]
        for metric, value_col, base_col, rows_of in (
            ("ablation_probe_p_true", "probe_p_true", "probe_p_true_base", False),
            ("ablation_lean", "lean", "lean_base", True),
        ):
            for arm, part, col in (
                ("treatment", treat, value_col),
                ("baseline", treat, base_col),
                ("control", ctrl, value_col),
            ):
                if rows_of:
                    part = part[part["is_condition"].astype(bool)]
                k = part["k"].astype(int)
                frames.append(
                    as_measurements(
                        part.assign(
                            arm=arm,
                            metric=metric,
                            position=part["positions"],
                            setting=f"ablation={kind} k=" + k.astype(str),
                            unit=part["sample_id"],
                            value=part[col].astype(float),
                        ),
                        phase="patching",
                        site=site,
                        layer=pd.NA,
                    )
                )
    return pd.concat(frames, ignore_index=True)


# The direction label of unsteered rows in samples.csv (steering.UNSTEERED, an artifact value).
STEERING_UNSTEERED = "none"
DEFAULT_STEERING_METRICS = (
    "marker_target",
    "vader_compound",
    "afinn",
    "polite_score",
    "perplexity",
    "distinct_2",
)


def steering_measurements(
    samples: pd.DataFrame, metrics: Sequence[str] = DEFAULT_STEERING_METRICS
) -> pd.DataFrame:
    """steering samples.csv -> measurements per prompt (unit): treatment = one steering
    configuration (layer x alpha x direction), baseline = the unsteered generation of the
    same prompt, control = the random directions (``control`` rows) at the same layer and
    alpha, seeds averaged per prompt. ``marker_target`` is the marker column of the
    direction's emotion (``marker_<condition>``); metrics missing from the table are skipped."""
    s = samples
    control = s["control"].astype(str).str.lower() == "true"
    base = s[s["direction"] == STEERING_UNSTEERED]
    steered = s[(s["direction"] != STEERING_UNSTEERED) & ~control]
    randoms = s[control]
    frames = []
    for (layer, alpha, mode, direction), part in steered.groupby(
        ["layer", "alpha", "alpha_mode", "direction"], sort=True
    ):
        condition = str(part["condition"].iloc[0])
        ctrl = randoms[
            (randoms["layer"] == layer)
            & (randoms["alpha"] == alpha)
            & (randoms["alpha_mode"] == mode)
        ]
        setting = f"direction={direction} alpha={alpha:g} mode={mode}"
        for metric in metrics:
            column = f"marker_{condition}" if metric == "marker_target" else metric
            if column not in s:
                continue
            for arm, rows in (("treatment", part), ("baseline", base), ("control", ctrl)):
                rows = rows[np.isfinite(rows[column].astype(float))]
                frames.append(
                    as_measurements(
                        pd.DataFrame(
                            {
                                "arm": arm,
                                "unit": rows["prompt_id"].astype(str).to_numpy(),
                                "value": rows[column].astype(float).to_numpy(),
                            }
                        ),
                        phase="steering",
                        dataset=str(s["dataset"].iloc[0]),
                        model=str(s["model"].iloc[0]),
                        layer=int(layer),
                        site="hook_resid_pre",
                        position="window+generated",
                        condition=condition,
                        setting=setting,
                        metric=metric,
                    )
                )
    if not frames:
        return as_measurements(pd.DataFrame())
    return pd.concat(frames, ignore_index=True)


def alignment_rows(
    table: pd.DataFrame, ks: Sequence[int] | None = None, matched_only: bool = True
) -> tuple[list[dict], list[str]]:
    """alignment {a}__{b}.csv -> rows: the overlap of each emotion subspace (after each map;
    ``method=none`` is the unmapped overlap_before) against the random-subspace draws
    (``vs_random_control``) and against maps fit on shuffled pairings (``vs_shuffled``, when
    the table has ``overlap_shuffled_sd``), by the Crawford-Howell single-case t test; at
    matched relative depths only (``matched_only``) and at the subspace dimensions ``ks``
    (default: every k). Model = ``a__b``, layer = layer_a, setting names method, k, layer_b."""
    t = table[table["matched_depth"].astype(bool)] if matched_only else table
    if ks is not None:
        t = t[t["k"].isin(list(ks))]
    n_random = _n_draws(table, "n_random")
    n_shuffles = _n_draws(table, "n_shuffles")
    rows, skipped = [], []
    for r in t.itertuples(index=False):
        model = f"{r.model_a}__{r.model_b}"
        metric = "overlap_before" if r.method == "none" else "overlap_after"
        value = r.overlap_before if r.method == "none" else r.overlap_after
        tests = [("vs_random_control", r.overlap_random_mean, r.overlap_random_sd, n_random)]
        if r.method != "none" and "overlap_shuffled_sd" in table:
            tests.append(("vs_shuffled", r.overlap_shuffled, r.overlap_shuffled_sd, n_shuffles))
        for comparison, mean, sd, n in tests:
            try:
                result = compare_single_case(float(value), float(mean), float(sd), int(n))
            except ValueError as err:
                skipped.append(f"alignment {model} {r.site} {r.layer_a}/{r.layer_b} k={r.k}: {err}")
                continue
            rows.append(
                {
                    "phase": "alignment",
                    "dataset": r.dataset,
                    "model": model,
                    "layer": int(r.layer_a),
                    "site": r.site,
                    "position": r.position,
                    "condition": r.condition,
                    "setting": f"method={r.method} k={int(r.k)} layer_b={int(r.layer_b)}",
                    "comparison": comparison,
                    "metric": metric,
                    "family": family_name("alignment", model, metric, r.dataset),
                    **result,
                }
            )
    return rows, skipped


def _n_draws(table: pd.DataFrame, column: str) -> int:
    if column in table and len(table):
        return int(table[column].iloc[0])
    return int(table.attrs.get(column, 0))


def sae_feature_rows(
    features: pd.DataFrame,
    metrics: Mapping,
    baseline: str,
    top_n: int = 5,
    confidence_level: float = 0.95,
) -> list[dict]:
    """SAE features.csv (+ metrics.json) -> rows: per emotion, the ``top_n`` features by
    |AUROC - 0.5| of their per-sample max activation (condition vs baseline samples, test
    split), tested against 0.5. Every live feature (firing in either group) is a hypothesis
    of the family (``n_family``), so keeping only the top rows does not weaken the
    correction. Family: sae x model x feature_auroc (every hook and architecture)."""
    f = features
    base = f[f["label"] == baseline].set_index("feature")
    rows = []
    dataset, model, hook = metrics["dataset"], metrics["model"], metrics["hook"]
    layer, site = (
        (int(hook.split(".")[1]), hook.split(".", 2)[2])
        if hook.startswith("blocks.")
        else (pd.NA, hook)
    )
    arch = metrics["architecture"]
    metric = "feature_auroc"
    cand = f[(f["label"] != baseline) & np.isfinite(f["auroc_vs_baseline"])].copy()
    live = (cand["sample_fire_rate"].to_numpy() > 0) | (
        base.loc[cand["feature"], "sample_fire_rate"].to_numpy() > 0
    )
    cand = cand[live]
    n_family = len(cand)
    cand["strength"] = (cand["auroc_vs_baseline"] - 0.5).abs()
    for label, part in cand.groupby("label", sort=True):
        top = part.sort_values(["strength", "feature"], ascending=[False, True]).head(top_n)
        for r in top.itertuples(index=False):
            b = base.loc[r.feature]
            result = auroc_test(r.auroc_vs_baseline, r.n_samples, b["n_samples"], confidence_level)
            rows.append(
                {
                    "phase": "sae",
                    "dataset": dataset,
                    "model": model,
                    "layer": layer,
                    "site": site,
                    "position": "token_max",
                    "condition": label,
                    "setting": f"architecture={arch} feature={int(r.feature)}",
                    "comparison": COMPARISONS["baseline"],
                    "metric": metric,
                    "family": family_name("sae", model, metric, dataset),
                    "mean_treatment": r.mean_max_activation,
                    "sd_treatment": np.nan,
                    "mean_baseline": b["mean_max_activation"],
                    "sd_baseline": np.nan,
                    "n_family_part": n_family,
                    **result,
                }
            )
    return rows


def sae_family_sizes(rows: Sequence[dict]) -> list[dict]:
    """Sum the per-SAE hypothesis counts into each SAE family's ``n_family``."""
    totals: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    for r in rows:
        key = (r["family"], r["setting"].split(" feature=")[0], r["site"], r["layer"])
        seen[key] = r["n_family_part"]
    for (family, *_), n in seen.items():
        totals[family] = totals.get(family, 0) + n
    return [
        {k: v for k, v in {**r, "n_family": totals[r["family"]]}.items() if k != "n_family_part"}
        for r in rows
    ]
