"""Cross-model alignment: linear maps between two models' residual streams, learned on
neutral samples only, the overlap of each emotion subspace after mapping against nulls that
go through the same map, and two map-free similarity measures (CKA, mutual k-NN).

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
  ``none``        the identity ``W = I``, only where d_a == d_b: it assumes the two models
                  write one basis (e.g. a model and its fine-tune) and is dropped otherwise;
                  its summaries say so (``basis=shared(assumed)``).

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
- ``overlap_before`` (descriptive, never tested): the same comparison with the learned
  rotation left out: A's subspace is written in A's PCA coordinates, those coordinates are
  read as if they were B's PCA coordinates (``W = P_a.T @ P_b``, i.e. Procrustes with
  ``R = I``) and compared with B's subspace. It is what "the same subspace in the same
  coordinates" would give once both models are reduced to a common dimension. PCA orders
  axes by variance and sklearn fixes each component's sign from its own coordinates, so
  this identity already lines up models whose top principal axes correspond one to one (up
  to sign): unrelated power-law models get ~0.84 at k = 1. It does not depend on the method.
- Nulls (:mod:`~.nulls`), each through the same operation as the observed overlap, at
  matched depths and for the k the statistics test (``null_ks``: ``stats.alignment_k``),
  as mean / sd (ddof 1) / n / n_ge (draws >= observed) columns; p = (1 + n_ge) / (1 + n):

  ``overlap_shuffled*``  the same method refit on ``n_shuffles`` shuffled pairings (B's
                         neutral rows permuted, seeded): same capacity and image, no
                         correspondence (Procrustes / CCA refit on the r-dim PCA scores,
                         ridge through its dual form: no d-dim work per draw).
  ``overlap_permuted*``  the SAME fitted map applied to subspaces recomputed (as the vectors
                         phase does) on ``n_label_permutations`` permutations of the train
                         labels: one permutation for both models, among the emotional rows
                         (within frames), the baseline rows the maps were fit on fixed. It
                         tests what is specific to an emotion (a register axis shared by
                         every emotion is in the null too).

  ``overlap_random_*`` (uniformly random k-dim subspaces of R^d_b, ``n_random`` draws,
  expectation k/d_b) is descriptive only: every mapped subspace lies in B's few
  high-variance axes, so unrelated models beat it (0.91 vs 0.0017 measured).
- Similarity rows (``measure`` ``cka_debiased`` / ``mutual_knn``, :mod:`~.similarity`), at
  matched depths: debiased linear CKA and mutual k-NN (``knn_k``) of the two models'
  test-split activations of every label (condition ``all``, k 0, no method), with the null
  of ``n_shuffles`` permuted pairings of those samples (``similarity_shuffled*``,
  ``n_shuffled*``). Overlap rows have measure ``subspace_overlap``.
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
  For ``none`` it is the R² of ``x_b ≈ mean_b + (x_a - mean_a)`` (the shared basis).
- Layer pairs: ``relative_depth`` is the fraction of blocks a hook has passed (resid_pre L:
  L / n_layers, resid_post L: (L + 1) / n_layers); ``matched_depth`` marks, per site, every
  layer of either model paired with the other model's nearest layer in relative depth. The
  full layer x layer grid is computed only for ``grid_sites`` x ``grid_positions``, matched
  pairs for every other site x position (:func:`alignment_table`); grid rows are descriptive
  (no nulls). Pairs of equal content (resid_post L is resid_pre L + 1) are computed once.

Modules: :mod:`~circuitflow.alignment.config` (settings), :mod:`~.inputs` (one model's
activations and subspaces), :mod:`~.maps` (the maps and their R²), :mod:`~.overlap`
(subspace overlaps), :mod:`~.nulls` (shuffled pairings, permuted labels, random bases),
:mod:`~.similarity` (CKA, mutual k-NN), :mod:`~.table` (one model pair's table),
:mod:`~.bootstrap` (replicates over samples), :mod:`~.summaries` (the statistics' input).
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
    MEASURES,
    METHODS,
    NO_MAP,
    OVERLAP,
    POSITIONS,
    SIMILARITY_MEASURES,
    SITES,
    AlignmentConfig,
    config_dict,
)
from circuitflow.alignment.inputs import Labelled, ModelInputs, Side, read_model_inputs
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
    shared_basis_map,
)
from circuitflow.alignment.nulls import (
    MapCoordinates,
    NullCache,
    label_permutations,
    null_counts,
    pairing_permutations,
    permuted_subspaces,
    random_bases,
    shuffle_permutations,
    shuffled_cores,
)
from circuitflow.alignment.overlap import (
    nested_basis,
    overlap_sweep,
    random_overlaps,
    subspace_overlap,
)
from circuitflow.alignment.similarity import (
    cka_debiased,
    mutual_knn,
    neighbour_sets,
    similarity_null,
    unbiased_centred_gram,
)
from circuitflow.alignment.summaries import COMPARISONS, alignment_summaries
from circuitflow.alignment.table import (
    ALL_CONDITIONS,
    COLUMNS,
    align_pair,
    alignment_table,
    emotion_permutations,
    matched_pairs,
    relative_depth,
    similarity_pair,
)

__all__ = [
    "ALL_CONDITIONS",
    "BOOTSTRAP_COLUMNS",
    "BOOTSTRAP_PAIRS",
    "COLUMNS",
    "COMPARISONS",
    "MEASURES",
    "METHODS",
    "NO_MAP",
    "OVERLAP",
    "POSITIONS",
    "SIMILARITY_MEASURES",
    "SITES",
    "AlignmentConfig",
    "BootstrapConfig",
    "Labelled",
    "LinearMap",
    "MapCoordinates",
    "ModelInputs",
    "NullCache",
    "Reduction",
    "RidgeFactor",
    "Side",
    "align_pair",
    "alignment_summaries",
    "alignment_table",
    "bootstrap_indices",
    "bootstrap_layer_pairs",
    "bootstrap_pair",
    "bootstrap_table",
    "canonical_directions",
    "cka_debiased",
    "common_rank",
    "emotion_permutations",
    "config_dict",
    "fit_cca",
    "fit_map",
    "fit_procrustes",
    "fit_ridge",
    "identity_map",
    "label_permutations",
    "map_r2",
    "matched_pairs",
    "mutual_knn",
    "neighbour_sets",
    "nested_basis",
    "null_counts",
    "overlap_sweep",
    "pairing_permutations",
    "pca_reduce",
    "permuted_subspaces",
    "random_bases",
    "random_overlaps",
    "read_model_inputs",
    "read_train_rows",
    "relative_depth",
    "replicate_side",
    "ridge_factor",
    "shared_basis_map",
    "shuffle_permutations",
    "shuffled_cores",
    "similarity_null",
    "similarity_pair",
    "subspace_overlap",
    "unbiased_centred_gram",
]
