"""The alignment table as per-comparison summaries for the statistics phase.

Each overlap of an emotion subspace (after a map; ``method=none``: the unmapped
``overlap_before``) is one observed value against a reference distribution: the random
k-dim subspaces of the target model (``vs_random_control``) and the maps fit on shuffled
pairings (``vs_shuffled``). Rows at matched relative depths and the configured ``ks`` only;
model = ``a__b``, layer = layer_a, setting names method, k and layer_b.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def alignment_summaries(
    table: pd.DataFrame,
    n_random: int,
    n_shuffles: int,
    ks: Sequence[int] | None = None,
    matched_only: bool = True,
) -> pd.DataFrame:
    """alignment {a}__{b}.csv rows -> ``summaries.csv`` rows (design ``single_case``)."""
    t = table[table["matched_depth"].astype(bool)] if matched_only else table
    if ks is not None:
        t = t[t["k"].isin(list(ks))]
    rows = []
    for r in t.itertuples(index=False):
        before = r.method == "none"
        refs = [("vs_random_control", r.overlap_random_mean, r.overlap_random_sd, n_random)]
        if not before and "overlap_shuffled_sd" in table:
            refs.append(("vs_shuffled", r.overlap_shuffled, r.overlap_shuffled_sd, n_shuffles))
        for comparison, mean, sd, n in refs:
            rows.append(
                {
                    "phase": "alignment",
                    "dataset": r.dataset,
                    "model": f"{r.model_a}__{r.model_b}",
                    "layer": int(r.layer_a),
                    "site": r.site,
                    "position": r.position,
                    "condition": r.condition,
                    "setting": f"method={r.method} k={int(r.k)} layer_b={int(r.layer_b)}",
                    "metric": "overlap_before" if before else "overlap_after",
                    "comparison": comparison,
                    "design": "single_case",
                    "value": r.overlap_before if before else r.overlap_after,
                    "reference_mean": mean,
                    "reference_sd": sd,
                    "n_reference": int(n),
                }
            )
    return pd.DataFrame(rows)
