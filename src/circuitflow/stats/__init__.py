"""Effect sizes, tests, bootstrap CIs, multiple-comparison corrections and power analysis.

Every phase's artifact becomes rows of one tidy table (:data:`EFFECT_COLUMNS`). The phases
hand on two generic layouts (see :mod:`circuitflow.store`); this package reads no phase's
own columns. Phases with per-unit data write long *measurements* (:data:`MEASUREMENT_COLUMNS`:
one value per unit and arm, ``measurements.csv``, plus the optional group-constant
:data:`MEASUREMENT_OPTIONAL`), and :func:`effect_rows` compares the ``treatment`` arm with the
``baseline`` arm (comparison ``vs_baseline``) and with the ``control`` arm
(``vs_random_control``) of each group:

- units present in both arms -> **paired** design: ``scipy.stats.ttest_rel`` and Cohen's
  ``d_z`` = mean(diff) / sd(diff) (several values of one unit in an arm are averaged first,
  e.g. random-control seeds of one prompt);
- no unit in common -> **independent** design: Welch's ``scipy.stats.ttest_ind`` and Hedges'
  ``g`` (Cohen's d with the pooled SD times the exact small-sample correction ``J``);
- ``design`` = ``rank`` -> **rank** design: ``scipy.stats.mannwhitneyu`` and the AUROC with
  the Hanley & McNeil (1982) CI (e.g. SAE features' per-sample max activations).

The first two get a BCa bootstrap CI of the effect (``scipy.stats.bootstrap``, seeded); a
group's ``unit_kind`` is named in ``test`` ("ttest_rel by frame"). Phases without per-unit
values write *summaries* (:data:`SUMMARY_COLUMNS`, ``summaries.csv``), one row per comparison,
tested by :func:`summary_rows` according to its design: ``single_case`` (one observed value
against ``n`` reference draws: the Crawford & Howell 1998 t test, effect ``z_cc``) or
``permutation`` (against its permutation null: the empirical p). P values are corrected within
a ``family`` (one phase x dataset x model x metric x comparison) by Bonferroni and
Benjamini-Hochberg (statsmodels); a family may declare more hypotheses than it has rows
(``n_family``, e.g. every live SAE feature when only the top ones are kept) and the correction
then counts the missing ones as p = 1 (conservative). A comparison that cannot be tested (too
few units, no variation) stays a row: p = 1, no estimate, the reason in ``note``.

Modules: :mod:`~circuitflow.stats.effects` (the designs), :mod:`~.corrections` (table layout,
families, corrections), :mod:`~.engine` (measurements and summaries -> effect rows),
:mod:`~.power` (power and sample sizes), :mod:`~.select_k` (the alignment's subspace
dimension, chosen and tested on different bootstrap replicates).
"""

from circuitflow.stats.calibration import (
    CALIBRATION_COLUMNS,
    NULLS,
    VERDICTS,
    CalibrationError,
    calibration_table,
    failing_phases,
    null_kind,
    rate_ci,
    relabel_store,
)
from circuitflow.stats.corrections import (
    COMPARISONS,
    DESIGNS,
    EFFECT_COLUMNS,
    KEYS,
    OPTIONAL,
    REQUIRED,
    SKIPPED_TEST,
    adjust_pvalues,
    family_name,
    finalize,
    join_notes,
    skipped_row,
    validate_effect_table,
)
from circuitflow.stats.effects import (
    EFFECT_SIZES,
    RELATIVE_PRECISION,
    cohens_d,
    cohens_dz,
    compare_independent,
    compare_paired,
    compare_permutation,
    compare_rank,
    compare_single_case,
    hanley_mcneil_se,
    hedges_correction,
    hedges_g,
)
from circuitflow.stats.engine import (
    ARMS,
    MEASUREMENT_COLUMNS,
    MEASUREMENT_OPTIONAL,
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
    LAYER_SELECTION,
    adjust_k_selection,
    choose_k,
    k_selection,
    split_replicates,
)

__all__ = [
    "CALIBRATION_COLUMNS",
    "NULLS",
    "VERDICTS",
    "CalibrationError",
    "calibration_table",
    "failing_phases",
    "null_kind",
    "rate_ci",
    "relabel_store",
    "ARMS",
    "COMPARISONS",
    "DESIGNS",
    "EFFECT_COLUMNS",
    "EFFECT_SIZES",
    "KEYS",
    "K_GROUP",
    "K_SELECTION_COLUMNS",
    "LAYER_SELECTION",
    "MEASUREMENT_COLUMNS",
    "MEASUREMENT_OPTIONAL",
    "OPTIONAL",
    "POWER_COLUMNS",
    "RELATIVE_PRECISION",
    "REQUIRED",
    "SKIPPED_TEST",
    "SUMMARY_COLUMNS",
    "SUMMARY_DESIGNS",
    "StatsError",
    "adjust_k_selection",
    "adjust_pvalues",
    "auroc_to_d",
    "choose_k",
    "cohens_d",
    "cohens_dz",
    "compare_arms",
    "compare_independent",
    "compare_paired",
    "compare_permutation",
    "compare_rank",
    "compare_single_case",
    "effect_rows",
    "family_name",
    "finalize",
    "hanley_mcneil_se",
    "hedges_correction",
    "hedges_g",
    "join_notes",
    "k_selection",
    "n_needed",
    "power_independent",
    "power_paired",
    "power_table",
    "skipped_row",
    "split_replicates",
    "summary_rows",
    "validate_effect_table",
    "validate_measurements",
    "validate_summaries",
]
