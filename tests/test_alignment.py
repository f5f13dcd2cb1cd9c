"""circuitflow.alignment: maps recover a planted rotation, overlaps, baselines, the table."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group

from circuitflow import alignment, store, vectors

D_A, D_B, K = 20, 24, 3
CONFIG = alignment.AlignmentConfig(cca_components=D_A, n_random=200, n_shuffles=5, k_max=5)


def _whitened(rng, n, d):
    """n x d rows whose sample covariance is exactly the identity: no preferred axes."""
    x = rng.standard_normal((n, d))
    x -= x.mean(axis=0)
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    return u @ vt * np.sqrt(n - 1)


def _planted(seed=0, n=400, noise=0.01, spectrum=None):
    """Model B = model A embedded in R^24 (zero-padded) and rotated by a random orthogonal Q,
    plus small noise. The emotion subspace of B is A's mapped by the same Q."""
    rng = np.random.default_rng(seed)
    x_a = np.vstack([_whitened(rng, n, D_A), _whitened(rng, n, D_A)])  # train, test
    if spectrum is not None:
        x_a = x_a * spectrum
    x_a += rng.normal(size=D_A) * 3  # an offset the maps must remove
    q = ortho_group.rvs(D_B, random_state=seed)
    embed = np.eye(D_A, D_B) @ q  # [d_a, d_b], orthonormal rows

    def to_b(x):
        return x @ embed + noise * rng.standard_normal((len(x), D_B)) + 5.0

    x_b = to_b(x_a)
    sub_a = np.linalg.qr(rng.standard_normal((D_A, 5)))[0].T  # [5, d_a] orthonormal rows
    sub_b = sub_a @ embed
    return x_a[:n], x_b[:n], x_a[n:], x_b[n:], sub_a, sub_b


@pytest.fixture(scope="module")
def planted():
    return _planted()


def _side(x_train, x_test, sub):
    return alignment.Side(x_train, x_test, {"anger": sub, "gratitude": sub[::-1].copy()})


def _rows(planted, config=CONFIG):
    x_a, x_b, t_a, t_b, sub_a, sub_b = planted
    rows = alignment.align_pair(_side(x_a, t_a, sub_a), _side(x_b, t_b, sub_b), config)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- overlaps
def test_overlap_identical_orthogonal_and_partial():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((30, 6)))[0].T  # [6, 30]
    assert alignment.subspace_overlap(basis[:3], basis[:3]) == pytest.approx(1.0)
    # a different basis of the same span
    mixed = ortho_group.rvs(3, random_state=2) @ basis[:3] * 2.5
    assert alignment.subspace_overlap(mixed, basis[:3]) == pytest.approx(1.0)
    assert alignment.subspace_overlap(basis[:3], basis[3:]) == pytest.approx(0.0, abs=1e-12)
    # two of three directions shared: cos² = 1, 1, 0
    assert alignment.subspace_overlap(basis[[0, 1, 2]], basis[[0, 1, 4]]) == pytest.approx(2 / 3)
    # a rank-deficient basis counts the lost direction as orthogonal
    deficient = np.stack([basis[0], basis[1], basis[0] + basis[1]])
    assert alignment.subspace_overlap(deficient, basis[:3]) == pytest.approx(2 / 3)


def test_overlap_of_random_subspaces_is_k_over_d():
    d, k_max = 40, 8
    rng = np.random.default_rng(3)
    target = np.linalg.qr(rng.standard_normal((d, k_max)))[0].T
    bases = alignment.random_bases(d, k_max, 2000, seed=4)
    sweep = alignment.random_overlaps(target, bases)  # [n, K]
    expected = np.arange(1, k_max + 1) / d  # E[sum cos²] = k * k / d
    np.testing.assert_allclose(sweep.mean(axis=0), expected, atol=0.004)
    # the fast sweep is subspace_angles' mean cos², for every k
    for i in range(3):
        for k in (1, 4, k_max):
            direct = alignment.subspace_overlap(bases[i, :, :k].T, target[:k])
            assert sweep[i, k - 1] == pytest.approx(direct, abs=1e-12)


def test_overlap_sweep_matches_subspace_angles_including_rank_loss():
    rng = np.random.default_rng(5)
    mapped = rng.standard_normal((6, 15))
    mapped[3] = mapped[0] - 2 * mapped[1]  # dependent row: rank lost at k = 4
    mapped[5] = 0.0
    target = rng.standard_normal((6, 15))
    sweep = alignment.overlap_sweep(mapped, target)
    for k in range(1, 7):
        assert sweep[k - 1] == pytest.approx(
            alignment.subspace_overlap(mapped[:k], target[:k]), abs=1e-10
        ), k


# ---------------------------------------------------------------- maps
@pytest.mark.parametrize("method", ["procrustes", "ridge", "cca"])
def test_maps_recover_planted_rotation(planted, method):
    x_a, x_b, t_a, t_b, sub_a, sub_b = planted
    fitted = alignment.fit_map(method, x_a, x_b, CONFIG)
    mapped = fitted.map_subspace(sub_a[:K])
    assert mapped.shape == (K, D_B)
    assert alignment.subspace_overlap(mapped, sub_b[:K]) > 0.99
    assert alignment.map_r2(fitted, t_a, t_b) > 0.99


def test_before_is_near_chance_and_baselines_are_low(planted):
    table = _rows(planted)
    assert set(table.method) == {"none", "procrustes", "ridge", "cca"}
    assert table.k.max() == CONFIG.k_max
    for method in ("procrustes", "ridge", "cca"):
        rows = table[table.method == method]
        assert (rows.overlap_after > 0.95).all(), rows
        # shuffled pairings: same capacity, no correspondence -> near chance in 20 dims
        assert (rows.overlap_shuffled < 0.5).all()
        assert rows.overlap_shuffled.mean() == pytest.approx((rows.k / D_A).mean(), abs=0.1)
        assert (rows.map_r2_test > 0.99).all()
    # with no preferred axes in the neutral data, PCA coordinates carry no correspondence:
    # "before" is at chance (k/d_a inside the 20-dim image, k/d_b for the random baseline)
    none = table[table.method == "none"]
    np.testing.assert_array_equal(none.overlap_before, none.overlap_after)
    assert none.overlap_shuffled.isna().all()
    assert none.overlap_before.mean() == pytest.approx(none.overlap_random_mean.mean(), abs=0.1)
    assert (none.overlap_before < 0.6).all()
    np.testing.assert_allclose(none.overlap_random_mean, none.k / D_B, atol=0.02)
    assert (table.n_train_neutral == len(planted[0])).all()


def test_pca_axes_line_up_when_spectra_are_distinct():
    """The documented caveat of overlap_before: with distinct variances, PCA coordinates
    already match axis to axis (up to sign), so "before" sits above chance."""
    spectrum = np.geomspace(10, 0.5, D_A)
    x_a, x_b, *_ = _planted(seed=7, spectrum=spectrum)
    r = alignment.common_rank(len(x_a), D_A, D_B, 64)
    ra, rb = alignment.pca_reduce(x_a, r), alignment.pca_reduce(x_b, r)
    cross = np.abs(ra.scores.T @ rb.scores) / np.outer(
        np.linalg.norm(ra.scores, axis=0), np.linalg.norm(rb.scores, axis=0)
    )
    np.testing.assert_allclose(np.diag(cross), 1.0, atol=0.01)


def test_ridge_equals_sklearn(planted):
    from sklearn.linear_model import Ridge

    x_a, x_b, *_ = planted
    x_a = x_a[:50] + np.random.default_rng(0).standard_normal((50, D_A))  # n ~ d, not exact
    x_b = x_b[:50]
    fitted = alignment.fit_ridge(x_a, x_b, alpha=0.7)
    centred = x_a - x_a.mean(0)
    scale = np.sqrt((centred**2).sum() / len(centred))
    ref = Ridge(alpha=0.7, fit_intercept=False).fit(centred / scale, x_b - x_b.mean(0))
    np.testing.assert_allclose(fitted.matrix, ref.coef_.T / scale, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        fitted.predict(x_a), ref.predict(centred / scale) + x_b.mean(0), rtol=1e-8
    )
    # map_r2 is sklearn's variance-weighted R²
    from sklearn.metrics import r2_score

    expected = r2_score(x_b, fitted.predict(x_a), multioutput="variance_weighted")
    assert alignment.map_r2(fitted, x_a, x_b) == pytest.approx(expected, rel=1e-12)


def test_cca_closed_form_matches_sklearn():
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(8)
    n, r = 300, 6
    shared = rng.standard_normal((n, 3)) * [3.0, 2.0, 1.0]
    x_a = np.hstack([shared, rng.standard_normal((n, 5))]) @ rng.standard_normal((8, 8))
    x_b = np.hstack([shared, rng.standard_normal((n, 6))]) @ rng.standard_normal((9, 9))
    x_a += 0.5 * rng.standard_normal(x_a.shape)
    x_b += 0.5 * rng.standard_normal(x_b.shape)
    ra, rb = alignment.pca_reduce(x_a, r), alignment.pca_reduce(x_b, r)
    w_a, w_b, rho = alignment.canonical_directions(ra.scores, rb.scores)
    u, v = ra.scores @ w_a, rb.scores @ w_b
    np.testing.assert_allclose(np.cov(u.T), np.eye(r), atol=1e-10)
    np.testing.assert_allclose(np.diag(np.cov(u.T, v.T)[:r, r:]), rho, atol=1e-10)
    ref = CCA(n_components=3, max_iter=5000, tol=1e-10).fit(ra.scores, rb.scores)
    su, sv = ref.transform(ra.scores, rb.scores)
    for i in range(3):
        assert abs(np.corrcoef(su[:, i], u[:, i])[0, 1]) > 0.999
        assert abs(np.corrcoef(sv[:, i], v[:, i])[0, 1]) > 0.999
        assert np.corrcoef(su[:, i], sv[:, i])[0, 1] == pytest.approx(rho[i], abs=1e-4)


def test_deterministic(planted):
    first, second = _rows(planted), _rows(planted)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    x_a, x_b, *_ = planted
    for method in ("procrustes", "ridge", "cca", "none"):
        a = alignment.fit_map(method, x_a, x_b, CONFIG).matrix
        b = alignment.fit_map(method, x_a, x_b, CONFIG).matrix
        np.testing.assert_array_equal(a, b)
    # a different seed changes the baselines, not the maps
    other = _rows(
        planted, alignment.AlignmentConfig(**{**alignment.config_dict(CONFIG), "seed": 1})
    )
    np.testing.assert_array_equal(first.overlap_after, other.overlap_after)
    assert not np.array_equal(first.overlap_shuffled.dropna(), other.overlap_shuffled.dropna())


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="alignment.methods"):
        alignment.AlignmentConfig(methods=("procrustes", "pls"))
    with pytest.raises(ValueError, match="alignment.ridge_alpha"):
        alignment.AlignmentConfig(ridge_alpha=0)
    with pytest.raises(ValueError, match="unknown alignment method"):
        alignment.fit_map("pls", np.zeros((5, 2)), np.zeros((5, 2)))
    cfg = alignment.AlignmentConfig.from_config({"pairs": [["a", "b"]], "r_max": 8}, 3, 7)
    assert (cfg.r_max, cfg.seed, cfg.k_max) == (8, 3, 7)


# ---------------------------------------------------------------- depths
def test_relative_depth_and_matched_pairs():
    assert alignment.relative_depth(0, "hook_resid_pre", 30) == 0
    assert alignment.relative_depth(29, "hook_resid_post", 30) == 1
    pairs = alignment.matched_pairs(range(30), range(18), "hook_resid_post", 30, 18)
    assert (29, 17) in pairs and (14, 8) in pairs  # 15/30 = 9/18
    assert {la for la, _ in pairs} == set(range(30))
    assert {lb for _, lb in pairs} == set(range(18))
    swapped = alignment.matched_pairs(range(18), range(30), "hook_resid_post", 18, 30)
    assert {(lb, la) for la, lb in swapped} == pairs
    same = alignment.matched_pairs(range(4), range(4), "hook_resid_pre", 4, 4)
    assert same == {(i, i) for i in range(4)}


# ---------------------------------------------------------------- table from stores
N_LAYERS = {"tiny-a": 3, "tiny-b": 2}


def _write_stores(root, name, d, embed, n_layers, rng_seed=11):
    """Activation + vectors stores of a tiny synthetic model. Layer L of tiny-b is layer
    (L + 1) of tiny-a seen through ``embed``; emotion = neutral + a planted 2-dim signal."""
    rng = np.random.default_rng(rng_seed)
    n_per, d_a = 40, embed.shape[0]
    labels = np.repeat(["neutral", "anger", "gratitude"], n_per)
    ids = np.array([f"p{i:03d}" for i in range(labels.size)])
    split = np.where(np.arange(labels.size) % 4 == 0, "test", "train")
    signal = {"anger": rng.standard_normal((2, d_a)), "gratitude": rng.standard_normal((2, d_a))}
    base = [rng.standard_normal((labels.size, 3, d_a)) for _ in range(4)]
    for layer in range(4):
        for c, s in signal.items():
            rows = labels == c
            base[layer][rows] += (rng.standard_normal((rows.sum(), 1, 2)) + 2) @ s
    order = rng.permutation(labels.size)  # stores need not list samples in the same order
    data, subspaces, hooks = {}, [], []
    offset = 0 if name == "tiny-a" else 1
    for layer in range(n_layers):
        for site in alignment.SITES:
            src = base[layer + offset + (site == "hook_resid_post")][order] @ embed
            hook = store.hook_name(layer, site)
            hooks.append(hook)
            data[hook] = (("sample", "position", "d_model"), src.astype(np.float16))
            comps = np.zeros((3, 2, 4, d))
            for i in range(3):
                for j, c in enumerate(["anger", "gratitude"]):
                    diffs = vectors.difference_vectors(
                        src[:, i], labels[order], c, "neutral", split[order] == "train"
                    )
                    found = vectors.pca_subspace(diffs, 4)[0]
                    comps[i, j, : len(found)] = found
            subspaces.append(comps)
    import xarray as xr

    coords = {
        "sample": ids[order],
        "label": labels[order],
        "split": split[order],
        "frame_id": np.zeros(labels.size, int),
    }
    acts = xr.Dataset(
        data,
        coords={
            "sample": coords["sample"],
            "position": list(store.POSITIONS),
            **{key: ("sample", coords[key]) for key in store.SAMPLE_COORDS},
        },
        attrs={"model": name, "n_layers": n_layers, "d_model": d},
    )
    acts_path, vec_path = root / f"{name}.acts.zarr", root / f"{name}.vectors.zarr"
    store.write_dataset(acts_path, acts)
    vec = store.vectors_dataset(
        hooks,
        ["anger", "gratitude"],
        coords,
        {"subspace": (["hook", "position", "condition", "component", "d_model"], subspaces)},
        attrs={"model": name},
    )
    store.write_dataset(vec_path, vec)
    return acts_path, vec_path


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("alignment-stores")
    d_a, d_b = 12, 14
    embed_b = np.eye(d_a, d_b) @ ortho_group.rvs(d_b, random_state=0)
    return {
        "tiny-a": _write_stores(root, "tiny-a", d_a, np.eye(d_a), N_LAYERS["tiny-a"]),
        "tiny-b": _write_stores(root, "tiny-b", d_b, embed_b, N_LAYERS["tiny-b"]),
    }


def _table(tiny_stores, config):
    a, ids = alignment.read_model_inputs(
        *tiny_stores["tiny-a"], "neutral", ["mean", "last"], alignment.SITES
    )
    b, _ = alignment.read_model_inputs(
        *tiny_stores["tiny-b"], "neutral", ["mean", "last"], alignment.SITES, sample_order=ids
    )
    return alignment.alignment_table(a, b, config, "toy")


def test_table_from_stores(tiny_stores):
    config = alignment.AlignmentConfig(
        k_max=3, n_random=20, n_shuffles=2, cca_components=12, ridge_alpha=0.01
    )
    table = _table(tiny_stores, config)
    assert list(table.columns) == list(alignment.COLUMNS)
    assert (table.dataset == "toy").all()
    assert set(table.model_a) == {"tiny-a"} and set(table.model_b) == {"tiny-b"}
    assert set(table.method) == {"none", "procrustes", "ridge", "cca"}
    assert set(table.k) == {1, 2, 3}
    assert (table.n_train_neutral == 30).all()
    overlaps = table[["overlap_before", "overlap_after", "overlap_random_mean"]]
    assert ((overlaps >= -1e-9) & (overlaps <= 1 + 1e-9)).all().all()
    # the full grid only for resid_post x mean; matched depths elsewhere
    pairs = table.groupby(["site", "position"])[["layer_a", "layer_b"]].apply(
        lambda g: set(map(tuple, g.drop_duplicates().values))
    )
    assert pairs["hook_resid_post", "mean"] == {(la, lb) for la in range(3) for lb in range(2)}
    matched_post = alignment.matched_pairs(range(3), range(2), "hook_resid_post", 3, 2)
    assert pairs["hook_resid_post", "last"] == matched_post
    grid = table[(table.site == "hook_resid_post") & (table.position == "mean")]
    np.testing.assert_array_equal(
        grid.matched_depth,
        [p in matched_post for p in zip(grid.layer_a, grid.layer_b, strict=True)],
    )
    rel = table.drop_duplicates(["site", "layer_a"])
    np.testing.assert_allclose(
        rel.relative_depth_a, (rel.layer_a + (rel.site == "hook_resid_post")) / 3
    )
    # resid_post of tiny-a layer 1 is tiny-b's resid_post layer 0 rotated: the maps find it
    hit = table[(table.site == "hook_resid_post") & (table.layer_a == 1) & (table.layer_b == 0)]
    for method in ("procrustes", "ridge", "cca"):
        rows = hit[(hit.method == method) & (hit.k == 1)]
        assert (rows.map_r2_test > 0.95).all(), rows
        assert (rows.overlap_after > 0.9).all(), rows
        assert (rows.overlap_after > rows.overlap_shuffled + 0.3).all(), rows
    assert table.equals(_table(tiny_stores, config))


def test_read_model_inputs_rejects_unpaired_samples(tiny_stores):
    a, ids = alignment.read_model_inputs(
        *tiny_stores["tiny-a"], "neutral", ["mean"], ["hook_resid_pre"]
    )
    with pytest.raises(ValueError, match="missing"):
        alignment.read_model_inputs(
            *tiny_stores["tiny-b"],
            "neutral",
            ["mean"],
            ["hook_resid_pre"],
            sample_order=np.array(["nope"]),
        )
    with pytest.raises(ValueError, match="baseline label 'calm'"):
        alignment.read_model_inputs(*tiny_stores["tiny-a"], "calm", ["mean"], ["hook_resid_pre"])


def test_defaults_match_the_config_schema():
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "schemas/config.schema.yaml").read_text())
    props = schema["properties"]["alignment"]["properties"]
    defaults = alignment.config_dict(alignment.AlignmentConfig())
    boot = alignment.BootstrapConfig()
    boot_defaults = {
        "n_bootstrap": boot.n_bootstrap,
        "bootstrap_sites": list(boot.sites),
        "bootstrap_positions": list(boot.positions),
        "bootstrap_pairs": boot.pairs,
    }
    for key, spec in props.items():
        if "default" in spec:
            assert {**defaults, **boot_defaults}[key] == spec["default"], key
    assert set(defaults) - set(props) == {"seed"}  # seed is the global config key
    assert alignment.BootstrapConfig.from_config({}) == boot


def test_low_rank_neutral_data_uses_only_the_axes_that_vary(planted):
    """E.g. the same last token in every neutral prompt: PCA axes past the rank are arbitrary."""
    x_a, x_b, t_a, t_b, sub_a, sub_b = planted
    low = x_a[:, :2] @ np.random.default_rng(0).standard_normal((2, D_A))  # rank 2
    const = np.tile(t_a[:1], (len(t_a), 1))  # constant test rows: R² undefined
    a, b = _side(low, const, sub_a), _side(x_b, np.tile(t_b[:1], (len(t_b), 1)), sub_b)
    assert a.reduction(20).rank == 2
    table = pd.DataFrame(alignment.align_pair(a, b, CONFIG))
    assert table.map_r2_test.isna().all()
    for method in ("procrustes", "cca"):  # the maps have rank 2: k > 2 loses dimensions
        rows = table[(table.method == method) & (table.k == 5)]
        assert (rows.overlap_after <= 2 / 5 + 1e-9).all()


# ---------------------------------------------------------------- bootstrap over samples
def _labelled(seed=0, n=30, d_a=12, d_b=14):
    """Train rows of 3 labels in two 'models' (B = A rotated and embedded), paired by row."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["anger", "gratitude", "neutral"], n)
    x_a = rng.standard_normal((3 * n, d_a))
    x_a[labels == "anger", 0] += 4.0
    x_a[labels == "gratitude", 1] += 4.0
    q = ortho_group.rvs(d_b, random_state=seed)
    x_b = x_a @ (np.eye(d_a, d_b) @ q) + 0.01 * rng.standard_normal((3 * n, d_b))
    return x_a, x_b, labels


def test_replicate_side_recomputes_the_vectors_subspace():
    x_a, _, labels = _labelled()
    side = alignment.replicate_side(x_a, labels, "neutral", ["anger", "gratitude"], k_max=3)
    diffs = vectors.difference_vectors(x_a, labels, "anger", "neutral", np.ones(len(x_a), bool))
    comps, _, _ = vectors.pca_subspace(diffs, 3)
    np.testing.assert_array_equal(side.subspaces["anger"], comps)
    np.testing.assert_array_equal(side.train, x_a[labels == "neutral"])


def test_bootstrap_indices_are_stratified_seeded_and_vary():
    labels = np.repeat(["a", "b", "n"], [5, 7, 9])
    first = alignment.bootstrap_indices(labels, 20, seed=3)
    again = alignment.bootstrap_indices(labels, 20, seed=3)
    other = alignment.bootstrap_indices(labels, 20, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
    for idx in first:
        assert sorted(labels[idx].tolist()) == sorted(labels.tolist())  # same count per label
    assert len({tuple(i) for i in first}) == 20


def test_bootstrap_pair_planted_rotation():
    """A rotation between the models: every replicate recovers overlap ~1 after Procrustes,
    the random baseline stays near k/d, and reruns give identical numbers."""
    x_a, x_b, labels = _labelled()
    config = alignment.AlignmentConfig(methods=("procrustes",), n_random=30, k_max=2)
    rows = pd.DataFrame(alignment.bootstrap_pair(x_a, x_b, labels, "neutral", config, 8))
    assert sorted(rows.replicate.unique()) == list(range(8))
    after = rows[rows.method == "procrustes"]
    assert (after.overlap_after > 0.95).all(), after.overlap_after.min()
    assert (after.overlap_random_mean < 0.4).all()
    again = pd.DataFrame(alignment.bootstrap_pair(x_a, x_b, labels, "neutral", config, 8))
    pd.testing.assert_frame_equal(rows, again)
    # replicates differ from one another (the samples were resampled)
    k1 = rows[(rows.method == "none") & (rows.k == 1) & (rows.condition == "anger")]
    assert k1.overlap_after.nunique() > 1


def test_bootstrap_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^alignment.bootstrap_pairs: 'all' not among"):
        alignment.BootstrapConfig(pairs="all")
    with pytest.raises(ValueError, match=r"^alignment.n_bootstrap: -1 must be >= 0"):
        alignment.BootstrapConfig(n_bootstrap=-1)
