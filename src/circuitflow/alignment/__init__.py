"""Cross-model alignment: linear maps between two models' residual streams, learned on
neutral samples only, and the overlap of each emotion subspace before and after mapping.

Vocabulary (shapes use ``n`` samples, ``d_a`` / ``d_b`` model widths, ``k`` subspace dims):

- A *map* sends model A's activations to model B's: ``x_b ≈ mean_b + (x_a - mean_a) @ W``
  with ``W [d_a, d_b]`` kept factorised (:class:`LinearMap`). The same ``W`` maps a direction
  (a difference of activations) from A's space into B's; the offset plays no part there.
- Every map is fit on the **train-split neutral** samples of both models at one hook and one
  sentence-level position (``mean``, ``last``: token positions do not pair up across
  tokenizers), rows paired by sample id. Emotion samples never enter a fit.
- Methods (:data:`METHODS`):

  ``procrustes``  centre both sides, reduce each with PCA (sklearn, full SVD) to a common
                  ``r = min(r_max, n - 1, d_a, d_b)`` (lower if either side's neutral
                  activations have lower numerical rank), then
                  ``scipy.linalg.orthogonal_procrustes`` between the two ``[n, r]`` score
                  matrices: ``W = P_a.T @ (s R) @ P_b`` with ``P`` the ``[r, d]`` PCA
                  components and ``s`` the least-squares isotropic scale (it matters for
                  predictions only, not for subspaces).
  ``ridge``       ridge regression (``sklearn.linear_model.Ridge(alpha)``, written in its
                  dual form so one n x n solve per A layer serves every B layer; tests check it
                  equals sklearn) from centred A to centred B in the full widths. A is first
                  divided by its RMS row norm (total variance 1), so ``alpha`` does not depend
                  on the model's activation scale.
  ``cca``         CCA between the same PCA scores as Procrustes (CCA in the full widths is
                  degenerate with ``n < d``; this is the SVCCA construction), solved in closed
                  form (SVD of the whitened cross-covariance; it agrees with
                  ``sklearn.cross_decomposition.CCA``, whose iterative NIPALS fit is ~100x
                  slower). A is mapped to B *through the canonical space*: A's PCA scores become
                  its first ``c`` canonical variates, and B's PCA scores are regressed on those
                  variates by least squares (train split), so
                  ``W = P_a.T @ w_a[:, :c] @ G @ P_b``; A's dimensions outside its top ``c``
                  canonical directions are dropped.
  ``none``        no learned map, see ``overlap_before`` below.

- *Overlap* of two k-dim subspaces is the mean of cos² of their principal angles
  (``scipy.linalg.subspace_angles``, :func:`subspace_overlap`): 1 for the same subspace, 0 for
  orthogonal ones, k/d on average for a uniformly random k-dim subspace of R^d. A mapped
  subspace that loses rank counts the lost dimensions as orthogonal (the mean is over the
  nominal k). The table gets every k = 1..k_max at once from nested orthonormal bases as
  ``||Q_a[:, :k].T Q_b[:, :k]||_F² / k`` (:func:`overlap_sweep`; the squared singular values
  of ``Q_a.T Q_b`` are the cos²), which tests check equals ``subspace_overlap``.
- ``overlap_after``: A's emotion subspace (the first k rows of the vectors store's
  ``subspace``), mapped by ``W`` and orthonormalised, against B's subspace of the same
  emotion and k.
- ``overlap_before``: the same comparison with the learned rotation left out: A's subspace
  is written in A's PCA coordinates, those coordinates are read as if they were B's PCA
  coordinates (``W = P_a.T @ P_b``, i.e. Procrustes with ``R = I``) and compared with B's
  subspace. It is what "the same subspace in the same coordinates" would give once both models
  are reduced to a common dimension. PCA orders axes by variance and sklearn fixes each
  component's sign from its own coordinates, so this identity already lines up models whose
  top principal axes correspond one to one (up to sign); it is the floor a learned map has to
  beat, not a random baseline. It does not depend on the method; rows with method ``none``
  report it as their ``overlap_after`` too.
- Baselines in the same row: ``overlap_random_*`` — uniformly random k-dim subspaces of R^d_b
  against B's subspace (``n_random`` seeded draws; expectation k/d_b); ``overlap_shuffled`` —
  the mean over ``n_shuffles`` maps of the same method fit on shuffled pairings (B's neutral
  rows permuted, seeded), i.e. a map with the same capacity and image but no correspondence
  (``overlap_shuffled_sd``: their standard deviation, ddof 1).
- Bootstrap (:func:`bootstrap_table`, the ``.bootstrap.csv`` beside the table): the train
  samples of every label are resampled with replacement (stratified by label, the same
  sample ids for both models, ``n_bootstrap`` seeded replicates); each replicate recomputes
  the emotion subspaces (uncentred PCA of difference vectors, as the vectors phase) and
  refits every map, for the layer pairs and k = 1..k_max of ``bootstrap_sites`` x
  ``bootstrap_positions`` (``bootstrap_pairs``: the matched-depth pair with the largest
  mean overlap_after, or every matched pair).
- ``map_r2_test``: R² (as sklearn ``r2_score(..., multioutput="variance_weighted")``: one
  minus the summed squared error over the summed variance of B's d_b dims) of B's
  **test-split** neutral activations predicted from A's, so a reader can see the map works.
  For ``none`` it is the R² of reading A's PCA scores as B's (no scale fitted), typically <= 0.
- Layer pairs: ``relative_depth`` is the fraction of blocks a hook has passed (resid_pre L:
  L / n_layers, resid_post L: (L + 1) / n_layers); ``matched_depth`` marks, per site, every
  layer of either model paired with the other model's nearest layer in relative depth. The
  full layer x layer grid is computed only for ``grid_sites`` x ``grid_positions``, matched
  pairs for every other site x position (:func:`alignment_table`).

Modules: :mod:`~circuitflow.alignment.config` (settings), :mod:`~.maps` (the maps and their
R²), :mod:`~.overlap` (subspace overlaps), :mod:`~.nulls` (shuffled pairings, random bases),
:mod:`~.table` (one model pair's table), :mod:`~.bootstrap` (replicates over samples).
"""

from circuitflow.alignment.bootstrap import (
    BOOTSTRAP_COLUMNS,
    BOOTSTRAP_PAIRS,
    BootstrapConfig,
    bootstrap_indices,
    bootstrap_layer_pairs,
    bootstrap_pair,
    bootstrap_table,
    read_train_rows,
    replicate_side,
)
from circuitflow.alignment.config import (
    METHODS,
    NO_MAP,
    POSITIONS,
    SITES,
    AlignmentConfig,
    config_dict,
)
from circuitflow.alignment.maps import (
    LinearMap,
    Reduction,
    RidgeFactor,
    canonical_directions,
    common_rank,
    fit_cca,
    fit_map,
    fit_procrustes,
    fit_ridge,
    identity_map,
    map_r2,
    pca_reduce,
    ridge_factor,
)
from circuitflow.alignment.nulls import random_bases, shuffle_permutations
from circuitflow.alignment.overlap import (
    nested_basis,
    overlap_sweep,
    random_overlaps,
    subspace_overlap,
)
from circuitflow.alignment.summaries import alignment_summaries
from circuitflow.alignment.table import (
    COLUMNS,
    ModelInputs,
    Side,
    align_pair,
    alignment_table,
    matched_pairs,
    read_model_inputs,
    relative_depth,
)

__all__ = [
    "alignment_summaries",
    "BOOTSTRAP_COLUMNS",
    "BOOTSTRAP_PAIRS",
    "COLUMNS",
    "METHODS",
    "NO_MAP",
    "POSITIONS",
    "SITES",
    "AlignmentConfig",
    "BootstrapConfig",
    "LinearMap",
    "ModelInputs",
    "Reduction",
    "RidgeFactor",
    "Side",
    "align_pair",
    "alignment_table",
    "bootstrap_indices",
    "bootstrap_layer_pairs",
    "bootstrap_pair",
    "bootstrap_table",
    "canonical_directions",
    "common_rank",
    "config_dict",
    "fit_cca",
    "fit_map",
    "fit_procrustes",
    "fit_ridge",
    "identity_map",
    "map_r2",
    "matched_pairs",
    "nested_basis",
    "overlap_sweep",
    "pca_reduce",
    "random_bases",
    "random_overlaps",
    "read_model_inputs",
    "read_train_rows",
    "relative_depth",
    "replicate_side",
    "ridge_factor",
    "shuffle_permutations",
    "subspace_overlap",
]
