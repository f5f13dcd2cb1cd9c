"""Effect sizes, tests, bootstrap CIs, multiple-comparison corrections and power analysis.

Every phase's artifact becomes rows of one tidy table (:data:`EFFECT_COLUMNS`). Phases with
per-sample data go through one path: an *adapter* turns the artifact into long
*measurements* (:data:`MEASUREMENT_COLUMNS`: one value per unit and arm, the layout of
``measurements.csv``, see :mod:`circuitflow.store`), and :func:`effect_rows` compares the
``treatment`` arm with the ``baseline`` arm (comparison ``vs_baseline``) and with the
``control`` arm (``vs_random_control``) of each group:

- units present in both arms -> **paired** design: ``scipy.stats.ttest_rel`` and Cohen's
  ``d_z`` = mean(diff) / sd(diff) (several values of one unit in an arm are averaged first,
  e.g. random-control seeds of one prompt);
- no unit in common -> **independent** design: Welch's ``scipy.stats.ttest_ind`` and Hedges'
  ``g`` (Cohen's d with the pooled SD times the exact small-sample correction ``J``).

Both get a BCa bootstrap CI of the effect (``scipy.stats.bootstrap``, seeded). Phases without
per-sample values have their own adapters: alignment overlaps (one observed value against
``n`` random or shuffled draws: the Crawford & Howell 1998 single-case t test, effect
``z_cc``) and SAE features (AUROC against 0.5: the normal approximation of the Mann-Whitney
U test, Hanley & McNeil 1982 CI). P values are corrected within a ``family`` (one phase x
dataset x model x metric) by Bonferroni and Benjamini-Hochberg (statsmodels); a family may
declare more hypotheses than it has rows (``n_family``, e.g. every SAE feature when only the
top ones are kept) and the correction then counts the missing ones as p = 1 (conservative).

Modules: :mod:`~circuitflow.stats.effects` (the designs), :mod:`~.corrections` (table layout,
families, corrections), :mod:`~.engine` (measurements -> effect rows), :mod:`~.phases` (the
phase adapters), :mod:`~.power` (power and sample sizes), :mod:`~.select_k` (the alignment's
subspace dimension).
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
from circuitflow.stats.phases import (
    DEFAULT_STEERING_METRICS,
    HEAD_METRICS,
    RECOVERY_REFERENCE,
    STEERING_UNSTEERED,
    alignment_rows,
    directional_ablation_measurements,
    patching_head_measurements,
    patching_residual_measurements,
    sae_family_sizes,
    sae_feature_rows,
    separation_rows,
    steering_measurements,
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
    "DEFAULT_STEERING_METRICS",
    "DESIGNS",
    "EFFECT_COLUMNS",
    "HEAD_METRICS",
    "KEYS",
    "K_GROUP",
    "K_SELECTION_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "OPTIONAL",
    "POWER_COLUMNS",
    "RECOVERY_REFERENCE",
    "RELATIVE_PRECISION",
    "REQUIRED",
    "STEERING_UNSTEERED",
    "SUMMARY_COLUMNS",
    "SUMMARY_DESIGNS",
    "StatsError",
    "adjust_k_selection",
    "adjust_pvalues",
    "alignment_rows",
    "auroc_test",
    "auroc_to_d",
    "cohens_d",
    "cohens_dz",
    "compare_arms",
    "compare_independent",
    "compare_paired",
    "compare_single_case",
    "directional_ablation_measurements",
    "effect_rows",
    "family_name",
    "finalize",
    "hedges_correction",
    "hedges_g",
    "k_selection",
    "n_needed",
    "patching_head_measurements",
    "patching_residual_measurements",
    "power_independent",
    "power_paired",
    "power_table",
    "sae_family_sizes",
    "sae_feature_rows",
    "separation_rows",
    "steering_measurements",
    "validate_effect_table",
    "summary_rows",
    "validate_measurements",
    "validate_summaries",
]
