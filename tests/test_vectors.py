"""circuitflow.vectors.diffmeans: mean-difference directions recover a planted direction; projections."""

import numpy as np
import pandas as pd
import pytest

from circuitflow import store, vectors

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
        # one decomposition serves many draws and gives the same bytes as decomposing each time
        dec = rand.decompose(x)
        again = rand.matched_basis(dec, basis, np.random.default_rng(2))
        assert again.tobytes() == matched.tobytes()
        assert dec.vt.shape == (min(n - 1, d), d) and np.all(np.diff(dec.s) <= 0)


# ---------------------------------------------------------------- specificity
EMOTIONS = ["gratitude", "anger", "apology"]


def _simplex(rng, d):
    """Three orthonormal-then-centred unit directions (they sum to zero) and a shared axis
    orthogonal to them: each emotion's mean minus the other two's mean lies along its own."""
    q, _ = np.linalg.qr(rng.normal(size=(d, 4)))
    own = q[:, :3].T - q[:, :3].T.mean(0)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    return own, q[:, 3]


@pytest.fixture(scope="module")
def registers():
    """[sample, position=2, d]: every emotion = neutral + 4 * shared axis (an "emotional
    register") + 1.5 * its own direction + noise; frames hold one sample of each label."""
    rng = np.random.default_rng(5)
    d, n_frames = 48, 180
    own, shared = _simplex(rng, d)
    labels = np.tile([*EMOTIONS, "neutral"], n_frames)
    frame_id = np.repeat([f"f{i:03d}" for i in range(n_frames)], 4)
    split = np.where(np.repeat(np.arange(n_frames) % 3 == 0, 4), "test", "train")
    samples = np.array([f"{f}.{lab}" for f, lab in zip(frame_id, labels, strict=True)])
    acts = rng.normal(size=(labels.size, 2, d)) * 0.5 + rng.normal(size=(2, d)) * 3
    for c, emotion in enumerate(EMOTIONS):
        acts[labels == emotion] += 4.0 * shared + 1.5 * own[c]
    return acts, labels, split, frame_id, samples, own, shared


@pytest.mark.parametrize("probe", vectors.PROBES)
def test_specific_directions_recover_the_planted_ones_not_the_shared_axis(registers, probe):
    acts, labels, split, _, _, own, shared = registers
    train = split == "train"
    cfg = vectors.SpecificityConfig(seed=0, probe=probe)
    unit = vectors.contrast_directions(acts, labels, train, EMOTIONS, "neutral", cfg)
    assert set(unit) == set(vectors.CONTRASTS) == set(store.DIRECTION_VARIABLES)
    for contrast in vectors.CONTRASTS:
        assert unit[contrast].shape == (2, 3, acts.shape[-1])
        np.testing.assert_allclose(np.linalg.norm(unit[contrast], axis=-1), 1.0, rtol=1e-10)
    to_own = {k: np.einsum("pcd,cd->pc", unit[k], own) for k in vectors.CONTRASTS}
    to_shared = {k: unit[k] @ shared for k in vectors.CONTRASTS}
    assert (to_own["vs_others"] > 0.95).all(), to_own["vs_others"]
    assert (to_own["probe"] > 0.95).all(), to_own["probe"]
    assert (np.abs(to_shared["vs_others"]) < 0.2).all() and (np.abs(to_shared["probe"]) < 0.2).all()
    # emotion vs neutral is mostly the shared axis: 4 / sqrt(16 + 2.25) = 0.94
    assert (to_shared["vs_neutral"] > 0.9).all() and (to_own["vs_neutral"] < 0.45).all()
    axis = vectors.shared_axis(acts, labels, train, EMOTIONS, "neutral")
    assert (axis @ shared > 0.97).all(), axis @ shared
    cosine = vectors.cosine_to_shared(unit, axis)
    assert cosine.shape == (2, 3, len(vectors.CONTRASTS))
    k = vectors.CONTRASTS.index
    assert (cosine[..., k("vs_neutral")] > 0.9).all()
    assert (np.abs(cosine[..., k("vs_others")]) < 0.2).all()


def test_vs_others_is_the_difference_of_group_means():
    acts = np.array([[[1.0, 0.0]], [[3.0, 0.0]], [[0.0, 2.0]], [[0.0, 4.0]], [[9.0, 9.0]]])
    labels = np.array(["a", "a", "b", "c", "n"])
    unit = vectors.directions_vs_others(acts, labels, np.ones(5, bool), ["a", "b", "c"])
    np.testing.assert_allclose(unit[0, 0], np.array([2.0, -3.0]) / np.sqrt(13))
    # b - mean(a, a, c) = (0, 2) - (4/3, 4/3)
    np.testing.assert_allclose(unit[0, 1], np.array([-2.0, 1.0]) / np.sqrt(5))
    # one condition alone has no "others": NaN, and the probe cannot be fit either
    cfg = vectors.SpecificityConfig(seed=0)
    assert np.isnan(vectors.directions_vs_others(acts, labels, labels != "b", ["a"])).all()
    assert np.isnan(vectors.probe_directions(acts, labels, labels != "b", ["a"], cfg)).all()


def test_auroc_counts_ordered_pairs_and_ties():
    scores = np.array([[0.1, 0.5, 0.5, 0.9, 0.3]])
    pos = np.array([False, True, False, True, False])
    neg = np.array([True, False, True, False, True])
    # pairs (pos, neg): 0.5>0.1, 0.5=0.5 (half), 0.5>0.3, 0.9>all three -> 5.5 / 6
    np.testing.assert_allclose(vectors.auroc(scores, pos, neg), [5.5 / 6])
    from sklearn.metrics import roc_auc_score

    assert vectors.auroc(scores[0], pos, neg) == pytest.approx(
        roc_auc_score(pos[pos | neg], scores[0][pos | neg])
    )
    assert np.isnan(vectors.auroc(scores, pos, np.zeros(5, bool))).all()


def test_cv_folds_keep_frames_together_and_use_train_only(registers):
    _, labels, split, frame_id, samples, _, _ = registers
    train = split == "train"
    free = np.arange(labels.size) % 8 == 1  # some samples without a frame: their own group
    frame_id = np.where(free, "", frame_id)
    groups = vectors.cv_groups(samples, frame_id)
    assert len(np.unique(groups[free])) == free.sum()
    folds = vectors.cv_folds(labels, groups, train, [*EMOTIONS, "neutral"], 5, seed=0)
    assert len(folds) == 5
    union = np.zeros(labels.size, int)
    for val in folds:
        union += val
        assert not (val & ~train).any()
        inside = set(groups[val])
        assert not inside & set(groups[train & ~val])  # a frame never straddles folds
        for lab in EMOTIONS:  # stratified: every fold holds every label
            assert (val & (labels == lab)).sum() >= 10
    assert (union[train] == 1).all() and (union[~train] == 0).all()
    again = vectors.cv_folds(labels, groups, train, [*EMOTIONS, "neutral"], 5, seed=0)
    assert all((a == b).all() for a, b in zip(folds, again, strict=True))
    assert vectors.cv_folds(labels, np.zeros(labels.size, str), train, EMOTIONS, 5, 0) == []


def _layered(registers, signal):
    """Three hooks with the emotion-specific signal scaled by ``signal`` (hook 1 best)."""
    acts, labels, split, *_ = registers
    base = acts.copy()
    for c, emotion in enumerate(EMOTIONS):
        base[labels == emotion] -= 1.5 * registers[5][c]
    out = []
    for s in signal:
        a = base.copy()
        for c, emotion in enumerate(EMOTIONS):
            a[labels == emotion] += s * registers[5][c]
        out.append(a)
    return out


def test_layer_selection_reads_the_train_split_only(registers):
    _, labels, split, frame_id, samples, _, _ = registers
    train = split == "train"
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    positions = ["last", "mean"]
    cfg = vectors.SpecificityConfig(seed=0, folds=4)
    folds = vectors.cv_folds(
        labels, vectors.cv_groups(samples, frame_id), train, [*EMOTIONS, "neutral"], 4, 0
    )

    def select(per_hook):
        cv = np.stack(
            [
                vectors.cv_specificity(a, labels, train, folds, EMOTIONS, "neutral", cfg)
                for a in per_hook
            ]
        )
        assert cv.shape == (3, 2, 3, len(vectors.CONTRASTS))
        return cv, vectors.select_hooks(cv, hooks, positions, EMOTIONS)

    layered = _layered(registers, [0.2, 1.5, 0.6])
    cv, chosen = select(layered)
    assert len(chosen) == 3 * len(vectors.CONTRASTS) * 2
    k = vectors.CONTRASTS.index
    for contrast in ("vs_others", "probe"):
        rows = chosen[chosen.contrast == contrast]
        assert set(rows.hook) == {hooks[1]}, rows
        assert (rows.cv_auroc > 0.9).all()
        assert (cv[0, ..., k(contrast)] < cv[1, ..., k(contrast)]).all()
    # the test split made junk (and best at hook 2): the CV AUROC and the choice are unchanged
    junk = [a.copy() for a in layered]
    rng = np.random.default_rng(9)
    for h, a in enumerate(junk):
        a[~train] = rng.normal(size=a[~train].shape) * (10 if h == 2 else 1)
        if h == 2:
            for c, emotion in enumerate(EMOTIONS):
                a[~train & (labels == emotion)] += 50 * registers[5][c]
    cv_junk, chosen_junk = select(junk)
    np.testing.assert_array_equal(cv_junk, cv)
    pd.testing.assert_frame_equal(chosen_junk, chosen)
    # a hook without variation (zero directions: every projection ties at AUROC 0.5) is no
    # candidate, even where every other hook ranks below chance
    flat = np.ones_like(layered[0])
    cv_flat = vectors.cv_specificity(flat, labels, train, folds, EMOTIONS, "neutral", cfg)
    assert np.isnan(cv_flat).all()
    worse = np.concatenate([cv_flat[None], np.minimum(cv, 0.3)[:1]])
    rows = vectors.select_hooks(worse, hooks[:2], positions, EMOTIONS)
    assert set(rows.hook) == {hooks[1]} and len(rows) == len(chosen)


def test_specificity_rows_mark_the_selected_hook(registers):
    acts, labels, split, frame_id, samples, _, _ = registers
    train = split == "train"
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    positions = ["last", "mean"]
    cfg = vectors.SpecificityConfig(seed=0)
    per_hook = _layered(registers, [0.0, 1.5])
    units = [
        vectors.contrast_directions(a, labels, train, EMOTIONS, "neutral", cfg) for a in per_hook
    ]
    projections = {
        k: np.stack([vectors.project(a, u[k]) for a, u in zip(per_hook, units, strict=True)])
        for k in vectors.CONTRASTS
    }
    axis = [vectors.shared_axis(a, labels, train, EMOTIONS, "neutral") for a in per_hook]
    cosine = np.stack([vectors.cosine_to_shared(u, x) for u, x in zip(units, axis, strict=True)])
    cv = np.zeros((2, 2, 3, len(vectors.CONTRASTS)))
    cv[1] = 0.8  # hook 1 chosen everywhere
    cv[0, 1, 2, :] = 0.9  # except apology at "mean": hook 0 (the one without signal)
    selection = vectors.select_hooks(cv, hooks, positions, EMOTIONS)
    m, table = vectors.specificity_rows(
        projections, cosine, selection, hooks, positions, EMOTIONS, samples, labels, split,
        dataset="emotion", model="m",
    )  # fmt: skip
    assert list(m.columns) == [*store.MEASUREMENT_COLUMNS, "unit_kind", "note"]
    assert set(m.metric) == {"specificity_projection", "specificity_projection_selected"}
    assert set(m.unit_kind) == {"sample"}
    assert (
        m[m.setting.str.contains("selected=")].metric == "specificity_projection_selected"
    ).all()
    assert "sample" in store.UNIT_KINDS
    n_test = {lab: ((split == "test") & (labels == lab)).sum() for lab in EMOTIONS}
    every = m[~m.setting.str.contains("selected")]
    assert len(every) == len(vectors.CONTRASTS) * 2 * 2 * 3 * (n_test["anger"] * 3)
    selected = m[m.setting.str.endswith("selected=train_cv")]
    groups = selected.groupby(["setting", "position", "condition"]).layer.unique()
    assert len(groups) == len(vectors.CONTRASTS) * 2 * 3
    assert all(len(v) == 1 for v in groups)
    assert set(selected.setting) == {f"contrast={k} selected=train_cv" for k in vectors.CONTRASTS}
    apology = selected[(selected.condition == "apology") & (selected.position == "mean")]
    assert set(apology.layer) == {0}
    # treatment = the condition's test samples, baseline = the other emotions' (no neutral)
    one = m[(m.setting == "contrast=probe") & (m.layer == 1) & (m.position == "last")]
    anger = one[one.condition == "anger"]
    assert set(anger[anger.arm == "treatment"].unit) == set(
        samples[(split == "test") & (labels == "anger")]
    )
    base = anger[anger.arm == "baseline"].unit
    assert set(base) == set(samples[(split == "test") & np.isin(labels, ["gratitude", "apology"])])
    assert not (split[np.isin(samples, m.unit)] == "train").any()
    # the table: held-out AUROC at the chosen hook, high with the signal, ~0.5 without
    assert len(table) == len(selection)
    assert {"cv_auroc", "test_auroc", "cosine_to_shared_axis", "hook"} <= set(table.columns)
    signal = table[(table.hook == hooks[1]) & (table.contrast != "vs_neutral")]
    assert (signal.test_auroc > 0.95).all()
    none = table[(table.hook == hooks[0]) & (table.contrast == "vs_others")]
    assert len(none) == 1 and abs(float(none.test_auroc.iloc[0]) - 0.5) < 0.25
    row = table[(table.condition == "anger") & (table.contrast == "vs_others")].iloc[0]
    values = projections["vs_others"][1, positions.index(row.position), 1]
    test = split == "test"
    expected = vectors.auroc(
        values, test & (labels == "anger"), test & np.isin(labels, ["gratitude", "apology"])
    )
    assert row.test_auroc == pytest.approx(float(expected))


def test_separation_rows_name_their_contrast(planted):
    acts, labels, train, _ = planted
    unit, _ = vectors.directions(acts, labels, train, ["anger", "gratitude"], "neutral")
    proj = vectors.project(acts, unit)[None]
    split = np.where(train, "train", "test")
    samples = np.array([f"s{i}" for i in range(labels.size)])
    cosine = np.full((1, N_POS, 2), 0.93)
    m = vectors.separation_measurements(
        proj, ["blocks.2.hook_resid_post"], ["last", "mean"], ["anger", "gratitude"], samples,
        labels, split, baseline="neutral", dataset="d", model="m", cosine=cosine,
    )  # fmt: skip
    assert set(m.setting) == {"contrast=vs_neutral"} and set(m.unit_kind) == {"sample"}
    assert set(m.note) == {"shared-axis cosine 0.93"}
    assert set(m.metric) == {"projection_on_mean_diff"}


def test_specificity_config_takes_the_schema_defaults():
    from circuitflow.workflow import config_schema, schema_defaults

    defaults = schema_defaults("vectors")
    cfg = vectors.SpecificityConfig(seed=3)
    for name in ("folds", "probe", "probe_alpha", "probe_max_iter"):
        assert getattr(cfg, name) == defaults[f"specificity_{name}"]
    enum = config_schema()["properties"]["vectors"]["properties"]["specificity_probe"]["enum"]
    assert enum == list(vectors.PROBES)
    with pytest.raises(ValueError, match=r"^vectors.specificity_probe: 'lda' not among"):
        vectors.SpecificityConfig(seed=0, probe="lda")
    with pytest.raises(ValueError, match=r"^vectors.specificity_folds: 1 must be >= 2$"):
        vectors.SpecificityConfig(seed=0, folds=1)


@pytest.mark.parametrize("d", [12, 80])  # primal (rows > features) and dual
def test_ridge_probe_refits_a_subset_as_a_fresh_fit(d):
    from circuitflow.core.ridge import standardize

    rng = np.random.default_rng(d)
    n = 60
    x = rng.normal(size=(n, d)) * np.linspace(3, 0.2, d) + 40.0  # a large constant offset
    y = np.array(EMOTIONS)[rng.integers(0, 3, n)]
    probe = vectors.RidgeProbe(x, y, EMOTIONS, alpha=0.5)
    assert probe.primal == (n >= d)
    drop = np.arange(n) % 5 == 2
    refit = probe.weights(drop)
    fresh = vectors.RidgeProbe(x[~drop], y[~drop], EMOTIONS, alpha=0.5).weights()
    np.testing.assert_allclose(refit, fresh, rtol=1e-8, atol=1e-12)
    # the same estimator as ridge on standardized features (penalty alpha x n), mapped back
    xs, _, sd = standardize(x[~drop], x[:1])
    onehot = (y[~drop, None] == np.array(EMOTIONS)[None, :]).astype(float)
    k = len(xs)
    w = np.linalg.solve(xs.T @ xs + 0.5 * k * np.eye(d), xs.T @ (onehot - onehot.mean(0)))
    np.testing.assert_allclose(refit, w.T / sd, rtol=1e-7, atol=1e-12)
    assert not np.allclose(refit, probe.weights())  # the dropped rows mattered
    assert (vectors.RidgeProbe(np.ones((8, d)), y[:8], EMOTIONS, 1.0).weights() == 0).all()
