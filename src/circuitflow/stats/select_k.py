"""Choice of the subspace dimension k of each bootstrapped alignment, and its test.

Selection and testing use different replicates. The bootstrap replicates of a layer pair x
condition x method (train samples resampled per label, subspaces and maps refit) are split by
replicate number: the first ``select_fraction`` of them choose k (the k whose excess overlap
over the random-subspace baseline is most often the largest; ties: the larger mean excess on
those replicates, then the smaller k), the rest test that k: the one-sided Crawford-Howell t
of their mean overlap at k against the random draws (``p_unadjusted``), and ``p_boot`` =
(1 + held-out replicates whose overlap is not above their random mean) / (1 + held-out
replicates). Both halves resample the same train samples: they are disjoint draws, not
disjoint samples, so the held-out half shares the sampling noise the choice saw (on 1000
null alignments with 5 candidate k and 20 replicates, choosing and testing on the same
overlaps rejected 19.3% at one-sided alpha 0.05, the held-out half 21.3%). ``p_vs_random`` is
therefore also adjusted for the choice among the ``n_k`` candidates: min(1, n_k x
p_unadjusted), the Bonferroni bound of the max-statistic null over k, valid for any choice of
k (4.8% on that null); it is BH-corrected over the table. The
full-sample overlaps (the alignment table) are reported beside them and used for neither. The
layer pair itself may have been chosen on the alignment table (``selection`` column, from
``alignment.bootstrap_pairs``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from circuitflow.stats.effects import compare_single_case

K_GROUP = [
    "dataset",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "site",
    "position",
    "condition",
    "method",
]
K_SELECTION_COLUMNS = [
    *K_GROUP,
    "k",
    "overlap",
    "overlap_boot_mean",
    "overlap_ci_low",
    "overlap_ci_high",
    "random_mean",
    "random_sd",
    "excess",
    "selected",
    "k_selected",
    "k_ci_low",
    "k_ci_high",
    "k_stability",
    "n_bootstrap",
    "n_select",
    "n_test",
    "n_k",
    "overlap_test",
    "random_mean_test",
    "statistic",
    "df",
    "p_unadjusted",
    "p_vs_random",
    "p_boot",
    "p_fdr_bh",
    "test",
    "selection",
]
# alignment.bootstrap_pairs -> how the bootstrapped layer pair was chosen (column selection)
LAYER_SELECTION = {
    "best": "layer pair with the largest mean overlap_after on the alignment table "
    "(alignment.bootstrap_pairs: best): chosen on the full samples, not disjoint from this test",
    "matched": "every matched-depth layer pair (alignment.bootstrap_pairs: matched): no selection",
}


def split_replicates(replicates, select_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted replicate ids -> (the first ``select_fraction`` of them, the rest); each part
    keeps at least one replicate when there are two or more."""
    ids = np.sort(np.asarray(replicates))
    if not 0 < select_fraction < 1:
        raise ValueError(
            f"stats.k_select_fraction: {select_fraction} must lie strictly between 0 and 1"
        )
    if len(ids) < 2:
        return ids, ids[:0]
    n = min(max(int(round(select_fraction * len(ids))), 1), len(ids) - 1)
    return ids[:n], ids[n:]


def choose_k(excess: pd.DataFrame) -> tuple[int, np.ndarray]:
    """excess [replicate, k] -> (the k most often the argmax, each replicate's argmax); ties
    go to the larger mean excess, then the smaller k."""
    return _choose(excess.to_numpy(float), np.asarray(excess.columns))


def _choose(excess: np.ndarray, ks: np.ndarray) -> tuple[int, np.ndarray]:
    best = ks[np.argmax(excess, axis=1)]
    counts = np.array([(best == k).sum() for k in ks])
    order = np.lexsort((ks, -excess.mean(axis=0), -counts))  # counts, then mean, then k
    return int(ks[order[0]]), best


def _held_out_test(value: float, rmean: float, sd: float, n_random: int) -> dict:
    """Crawford-Howell t of the held-out replicates' mean overlap at k vs the random draws,
    one-sided (the overlap is above random)."""
    try:
        ch = compare_single_case(value, rmean, sd, n_random)
    except ValueError:
        return {"statistic": np.nan, "df": np.nan, "p": np.nan}
    p = float(sps.t.sf(ch["statistic"], ch["df"]))
    return {"statistic": ch["statistic"], "df": ch["df"], "p": p}


def _grid(part: pd.DataFrame, column: str, reps: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """One column of a group's replicate rows as [replicate, k] (NaN where a pair is missing)."""
    out = np.full((len(reps), len(ks)), np.nan)
    out[np.searchsorted(reps, part["replicate"]), np.searchsorted(ks, part["k"])] = part[column]
    return out


def k_selection(
    table: pd.DataFrame,
    boot: pd.DataFrame,
    n_random: int,
    select_fraction: float,
    confidence_level: float = 0.95,
    selection: str = "",
) -> pd.DataFrame:
    """Subspace dimension k of each bootstrapped alignment (layer pair x condition x method),
    chosen on some replicates and tested on the others (see the module docstring).

    Per k: the overlap on all samples (``table``; after the map, or before for method
    ``none``), the bootstrap mean and percentile CI over every replicate (``boot``), and the
    random-subspace baseline. ``k_ci_*``: percentile interval of every replicate's argmax;
    ``k_stability``: the fraction of held-out replicates whose argmax is the chosen k.
    ``selection`` describes how the layer pair was chosen (:data:`LAYER_SELECTION`)."""
    if boot.empty:
        return pd.DataFrame(columns=K_SELECTION_COLUMNS)
    lo, hi = (1 - confidence_level) / 2, (1 + confidence_level) / 2
    cols = ["overlap_after", "overlap_random_mean", "overlap_random_sd"]
    full = {
        tuple(row[:-3]): row[-3:]
        for row in table[[*K_GROUP, "k", *cols]].itertuples(index=False, name=None)
    }
    out = []
    for key, part in boot.groupby(K_GROUP, sort=True):
        reps, ks = np.unique(part["replicate"]), np.unique(part["k"])
        wide = _grid(part, "overlap_after", reps, ks)
        rand = _grid(part, "overlap_random_mean", reps, ks)
        missing = [k for k in ks if (*key, k) not in full]
        if missing:
            raise ValueError(
                f"alignment table: no row for {dict(zip(K_GROUP, key, strict=True))} k="
                f"{missing[0]}, which its bootstrap has; rebuild both with snakemake"
            )
        value, rmean, rsd = np.array([full[(*key, k)] for k in ks], dtype=float).T
        choose, test = split_replicates(reps, select_fraction)
        ic, it = np.isin(reps, choose), np.isin(reps, test)
        excess = wide - rand
        k_sel, _ = _choose(excess[ic], ks)
        j = int(np.searchsorted(ks, k_sel))
        k_all = ks[np.argmax(excess, axis=1)]
        k_test = k_all[it]
        if len(test):
            sd = rsd[j]
            if "overlap_random_sd" in part:
                sd = float(np.mean(_grid(part, "overlap_random_sd", reps, ks)[it, j]))
            held, held_rand = float(wide[it, j].mean()), float(rand[it, j].mean())
            ch = _held_out_test(held, held_rand, sd, n_random)
            not_above = int((wide[it, j] <= rand[it, j]).sum())
            described = (
                f"k = the most often best of replicates {choose[0]}-{choose[-1]}; "
                f"crawford_howell_t of the mean overlap of replicates {test[0]}-{test[-1]} "
                "(disjoint draws over the same train samples) vs uniform random subspaces, "
                f"one-sided, Bonferroni over the {len(ks)} candidate k"
            )
        else:
            held = held_rand = np.nan
            ch = {"statistic": np.nan, "df": np.nan, "p": np.nan}
            not_above = 0
            described = "not tested: fewer than 2 bootstrap replicates to split"
        p_adjusted = min(1.0, len(ks) * ch["p"]) if np.isfinite(ch["p"]) else np.nan
        group = dict(zip(K_GROUP, key, strict=True))
        for i, k in enumerate(ks):
            chosen = i == j
            out.append(
                {
                    **group,
                    "k": int(k),
                    "overlap": value[i],
                    "overlap_boot_mean": float(wide[:, i].mean()),
                    "overlap_ci_low": float(np.quantile(wide[:, i], lo)),
                    "overlap_ci_high": float(np.quantile(wide[:, i], hi)),
                    "random_mean": rmean[i],
                    "random_sd": rsd[i],
                    "excess": value[i] - rmean[i],
                    "selected": chosen,
                    "k_selected": k_sel,
                    "k_ci_low": float(np.quantile(k_all, lo, method="inverted_cdf")),
                    "k_ci_high": float(np.quantile(k_all, hi, method="inverted_cdf")),
                    "k_stability": float((k_test == k_sel).mean()) if len(test) else np.nan,
                    "n_bootstrap": len(reps),
                    "n_select": len(choose),
                    "n_test": len(test),
                    "n_k": len(ks),
                    "overlap_test": held if chosen else np.nan,
                    "random_mean_test": held_rand if chosen else np.nan,
                    "statistic": ch["statistic"] if chosen else np.nan,
                    "df": ch["df"] if chosen else np.nan,
                    "p_unadjusted": ch["p"] if chosen else np.nan,
                    "p_vs_random": p_adjusted if chosen else np.nan,
                    "p_boot": (1 + not_above) / (1 + len(test)) if chosen and len(test) else np.nan,
                    "test": described,
                    "selection": selection,
                }
            )
    return adjust_k_selection(pd.DataFrame(out))


def adjust_k_selection(frame: pd.DataFrame) -> pd.DataFrame:
    """BH-FDR of ``p_vs_random`` over every selected k of the table (one family)."""
    frame = frame.copy()
    frame["p_fdr_bh"] = np.nan
    sel = frame["selected"].astype(bool) & frame["p_vs_random"].notna()
    if sel.any():
        p = frame.loc[sel, "p_vs_random"].to_numpy(float)
        frame.loc[sel, "p_fdr_bh"] = multipletests(p, method="fdr_bh")[1]
    return frame[K_SELECTION_COLUMNS]
