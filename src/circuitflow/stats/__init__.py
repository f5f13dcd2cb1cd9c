"""Effect sizes, tests, bootstrap CIs, multiple-comparison corrections and power analysis.

Every phase's artifact becomes rows of one tidy table (:data:`EFFECT_COLUMNS`). The phases
hand on two generic layouts (see :mod:`circuitflow.store`); this package reads no phase's
own columns. Phases with per-unit data write long *measurements* (:data:`MEASUREMENT_COLUMNS`:
one value per unit and arm, ``measurements.csv``), and :func:`effect_rows` compares the
``treatment`` arm with the ``baseline`` arm (comparison ``vs_baseline``) and with the
``control`` arm (``vs_random_control``) of each group:

- units present in both arms -> **paired** design: ``scipy.stats.ttest_rel`` and Cohen's
  ``d_z`` = mean(diff) / sd(diff) (several values of one unit in an arm are averaged first,
  e.g. random-control seeds of one prompt);
- no unit in common -> **independent** design: Welch's ``scipy.stats.ttest_ind`` and Hedges'
  ``g`` (Cohen's d with the pooled SD times the exact small-sample correction ``J``).

Both get a BCa bootstrap CI of the effect (``scipy.stats.bootstrap``, seeded). Phases without
per-unit values write *summaries* (:data:`SUMMARY_COLUMNS`, ``summaries.csv``), one row per
comparison, tested by :func:`summary_rows` according to its design: ``single_case`` (one
observed value against ``n`` reference draws, e.g. alignment overlaps against random or
shuffled maps: the Crawford & Howell 1998 t test, effect ``z_cc``) or ``auroc`` (e.g. SAE
features against 0.5: the normal approximation of the Mann-Whitney U test, Hanley & McNeil
1982 CI). P values are corrected within a ``family`` (one phase x
dataset x model x metric) by Bonferroni and Benjamini-Hochberg (statsmodels); a family may
declare more hypotheses than it has rows (``n_family``, e.g. every SAE feature when only the
top ones are kept) and the correction then counts the missing ones as p = 1 (conservative).

Modules: :mod:`~circuitflow.stats.effects` (the designs), :mod:`~.corrections` (table layout,
families, corrections), :mod:`~.engine` (measurements and summaries -> effect rows),
:mod:`~.power` (power and sample sizes), :mod:`~.select_k` (the alignment's subspace
dimension).
"""

from circuitflow.stats.corrections import (
    COMPARISONS,
    DESIGNS,
    EFFECT_COLUMNS,
    KEYS,
    OPTIONAL,
    REQUIRED,
    adjust_pvalues,
    family_name,
    finalize,
    validate_effect_table,
)
from circuitflow.stats.effects import (
    RELATIVE_PRECISION,
    auroc_test,
    cohens_d,
    cohens_dz,
    compare_independent,
    compare_paired,
    compare_permutation,
    compare_single_case,
    hedges_correction,
    hedges_g,
)
from circuitflow.stats.engine import (
    ARMS,
    MEASUREMENT_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_DESIGNS,
    StatsError,
    compare_arms,
    effect_rows,
    summary_rows,
    validate_measurements,
    validate_summaries,
)
from circuitflow.stats.power import (
    POWER_COLUMNS,
    auroc_to_d,
    n_needed,
    power_independent,
    power_paired,
    power_table,
)
from circuitflow.stats.select_k import (
    K_GROUP,
    K_SELECTION_COLUMNS,
    adjust_k_selection,
    k_selection,
)

__all__ = [
    "ARMS",
    "COMPARISONS",
    "DESIGNS",
    "EFFECT_COLUMNS",
    "KEYS",
    "K_GROUP",
    "K_SELECTION_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "OPTIONAL",
    "POWER_COLUMNS",
    "RELATIVE_PRECISION",
    "REQUIRED",
    "SUMMARY_COLUMNS",
    "SUMMARY_DESIGNS",
    "StatsError",
    "adjust_k_selection",
    "adjust_pvalues",
    "auroc_test",
    "auroc_to_d",
    "cohens_d",
    "cohens_dz",
    "compare_arms",
    "compare_independent",
    "compare_paired",
    "compare_permutation",
    "compare_single_case",
    "effect_rows",
    "family_name",
    "finalize",
    "hedges_correction",
    "hedges_g",
    "k_selection",
    "n_needed",
    "power_independent",
    "power_paired",
    "power_table",
    "validate_effect_table",
    "summary_rows",
    "validate_measurements",
    "validate_summaries",
]
