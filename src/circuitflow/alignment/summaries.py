"""The alignment table as per-comparison summaries for the statistics phase.

Every tested value is one observed statistic against a null that went through the same
operation (design ``permutation``: ``n_reference`` draws, ``n_reference_ge`` of them >= the
value; ``circuitflow.stats`` computes p = (1 + n_ge) / (1 + n)):

- ``overlap_after`` of an emotion subspace after a map, ``vs_shuffled_pairs`` (the method
  refit on shuffled neutral pairings) and ``vs_permuted_labels`` (the same fitted map applied
  to subspaces recomputed on permuted train labels). Method ``none`` (the identity, only
  where d_a == d_b) has no fit to shuffle: it is tested against permuted labels only, and its
  setting says that it assumes a shared basis.
- ``cka_debiased`` and ``mutual_knn`` of the test-split activations, ``vs_shuffled_pairs``
  (the test samples' pairing permuted).

Rows at matched relative depths and the configured ``ks`` only (the table has nulls nowhere
else). ``overlap_before`` and the uniform random-subspace baseline are descriptive columns of
the table, never tested. model = ``a__b``, layer = layer_a, setting names method, k and
layer_b.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from circuitflow import store
from circuitflow.alignment.config import NO_MAP, OVERLAP, SIMILARITY_MEASURES

COMPARISONS = {"shuffled": "vs_shuffled_pairs", "permuted": "vs_permuted_labels"}
SHARED_BASIS = "basis=shared(assumed)"


def _setting(r) -> str:
    if r.measure != OVERLAP:
        return f"layer_b={int(r.layer_b)}"
    method = f"method={r.method}" + (f" {SHARED_BASIS}" if r.method == NO_MAP else "")
    return f"{method} k={int(r.k)} layer_b={int(r.layer_b)}"


def alignment_summaries(
    table: pd.DataFrame, ks: Sequence[int] | None = None, matched_only: bool = True
) -> pd.DataFrame:
    """alignment {a}__{b}.csv rows -> ``summaries.csv`` rows (design ``permutation``)."""
    t = table[table["matched_depth"].astype(bool)] if matched_only else table
    if ks is not None:
        t = t[(t["measure"] != OVERLAP) | t["k"].isin(list(ks))]
    rows = []
    for r in t.itertuples(index=False):
        if r.measure == OVERLAP:
            value, metric, nulls = r.overlap_after, "overlap_after", COMPARISONS
        elif r.measure in SIMILARITY_MEASURES:
            value, metric, nulls = r.similarity, r.measure, {"shuffled": COMPARISONS["shuffled"]}
        else:
            raise ValueError(
                f"alignment table: measure {r.measure!r} is not one of "
                f"{[OVERLAP, *SIMILARITY_MEASURES]}"
            )
        for null, comparison in nulls.items():
            n = getattr(r, f"n_{null}")
            if pd.isna(n) or int(n) < 1 or pd.isna(value):
                continue
            column = "similarity_shuffled" if r.measure != OVERLAP else f"overlap_{null}"
            rows.append(
                {
                    "phase": "alignment",
                    "dataset": r.dataset,
                    "model": f"{r.model_a}__{r.model_b}",
                    "layer": int(r.layer_a),
                    "site": r.site,
                    "position": r.position,
                    "condition": r.condition,
                    "setting": _setting(r),
                    "metric": metric,
                    "comparison": comparison,
                    "design": "permutation",
                    "value": float(value),
                    "reference_mean": float(getattr(r, column)),
                    "reference_sd": float(getattr(r, f"{column}_sd")),
                    "n_reference": int(n),
                    "n_reference_ge": int(getattr(r, f"n_{null}_ge")),
                }
            )
    return pd.DataFrame(rows, columns=store.SUMMARY_COLUMNS)
