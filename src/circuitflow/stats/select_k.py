"""Choice of the subspace dimension k of each bootstrapped alignment, and its test.

The candidates are the k at which the alignment table carries the permuted-label null (the
labels of the train rows permuted, both subspaces recomputed, the same fitted map applied:
``stats.alignment_k``). The bootstrap replicates of a layer pair x condition x method (train
samples resampled per label, subspaces and maps refit) are split by replicate number: the first
``select_fraction`` of them choose k (the candidate whose overlap is most often the largest;
ties: the larger mean overlap, then the smaller k), the rest give ``k_stability``. The chosen k
is tested against the permuted-label null on the full samples: ``p_permuted`` = (1 + #null >=
observed) / (1 + n_permuted). The choice and the test share the train samples, so
``p_vs_permuted`` is the Bonferroni bound over everything that was chosen: min(1, n_k x n_pairs
x p_permuted), valid for any choice of k and of the layer pair (``n_pairs`` > 1 where
``alignment.bootstrap_pairs: best`` chose the pair on the same table); it is BH-corrected over
the table. The uniform random-subspace baseline stays a descriptive column, never tested.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

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
    "candidate",
    "overlap",
    "overlap_boot_mean",
    "overlap_ci_low",
    "overlap_ci_high",
    "random_mean",
    "overlap_permuted",
    "overlap_permuted_sd",
    "n_permuted",
    "n_permuted_ge",
    "selected",
    "k_selected",
    "k_ci_low",
    "k_ci_high",
    "k_stability",
    "n_bootstrap",
    "n_select",
    "n_test",
    "n_k",
    "n_pairs",
    "p_permuted",
    "p_vs_permuted",
    "p_fdr_bh",
    "test",
    "selection",
]
# alignment.bootstrap_pairs -> how the bootstrapped layer pair was chosen (column selection)
LAYER_SELECTION = {
    "best": "layer pair with the largest mean overlap_after on the alignment table "
    "(alignment.bootstrap_pairs: best): chosen on the full samples, not disjoint from this "
    "test; p_vs_permuted is Bonferroni over the n_pairs matched-depth pairs",
    "matched": "every matched-depth layer pair (alignment.bootstrap_pairs: matched): no selection",
}
_TABLE_COLUMNS = [
    "overlap_after",
    "overlap_random_mean",
    "overlap_permuted",
    "overlap_permuted_sd",
    "n_permuted",
    "n_permuted_ge",
]


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


def choose_k(score: pd.DataFrame) -> tuple[int, np.ndarray]:
    """score [replicate, k] -> (the k most often the argmax, each replicate's argmax); ties
    go to the larger mean score, then the smaller k."""
    return _choose(score.to_numpy(float), np.asarray(score.columns))


def _choose(score: np.ndarray, ks: np.ndarray) -> tuple[int, np.ndarray]:
    best = ks[np.argmax(score, axis=1)]
    counts = np.array([(best == k).sum() for k in ks])
    order = np.lexsort((ks, -score.mean(axis=0), -counts))  # counts, then mean, then k
    return int(ks[order[0]]), best


def _grid(part: pd.DataFrame, column: str, reps: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """One column of a group's replicate rows as [replicate, k] (NaN where a pair is missing)."""
    out = np.full((len(reps), len(ks)), np.nan)
    keep = np.isin(part["k"], ks)
    rows = part[keep]
    out[np.searchsorted(reps, rows["replicate"]), np.searchsorted(ks, rows["k"])] = rows[column]
    return out


def matched_pair_counts(table: pd.DataFrame) -> dict[tuple, int]:
    """(dataset, model_a, model_b, site, position) -> matched-depth layer pairs in the table."""
    keys = ["dataset", "model_a", "model_b", "site", "position"]
    if "matched_depth" not in table:
        return {}
    t = table[table["matched_depth"].astype(bool)]
    return {
        key: len(part[["layer_a", "layer_b"]].drop_duplicates())
        for key, part in t.groupby(keys, sort=True)
    }


def k_selection(
    table: pd.DataFrame,
    boot: pd.DataFrame,
    select_fraction: float,
    confidence_level: float = 0.95,
    selection: str = "",
    pair_chosen: bool = False,
) -> pd.DataFrame:
    """Subspace dimension k of each bootstrapped alignment (layer pair x condition x method),
    chosen on some replicates among the k with a permuted-label null and tested against that
    null (see the module docstring).

    Per k: the overlap on all samples (``table``; after the map, or before for method
    ``none``), the bootstrap mean and percentile CI over every replicate (``boot``), the
    random-subspace mean (descriptive) and the permuted-label null. ``k_ci_*``: percentile
    interval of every replicate's argmax among the candidates; ``k_stability``: the fraction of
    held-out replicates whose argmax is the chosen k. ``pair_chosen``: the layer pair was
    chosen among the table's matched-depth pairs (:data:`LAYER_SELECTION`, ``selection``)."""
    if boot.empty:
        return pd.DataFrame(columns=K_SELECTION_COLUMNS)
    lo, hi = (1 - confidence_level) / 2, (1 + confidence_level) / 2
    for column in _TABLE_COLUMNS:
        if column not in table:
            table = table.assign(**{column: np.nan})
    full = {
        tuple(row[: len(K_GROUP) + 1]): row[len(K_GROUP) + 1 :]
        for row in table[[*K_GROUP, "k", *_TABLE_COLUMNS]].itertuples(index=False, name=None)
    }
    pairs = matched_pair_counts(table)
    out = []
    for key, part in boot.groupby(K_GROUP, sort=True):
        group = dict(zip(K_GROUP, key, strict=True))
        reps, ks = np.unique(part["replicate"]), np.unique(part["k"])
        missing = [k for k in ks if (*key, k) not in full]
        if missing:
            raise ValueError(
                f"alignment table: no row for {group} k={missing[0]}, which its bootstrap has; "
                "rebuild both with snakemake"
            )
        values = np.array([full[(*key, k)] for k in ks], dtype=float)
        value, rmean, pmean, psd, n_perm, n_ge = values.T
        cand = ks[np.nan_to_num(n_perm) > 0]
        n_pairs = pairs.get(tuple(group[c] for c in K_GROUP[:3] + K_GROUP[5:7]), 1)
        n_pairs = n_pairs if pair_chosen else 1
        choose, test = split_replicates(reps, select_fraction)
        k_sel, j = None, None
        p_emp = p_adj = np.nan
        k_all = np.array([])
        stability = np.nan
        if len(cand) and len(choose):
            wide = _grid(part, "overlap_after", reps, cand)
            k_sel, _ = _choose(wide[np.isin(reps, choose)], cand)
            k_all = cand[np.argmax(wide, axis=1)]
            if len(test):
                stability = float((k_all[np.isin(reps, test)] == k_sel).mean())
            j = int(np.searchsorted(ks, k_sel))
            p_emp = (1 + n_ge[j]) / (1 + n_perm[j])
            p_adj = min(1.0, len(cand) * n_pairs * p_emp)
            described = (
                f"k = the most often best of replicates {choose[0]}-{choose[-1]} among k in "
                f"{[int(k) for k in cand]}; permuted-label null through the same map "
                f"({int(n_perm[j])} permutations), empirical p, Bonferroni over {len(cand)} k"
                + (f" x {n_pairs} layer pairs" if n_pairs > 1 else "")
            )
        else:
            described = (
                "not tested: no k with a permuted-label null (stats.alignment_k, "
                "alignment.n_label_permutations)"
                if not len(cand)
                else "not tested: no bootstrap replicate"
            )
        wide_all = _grid(part, "overlap_after", reps, ks)
        for i, k in enumerate(ks):
            chosen = i == j
            out.append(
                {
                    **group,
                    "k": int(k),
                    "candidate": bool(k in cand),
                    "overlap": value[i],
                    "overlap_boot_mean": float(np.nanmean(wide_all[:, i])),
                    "overlap_ci_low": float(np.nanquantile(wide_all[:, i], lo)),
                    "overlap_ci_high": float(np.nanquantile(wide_all[:, i], hi)),
                    "random_mean": rmean[i],
                    "overlap_permuted": pmean[i],
                    "overlap_permuted_sd": psd[i],
                    "n_permuted": n_perm[i],
                    "n_permuted_ge": n_ge[i],
                    "selected": chosen,
                    "k_selected": k_sel if k_sel is not None else np.nan,
                    "k_ci_low": _quantile(k_all, lo),
                    "k_ci_high": _quantile(k_all, hi),
                    "k_stability": stability,
                    "n_bootstrap": len(reps),
                    "n_select": len(choose),
                    "n_test": len(test),
                    "n_k": len(cand),
                    "n_pairs": n_pairs,
                    "p_permuted": p_emp if chosen else np.nan,
                    "p_vs_permuted": p_adj if chosen else np.nan,
                    "test": described,
                    "selection": selection,
                }
            )
    return adjust_k_selection(pd.DataFrame(out))


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="inverted_cdf")) if len(values) else np.nan


def adjust_k_selection(frame: pd.DataFrame) -> pd.DataFrame:
    """BH-FDR of ``p_vs_permuted`` over every selected k of the table (one family)."""
    frame = frame.copy()
    frame["p_fdr_bh"] = np.nan
    sel = frame["selected"].astype(bool) & frame["p_vs_permuted"].notna()
    if sel.any():
        p = frame.loc[sel, "p_vs_permuted"].to_numpy(float)
        frame.loc[sel, "p_fdr_bh"] = multipletests(p, method="fdr_bh")[1]
    return frame[K_SELECTION_COLUMNS]
