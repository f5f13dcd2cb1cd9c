"""Calibration: the phases' tests on permuted labels, and how often they reject.

The calibration run (``rules/calibration.smk``) puts a permuted-label copy of each prompt
dataset (``{dataset}.permuted{seed}``: labels permuted within frames and among the free
prompts of a split) through the same rules. Its effect table is read here: per phase x
metric x comparison, the share of tests with p < alpha and with p_fdr_bh < alpha, each with
a Clopper-Pearson interval (``scipy.stats.binomtest``). A comparison passes when the upper
bound of its p < alpha rate is at most ``max_rate`` (nominal: alpha).

Two kinds of null (:data:`NULLS`), read from each row's design and comparison:

- ``labels``: the reference arm is defined by the labels or is a control (other-label
  samples, random or matched directions, shuffled pairings, permuted subspaces). On permuted
  labels there is no effect to find, so a valid test rejects at about alpha.
- ``intervention``: a paired comparison against the same unit without the intervention
  (``vs_baseline`` of patching, steering, ablation). Permuting labels keeps the
  intervention, so rejections are expected: such a test is evidence that the intervention
  does something, not that it does something to the labelled property.
- ``pairing``: a comparison against shuffled cross-model pairings (``vs_shuffled_pairs``:
  maps refit on shuffled pairs, CKA and mutual k-NN of shuffled test pairs). It asks whether
  the two models' paired samples correspond, which permuting labels keeps as well.

Only ``labels`` rows are calibration tests: their verdict is calibrated, miscalibrated or
inconclusive and ``pass`` says whether they stay at the bound. The other kinds get the
verdict ``rejections_expected``; they neither pass nor fail (``pass`` empty).

Rows of one table share their permutation (all layers of a copy see the same shuffled
labels), so the rows are not independent and the binomial interval is narrower than the
truth; more seeds (``calibration.seeds``) add independent permutations.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from circuitflow import store
from circuitflow.core.errors import CircuitflowError
from circuitflow.stats.corrections import SKIPPED_TEST

NULLS = ("labels", "intervention", "pairing")
VERDICTS = ("calibrated", "miscalibrated", "inconclusive", "rejections_expected")
CALIBRATION_GROUP = ["phase", "metric", "comparison", "null"]
CALIBRATION_COLUMNS = [
    *CALIBRATION_GROUP,
    "design",
    "n_datasets",
    "n_untested",
    "n",
    "n_p",
    "rate_p",
    "rate_p_ci_low",
    "rate_p_ci_high",
    "n_fdr",
    "rate_fdr",
    "rate_fdr_ci_low",
    "rate_fdr_ci_high",
    "alpha",
    "max_rate",
    "pass",
    "verdict",
]
# The coordinate arrays a relabelled activation store rewrites (the rest is the real store's).
RELABELLED = ("label",)


class CalibrationError(CircuitflowError, ValueError):
    """A calibration input is unusable; the message names it and the fix."""


def null_kind(design: str, comparison: str) -> str:
    """``intervention`` for a paired comparison with the unit's own unmodified run,
    ``pairing`` for a comparison with shuffled cross-model pairings, else ``labels`` (see
    the module docstring)."""
    if design == "paired" and comparison == "vs_baseline":
        return "intervention"
    return "pairing" if comparison == "vs_shuffled_pairs" else "labels"


def rate_ci(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """``k`` of ``n`` as a rate with its Clopper-Pearson (exact) interval; NaNs when n = 0."""
    if n == 0:
        return np.nan, np.nan, np.nan
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level, method="exact")
    return k / n, float(ci.low), float(ci.high)


def verdict(low: float, high: float, alpha: float, max_rate: float) -> str:
    """``calibrated`` (upper bound <= max_rate), ``miscalibrated`` (lower bound > alpha: the
    rate is shown to exceed the nominal one) or ``inconclusive`` (too few tests to tell)."""
    if high <= max_rate:
        return "calibrated"
    if low > alpha:
        return "miscalibrated"
    return "inconclusive"


def calibration_table(
    effects: pd.DataFrame,
    alpha: float = 0.05,
    max_rate: float = 0.08,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Effect rows of the permuted-label run -> one row per phase x metric x comparison x
    null (:data:`CALIBRATION_COLUMNS`): tests with a p value (``n``), how many have p < alpha
    (``n_p``) and p_fdr_bh < alpha (``n_fdr``), both rates with Clopper-Pearson intervals,
    ``pass`` (upper bound of the p < alpha rate <= ``max_rate``) and the verdict. Rows left
    untested (test :data:`~circuitflow.stats.SKIPPED_TEST`, p = 1 by convention) are not
    tests: they are counted in ``n_untested`` only."""
    if not 0 < alpha < 1 or not 0 < max_rate <= 1:
        raise CalibrationError(
            f"alpha {alpha} and max_rate {max_rate} must lie in (0, 1) and (0, 1]"
        )
    needed = ("phase", "metric", "comparison", "design", "dataset", "test", "p", "p_fdr_bh")
    missing = [c for c in needed if c not in effects]
    if missing:
        raise CalibrationError(
            f"effect table lacks columns {missing}; rebuild it with the effect_sizes rule"
        )
    t = effects.copy()
    t["null"] = [null_kind(d, c) for d, c in zip(t["design"], t["comparison"], strict=True)]
    t["tested"] = (t["test"] != SKIPPED_TEST) & np.isfinite(pd.to_numeric(t["p"], errors="coerce"))
    rows = []
    for key, group in t.groupby(CALIBRATION_GROUP, sort=True):
        part = group[group["tested"]]
        n = len(part)
        n_p = int((part["p"] < alpha).sum())
        n_fdr = int((part["p_fdr_bh"] < alpha).sum())
        rate_p, low_p, high_p = rate_ci(n_p, n, confidence_level)
        rate_fdr, low_fdr, high_fdr = rate_ci(n_fdr, n, confidence_level)
        is_test = dict(zip(CALIBRATION_GROUP, key, strict=True))["null"] == "labels"
        if not is_test:
            judged, passed = "rejections_expected", None
        else:
            judged = verdict(low_p, high_p, alpha, max_rate) if n else "inconclusive"
            passed = bool(n > 0 and high_p <= max_rate)
        rows.append(
            {
                **dict(zip(CALIBRATION_GROUP, key, strict=True)),
                "design": "+".join(sorted(set(group["design"]))),
                "n_datasets": group["dataset"].nunique(),
                "n_untested": len(group) - n,
                "n": n,
                "n_p": n_p,
                "rate_p": rate_p,
                "rate_p_ci_low": low_p,
                "rate_p_ci_high": high_p,
                "n_fdr": n_fdr,
                "rate_fdr": rate_fdr,
                "rate_fdr_ci_low": low_fdr,
                "rate_fdr_ci_high": high_fdr,
                "alpha": alpha,
                "max_rate": max_rate,
                "pass": passed,
                "verdict": judged,
            }
        )
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def failing_phases(table: pd.DataFrame) -> list[str]:
    """Phases with at least one label-null metric x comparison that does not pass, sorted."""
    if not len(table):
        return []
    return sorted(set(table.loc[~passes(table) & (table["null"] == "labels"), "phase"]))


def passes(table: pd.DataFrame) -> pd.Series:
    """``pass`` as booleans (also as read back from CSV); non-label nulls are False here and
    are told apart by ``null``."""
    return table["pass"].astype(str).str.lower().isin(["true", "1", "1.0"])


# ---------------------------------------------------------------- relabelled activations
def _place(src: Path, dst: Path, link: bool) -> bool:
    """Hard-link ``src`` to ``dst`` when ``link`` and the file system allows it, else copy;
    True when linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    shutil.copy2(src, dst)
    return False


def relabel_store(
    source: str | os.PathLike, target: str | os.PathLike, rows: Sequence[dict]
) -> dict[str, int]:
    """An activation store for permuted-label ``rows``: the real store ``source`` with its
    ``label`` coordinate rewritten, written to ``target``.

    Activations depend on the texts only, and a permuted copy has the real dataset's sample
    ids, texts and splits, so extraction would give the same arrays: the chunk files are
    hard-linked (copied across file systems); metadata and the rewritten coordinates are
    copies, so writing them never touches the real store. Returns the counts of linked and
    copied files.
    """
    import zarr

    store.ignore_unstable_dtype_warning()
    src, dst = Path(source).resolve(), Path(target)
    coords = store.read_sample_coords(src)
    for key, column in (("sample", "sample_id"), ("split", "split"), ("frame_id", "frame_id")):
        stored = [str(x) for x in coords[key]]
        given = [str(r[column]) for r in rows]
        if stored != given:
            raise CalibrationError(
                f"{src}: its {key} coordinate differs from the permuted dataset's "
                "(it must be the same dataset, split alike); rebuild both with snakemake"
            )
    if dst.exists():
        shutil.rmtree(dst)
    counts = {"linked": 0, "copied": 0}
    for folder, _, files in os.walk(src, followlinks=True):
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(src)
            if name in store.NOT_CONTENT:
                continue
            link = name != "zarr.json" and rel.parts[0] not in RELABELLED
            counts["linked" if _place(path, dst / rel, link) else "copied"] += 1
    store.remove_manifest(dst)
    root = zarr.open_group(dst, mode="r+")
    labels = np.array([str(r["label"]) for r in rows])
    root.create_array("label", data=labels, dimension_names=["sample"], overwrite=True)
    return counts
