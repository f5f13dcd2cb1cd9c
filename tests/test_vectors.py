"""circuitflow.vectors.diffmeans: mean-difference directions recover a planted direction; projections."""

import numpy as np
import pytest

from circuitflow import vectors

D_MODEL = 32
N_POS = 2


@pytest.fixture(scope="module")
def planted():
    """Activations [sample, position, d_model]: 'anger' = neutral + 3 * u_anger + noise,
    'gratitude' = neutral + 3 * u_gratitude (another direction per position) + noise."""
    rng = np.random.default_rng(0)
    n_per = 200
    labels = np.repeat(["neutral", "anger", "gratitude"], n_per)
    train = np.tile(np.arange(n_per) % 2 == 0, 3)  # half of every class
    baseline = rng.normal(size=(N_POS, D_MODEL)) * 5  # shared offset, removed by the difference
    units = rng.normal(size=(N_POS, 2, D_MODEL))
    units /= np.linalg.norm(units, axis=-1, keepdims=True)  # [position, condition, d_model]
    acts = baseline + 0.3 * rng.normal(size=(labels.size, N_POS, D_MODEL))
    acts[labels == "anger"] += 3.0 * units[:, 0]
    acts[labels == "gratitude"] += 3.0 * units[:, 1]
    return acts, labels, train, units


def test_mean_difference_equals_group_means(planted):
    acts, labels, train, _ = planted
    diff = vectors.mean_difference(acts, labels, "anger", "neutral", train)
    expected = acts[train & (labels == "anger")].mean(0) - acts[train & (labels == "neutral")].mean(
        0
    )
    assert diff.shape == (N_POS, D_MODEL)
    assert diff.dtype == np.float64
    np.testing.assert_allclose(diff, expected, rtol=1e-12)
    # the mask matters: the test half gives a different (but close) vector
    other = vectors.mean_difference(acts, labels, "anger", "neutral", ~train)
    assert not np.allclose(diff, other)


def test_directions_recover_planted(planted):
    acts, labels, train, units = planted
    unit, norm = vectors.directions(acts, labels, train, ["anger", "gratitude"], "neutral")
    assert unit.shape == (N_POS, 2, D_MODEL)
    assert norm.shape == (N_POS, 2)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, rtol=1e-12)
    cosine = np.einsum("pcd,pcd->pc", unit, units)
    assert (cosine > 0.99).all(), cosine
    # noise: sd 0.3 * sqrt(2/100) per dim, |noise| ~ 0.24 in 32 dims -> norm ~ sqrt(9 + 0.06)
    np.testing.assert_allclose(norm, 3.0, atol=0.15)
    # the directions of the two conditions are not the same vector
    assert abs(np.dot(unit[0, 0], unit[0, 1])) < 0.9


def test_zero_difference_keeps_zero_direction():
    acts = np.ones((4, 1, 3))
    labels = np.array(["a", "a", "b", "b"])
    unit, norm = vectors.directions(acts, labels, np.ones(4, bool), ["a"], "b")
    assert norm.tolist() == [[0.0]]
    assert not np.isnan(unit).any()
    assert unit.tolist() == [[[0.0, 0.0, 0.0]]]


def test_project_shape_and_values(planted):
    acts, labels, train, _ = planted
    unit, _ = vectors.directions(acts, labels, train, ["anger", "gratitude"], "neutral")
    proj = vectors.project(acts, unit)
    assert proj.shape == (N_POS, 2, acts.shape[0])  # [position, condition, sample]
    for s in (0, 5, 250, 599):
        for p in range(N_POS):
            for c in range(2):
                assert proj[p, c, s] == pytest.approx(float(acts[s, p] @ unit[p, c]), rel=1e-10)
    # the planted class sits ~3 above the baseline along its own direction
    gap = proj[:, 0, labels == "anger"].mean(-1) - proj[:, 0, labels == "neutral"].mean(-1)
    np.testing.assert_allclose(gap, 3.0, atol=0.15)


def test_project_small_known_values():
    acts = np.array([[[1.0, 2.0]], [[3.0, -1.0]]])  # [sample=2, position=1, d=2]
    unit = np.array([[[1.0, 0.0], [0.6, 0.8]]])  # [position=1, condition=2, d=2]
    np.testing.assert_allclose(vectors.project(acts, unit), [[[1.0, 3.0], [2.2, 1.0]]])


@pytest.mark.parametrize("absent", ["anger", "neutral"])
def test_mean_difference_needs_both_classes(planted, absent):
    acts, labels, train, _ = planted
    mask = train & (labels != absent)
    with pytest.raises(ValueError) as err:
        vectors.mean_difference(acts, labels, "anger", "neutral", mask)
    assert str(err.value) == f"no training samples with label {absent!r}"


def test_mean_difference_unknown_label(planted):
    acts, labels, train, _ = planted
    with pytest.raises(ValueError, match="^no training samples with label 'x'$"):
        vectors.mean_difference(acts, labels, "x", "neutral", train)


# ---------------------------------------------------------------- subspaces
def test_difference_vectors(planted):
    acts, labels, train, _ = planted
    diffs = vectors.difference_vectors(acts[:, 0], labels, "anger", "neutral", train)
    assert diffs.shape == ((train & (labels == "anger")).sum(), D_MODEL)
    base = acts[train & (labels == "neutral"), 0].mean(0)
    np.testing.assert_allclose(
        diffs[0], acts[np.flatnonzero(train & (labels == "anger"))[0], 0] - base
    )
    # their mean is the mean-difference vector
    np.testing.assert_allclose(
        diffs.mean(0), vectors.mean_difference(acts, labels, "anger", "neutral", train)[0]
    )


def test_pca_subspace_recovers_planted_plane():
    rng = np.random.default_rng(1)
    u = rng.normal(size=16)
    u /= np.linalg.norm(u)
    v = rng.normal(size=16)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    diffs = 3 * u + rng.normal(size=(200, 1)) * 1.5 * v + 0.05 * rng.normal(size=(200, 16))
    comps, sing, ratio = vectors.pca_subspace(diffs, 3)
    assert comps.shape == (3, 16) and sing.shape == (3,) and ratio.shape == (3,)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-10)
    assert comps[0] @ u > 0.99  # uncentred: the mean difference is the first component
    assert abs(comps[1] @ v) > 0.99
    assert (np.diff(sing) <= 0).all()
    assert ratio[:2].sum() > 0.99
    # the sign is fixed by the data, not by LAPACK: flipping the data flips the components
    flipped, _, _ = vectors.pca_subspace(-diffs, 3)
    assert flipped[0] @ u < -0.99
    # k is capped by the rank of the data
    assert vectors.pca_subspace(diffs[:2], 5)[0].shape == (2, 16)
    with pytest.raises(ValueError, match="^NaN or inf in the difference vectors$"):
        vectors.pca_subspace(np.full((3, 4), np.nan), 2)


def test_cosine_matrix():
    unit = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    np.testing.assert_allclose(
        vectors.cosine_matrix(unit), [[1.0, 0.6, 0.0], [0.6, 1.0, -0.8], [0.0, -0.8, 1.0]]
    )
    batched = vectors.cosine_matrix(np.stack([unit, unit[::-1]]))
    assert batched.shape == (2, 3, 3)
    np.testing.assert_allclose(batched[1], vectors.cosine_matrix(unit[::-1]))


def test_matched_control_carries_the_direction_variance():
    from circuitflow.core import rand

    rng = np.random.default_rng(3)
    for d, n in ((200, 300), (300, 100)):
        x = rng.standard_normal((n, d)) * np.logspace(0, -3, d)  # a few high-variance axes
        xc = x - x.mean(0)

        def var(w, xc=xc):
            w = w / np.linalg.norm(w)
            return float(((xc @ w) ** 2).sum() / (len(xc) - 1))

        high = np.zeros(d)
        high[:3] = 1.0
        for target in (high, rng.standard_normal(d), np.eye(d)[d - 1]):
            u = rand.matched_unit(x, target, np.random.default_rng(1))
            assert np.linalg.norm(u) == pytest.approx(1.0)
            assert var(u) == pytest.approx(var(target), rel=0.05)
        # an isotropic unit direction carries far less than the high-variance one
        iso = rng.standard_normal(d)
        assert var(iso) < 0.2 * var(high)
        basis = rand.orthonormal_rows(rng.standard_normal((3, d)) * np.logspace(0, -3, d), 3)
        matched = rand.matched_basis(x, basis, np.random.default_rng(2))
        np.testing.assert_allclose(matched @ matched.T, np.eye(3), atol=1e-10)
