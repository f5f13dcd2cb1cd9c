"""Choice of the subspace dimension k of each bootstrapped alignment.

The selected k maximises the excess overlap over the random-subspace baseline; the bootstrap
replicates give its CI and stability, and the overlap at that k is tested against the
random draws (BH-corrected over the table).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    "statistic",
    "df",
    "p_vs_random",
    "p_boot",
    "p_fdr_bh",
]


def k_selection(
    table: pd.DataFrame,
    boot: pd.DataFrame,
    n_random: int,
    confidence_level: float = 0.95,
) -> pd.DataFrame:
    """Subspace dimension k of each bootstrapped alignment (layer pair x condition x method).

    Per k: the overlap on all samples (``table``; after the map, or before for method
    ``none``), the bootstrap mean and percentile CI over replicates (``boot``: samples
    resampled, subspaces and maps refit), and the random-subspace baseline. The selected k
    maximises the excess overlap over the random baseline on all samples; its CI is the
    percentile interval of the replicates' argmax, ``k_stability`` the fraction of replicates
    that pick the same k. At the selected k the overlap is tested against the random draws
    (Crawford-Howell t, ``p_vs_random``, BH-corrected over every selection in the table) and
    ``p_boot`` = (1 + replicates whose overlap is not above their random mean) / (1 + B).
    """
    if boot.empty:
        return pd.DataFrame(columns=K_SELECTION_COLUMNS)
    lo, hi = (1 - confidence_level) / 2, (1 + confidence_level) / 2
    full = table.set_index([*K_GROUP, "k"])
    out = []
    for key, part in boot.groupby(K_GROUP, sort=True):
        wide = part.pivot(index="replicate", columns="k", values="overlap_after")
        rand = part.pivot(index="replicate", columns="k", values="overlap_random_mean")
        ks = list(wide.columns)
        obs = full.loc[[(*key, k) for k in ks]]
        value = obs["overlap_after"].to_numpy(float)
        rmean = obs["overlap_random_mean"].to_numpy(float)
        rsd = obs["overlap_random_sd"].to_numpy(float)
        excess = value - rmean
        k_sel = ks[int(np.argmax(excess))]
        k_boot = np.asarray(ks)[np.argmax((wide - rand).to_numpy(), axis=1)]
        j = ks.index(k_sel)
        try:
            ch = compare_single_case(value[j], rmean[j], rsd[j], n_random)
        except ValueError:
            ch = {"statistic": np.nan, "df": np.nan, "p": np.nan}
        not_above = int((wide[k_sel] <= rand[k_sel]).sum())
        for i, k in enumerate(ks):
            out.append(
                {
                    **dict(zip(K_GROUP, key, strict=True)),
                    "k": k,
                    "overlap": value[i],
                    "overlap_boot_mean": float(wide[k].mean()),
                    "overlap_ci_low": float(wide[k].quantile(lo)),
                    "overlap_ci_high": float(wide[k].quantile(hi)),
                    "random_mean": rmean[i],
                    "random_sd": rsd[i],
                    "excess": excess[i],
                    "selected": k == k_sel,
                    "k_selected": k_sel,
                    "k_ci_low": float(np.quantile(k_boot, lo, method="inverted_cdf")),
                    "k_ci_high": float(np.quantile(k_boot, hi, method="inverted_cdf")),
                    "k_stability": float((k_boot == k_sel).mean()),
                    "n_bootstrap": len(wide),
                    "statistic": ch["statistic"] if k == k_sel else np.nan,
                    "df": ch["df"] if k == k_sel else np.nan,
                    "p_vs_random": ch["p"] if k == k_sel else np.nan,
                    "p_boot": (1 + not_above) / (1 + len(wide)) if k == k_sel else np.nan,
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
