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
    # d_a != d_b: no shared basis, so no method "none"
    assert set(table.method) == {"procrustes", "ridge", "cca"}
    assert (table.measure == alignment.OVERLAP).all()
    assert table.k.max() == CONFIG.k_max
    for method in ("procrustes", "ridge", "cca"):
        rows = table[table.method == method]
        assert (rows.overlap_after > 0.95).all(), rows
        # shuffled pairings: same capacity, no correspondence -> near chance in 20 dims
        assert (rows.overlap_shuffled < 0.5).all()
        assert rows.overlap_shuffled.mean() == pytest.approx((rows.k / D_A).mean(), abs=0.1)
        assert (rows.n_shuffled == CONFIG.n_shuffles).all()
        assert (rows.n_shuffled_ge == 0).all()
        assert (rows.map_r2_test > 0.99).all()
    # no rows of every label on these sides: no permuted-label null
    assert (table.n_permuted == 0).all() and table.overlap_permuted.isna().all()
    # with no preferred axes in the neutral data, PCA coordinates carry no correspondence:
    # "before" is at chance (k/d_a inside the 20-dim image, k/d_b for the random baseline)
    assert table.overlap_before.mean() == pytest.approx(table.overlap_random_mean.mean(), abs=0.1)
    assert (table.overlap_before < 0.6).all()
    np.testing.assert_allclose(table.overlap_random_mean, table.k / D_B, atol=0.02)
    assert (table.n_train_neutral == len(planted[0])).all()


def test_method_none_only_with_a_shared_basis(planted):
    """Equal widths: ``none`` is the identity (the models write one basis); unequal: dropped,
    and fitting it names the widths."""
    x_a, _, t_a, _, sub_a, _ = planted
    rng = np.random.default_rng(3)
    x_b, t_b = x_a + 0.01 * rng.standard_normal(x_a.shape) + 2.0, t_a + 2.0  # an offset
    table = pd.DataFrame(
        alignment.align_pair(_side(x_a, t_a, sub_a), _side(x_b, t_b, sub_a), CONFIG)
    )
    none = table[table.method == "none"]
    assert len(none) == 2 * CONFIG.k_max
    np.testing.assert_allclose(none.overlap_after, 1.0)
    assert (none.n_shuffled == 0).all()  # the identity has no fit to shuffle
    fitted = alignment.fit_map("none", x_a, x_b)
    np.testing.assert_array_equal(fitted.matrix, np.eye(D_A))
    assert alignment.map_r2(fitted, t_a, t_b) > 0.99  # the offset is fit
    with pytest.raises(ValueError, match=r"assumes a shared basis: d_model 20 != 24"):
        alignment.fit_map("none", x_a, planted[1])


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
    for method in ("procrustes", "ridge", "cca"):
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
    with pytest.raises(ValueError, match=r"^alignment.similarity: \['cka'\] not among"):
        alignment.AlignmentConfig(similarity=("cka",))
    with pytest.raises(ValueError, match=r"^alignment.n_label_permutations: -1 must be >= 0"):
        alignment.AlignmentConfig(n_label_permutations=-1)
    with pytest.raises(ValueError, match=r"^alignment.knn_k: 0 must be >= 1"):
        alignment.AlignmentConfig(knn_k=0)
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


def _table(tiny_stores, config, null_ks=None):
    a, ids = alignment.read_model_inputs(
        *tiny_stores["tiny-a"], "neutral", ["mean", "last"], alignment.SITES
    )
    b, _ = alignment.read_model_inputs(
        *tiny_stores["tiny-b"], "neutral", ["mean", "last"], alignment.SITES, sample_order=ids
    )
    return alignment.alignment_table(a, b, config, "toy", null_ks=null_ks)


TABLE_CONFIG = alignment.AlignmentConfig(
    sites=("hook_resid_pre", "hook_resid_post"),
    k_max=3,
    n_random=20,
    n_shuffles=30,
    n_label_permutations=30,
    cca_components=12,
    ridge_alpha=0.01,
    knn_k=5,
)


@pytest.fixture(scope="module")
def toy_table(tiny_stores):
    return _table(tiny_stores, TABLE_CONFIG, null_ks=[1, 3])


def test_table_from_stores(tiny_stores, toy_table):
    table = toy_table
    assert list(table.columns) == list(alignment.COLUMNS)
    assert (table.dataset == "toy").all()
    assert set(table.model_a) == {"tiny-a"} and set(table.model_b) == {"tiny-b"}
    assert set(table.measure) == {"subspace_overlap", "cka_debiased", "mutual_knn"}
    ov = table[table.measure == alignment.OVERLAP]
    assert set(ov.method) == {"procrustes", "ridge", "cca"}  # 12 vs 14 dims: no "none"
    assert set(ov.k) == {1, 2, 3}
    assert (ov.n_train_neutral == 30).all()
    overlaps = ov[["overlap_before", "overlap_after", "overlap_random_mean"]]
    assert ((overlaps >= -1e-9) & (overlaps <= 1 + 1e-9)).all().all()
    # the full grid only for resid_post x mean; matched depths elsewhere
    pairs = ov.groupby(["site", "position"])[["layer_a", "layer_b"]].apply(
        lambda g: set(map(tuple, g.drop_duplicates().values))
    )
    assert pairs["hook_resid_post", "mean"] == {(la, lb) for la in range(3) for lb in range(2)}
    matched_post = alignment.matched_pairs(range(3), range(2), "hook_resid_post", 3, 2)
    assert pairs["hook_resid_post", "last"] == matched_post
    grid = ov[(ov.site == "hook_resid_post") & (ov.position == "mean")]
    np.testing.assert_array_equal(
        grid.matched_depth,
        [p in matched_post for p in zip(grid.layer_a, grid.layer_b, strict=True)],
    )
    rel = ov.drop_duplicates(["site", "layer_a"])
    np.testing.assert_allclose(
        rel.relative_depth_a, (rel.layer_a + (rel.site == "hook_resid_post")) / 3
    )
    # nulls exactly where the statistics test: matched depths, k in null_ks
    tested = ov.matched_depth & ov.k.isin([1, 3])
    assert (ov.n_shuffled[tested] == 30).all() and (ov.n_permuted[tested] == 30).all()
    assert (ov.n_shuffled[~tested] == 0).all() and ov.overlap_permuted[~tested].isna().all()
    # similarity rows: one per measure and matched pair, every test sample
    sim = table[table.measure != alignment.OVERLAP]
    assert sim.matched_depth.all() and (sim.condition == "all").all() and (sim.k == 0).all()
    assert (sim.n_test == 30).all() and (sim.n_shuffled == 30).all()
    assert len(sim) == 2 * len(
        table[table.matched_depth].groupby(["site", "position", "layer_a", "layer_b"])
    )
    # resid_post of tiny-a layer 1 is tiny-b's resid_post layer 0 rotated: the maps find it,
    # above the shuffled pairings. B is ALL of A rotated, so subspaces of random groupings
    # align too: the permuted-label null is high (it asks what is specific to the labels)
    hit = table[(table.site == "hook_resid_post") & (table.layer_a == 1) & (table.layer_b == 0)]
    for method in ("procrustes", "ridge", "cca"):
        rows = hit[(hit.method == method) & (hit.k == 1)]
        assert (rows.map_r2_test > 0.95).all(), rows
        assert (rows.overlap_after > 0.9).all(), rows
        assert (rows.overlap_after > rows.overlap_shuffled + 0.3).all(), rows
        assert (rows.n_shuffled_ge == 0).all(), rows
        assert (rows.overlap_permuted > 0.5).all(), rows
    cka = hit[hit.measure == "cka_debiased"].iloc[0]
    assert cka.similarity > 0.9 and cka.n_shuffled_ge == 0
    # resid_post L is resid_pre L + 1 (same arrays): those pairs give the same rows
    cols = ["measure", "condition", "method", "k", "overlap_after", "n_permuted_ge", "similarity"]
    for position in ("mean", "last"):
        post = table[(table.site == "hook_resid_post") & (table.position == position)]
        pre = table[(table.site == "hook_resid_pre") & (table.position == position)]
        for (la, lb), part in post[post.matched_depth].groupby(["layer_a", "layer_b"]):
            same = pre[(pre.layer_a == la + 1) & (pre.layer_b == lb + 1)]
            if len(same):
                pd.testing.assert_frame_equal(
                    part[cols].reset_index(drop=True), same[cols].reset_index(drop=True)
                )
    assert table.equals(_table(tiny_stores, TABLE_CONFIG, null_ks=[1, 3]))


def test_summaries_are_permutation_rows_the_engine_reads(toy_table):
    from circuitflow import stats

    summaries = alignment.alignment_summaries(toy_table, ks=[1])
    assert set(summaries.design) == {"permutation"}
    assert set(summaries.comparison) == {"vs_shuffled_pairs", "vs_permuted_labels"}
    assert set(summaries.metric) == {"overlap_after", "cka_debiased", "mutual_knn"}
    # the uniform random baseline and overlap_before are never tested; only k in ks
    assert not summaries.setting.str.contains("k=3").any()
    sim = summaries[summaries.metric != "overlap_after"]
    assert set(sim.comparison) == {"vs_shuffled_pairs"}
    rows, skipped = stats.summary_rows(stats.validate_summaries(summaries))
    assert skipped == [] and len(rows) == len(summaries)
    for row, s in zip(rows, summaries.itertuples(), strict=True):
        assert row["p"] == pytest.approx((1 + s.n_reference_ge) / (1 + s.n_reference))
    matched = toy_table[toy_table.matched_depth & (toy_table.k == 1)]
    assert len(summaries[summaries.metric == "overlap_after"]) == 2 * len(matched)


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
    k1 = rows[(rows.method == "procrustes") & (rows.k == 1) & (rows.condition == "anger")]
    assert k1.overlap_before.nunique() > 1
    assert "none" not in set(rows.method)  # 12 vs 14 dims: no shared basis


def test_bootstrap_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^alignment.bootstrap_pairs: 'all' not among"):
        alignment.BootstrapConfig(pairs="all")
    with pytest.raises(ValueError, match=r"^alignment.n_bootstrap: -1 must be >= 0"):
        alignment.BootstrapConfig(n_bootstrap=-1)


# ---------------------------------------------------------------- nulls through the same map
def _labelled_side(x, labels, split, k_max=3, blocks=None):
    """A Side with every label's rows and the vectors phase's subspaces (train split)."""
    train = split == "train"
    x32 = x.astype(np.float32)  # as stored
    x64, neutral = x32.astype(np.float64), labels == "neutral"
    subs = {}
    for c in EMOTIONS:
        diffs = vectors.difference_vectors(x64, labels, c, "neutral", train)
        subs[c] = vectors.pca_subspace(diffs, k_max)[0]
    blocks = np.full(len(x), "") if blocks is None else blocks
    rows = alignment.Labelled(x32, labels, split, blocks, "neutral")
    return alignment.Side(x64[neutral & train], x64[neutral & ~train], subs, rows)


EMOTIONS = ("anger", "gratitude", "apology")


def _design(n_train, n_test):
    labels = np.repeat(["neutral", *EMOTIONS], n_train + n_test)
    split = np.tile(np.r_[["train"] * n_train, ["test"] * n_test], 4)
    return labels, split


def _power_law(rng, n, d):
    """Rows with a power-law variance spectrum (var_i ~ 1/i) and a constant offset."""
    return rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.5 + 3 * rng.standard_normal(d)


def _unrelated(seed, d_a=96, d_b=107, n_train=60, n_test=25):
    """Two independent power-law 'models' (576 vs 640 scaled down by 6), random labels."""
    rng = np.random.default_rng(seed)
    labels, split = _design(n_train, n_test)
    x_a, x_b = _power_law(rng, len(labels), d_a), _power_law(rng, len(labels), d_b)
    return _labelled_side(x_a, labels, split), _labelled_side(x_b, labels, split)


def _shared(seed, d_a=96, d_b=107, n_train=200, n_test=40, s=16):
    """A shared 16-dim latent under a random rotation into each model, plus each model's own
    power-law variance and noise. Each emotion moves the latent along its own 3 dims: a mean
    shift (the three at 120 degrees in one plane, so no common "emotional" axis) and two of
    spread; emotional text also moves each model along 5 private axes of its own."""
    rng = np.random.default_rng(seed)
    labels, split = _design(n_train, n_test)
    emotional = labels != "neutral"
    z = rng.standard_normal((len(labels), s))
    basis = np.linalg.qr(rng.standard_normal((s, s)))[0].T  # orthonormal rows
    for j, c in enumerate(EMOTIONS):
        rows = labels == c
        angle = 2 * np.pi * j / 3
        shift = np.sqrt(10.0) * (np.cos(angle) * basis[0] + np.sin(angle) * basis[1])
        spread = np.sqrt(8.0) * rng.standard_normal((rows.sum(), 2)) @ basis[2 + 2 * j : 4 + 2 * j]
        z[rows] += shift + spread
    sides = []
    for d in (d_a, d_b):
        embed = np.linalg.qr(rng.standard_normal((d, s)))[0].T  # random rotation, [s, d]
        x = _power_law(rng, len(labels), d) + z @ embed
        private = np.linalg.qr(rng.standard_normal((d, 5)))[0].T  # [5, d]
        x[emotional] += np.sqrt(6.0) * rng.standard_normal((emotional.sum(), 5)) @ private
        sides.append(_labelled_side(x + 0.05 * rng.standard_normal(x.shape), labels, split))
    return sides


@pytest.mark.parametrize("n_train", [30, 100, 160])  # batched, LAPACK, Lanczos eigenpairs
def test_permuted_subspaces_are_the_vectors_phase_subspaces(n_train):
    a, _ = _unrelated(0, n_train=n_train)
    rows = a.labelled
    x, labels = rows.train_rows(), rows.labels[rows.train]
    perms = [np.arange(len(x)), np.random.default_rng(1).permutation(len(x))]
    coef = alignment.permuted_subspaces(x, labels, perms, "neutral", EMOTIONS, 5)
    assert coef.shape == (2, 3, 5, len(x))
    for p, perm in enumerate(perms):
        for j, c in enumerate(EMOTIONS):
            diffs = vectors.difference_vectors(x, labels[perm], c, "neutral", np.ones(len(x), bool))
            ref = vectors.pca_subspace(diffs, 5)[0]
            v = coef[p, j] @ x
            np.testing.assert_allclose(v @ v.T, np.eye(5), atol=1e-10)
            for k in (1, 3, 5):
                assert alignment.subspace_overlap(v[:k], ref[:k]) == pytest.approx(1, abs=1e-10)
    # the identity permutation reproduces the stored (vectors-phase) subspace
    v = coef[0, 0, :3] @ x
    assert alignment.subspace_overlap(v, a.subspaces["anger"]) == pytest.approx(1, abs=1e-6)


def test_label_permutations_stay_within_frames():
    blocks = np.array(["", "", "", "f1", "f1", "f2", "f2", ""])
    perms = alignment.label_permutations(blocks, 50, seed=2)
    for perm in perms:
        assert sorted(perm) == list(range(8))
        np.testing.assert_array_equal(blocks[perm], blocks)  # a row keeps its block
    assert len({tuple(p) for p in perms}) > 10
    again = alignment.label_permutations(blocks, 50, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(perms, again, strict=True))


@pytest.mark.parametrize("method", ["procrustes", "ridge", "cca"])
def test_null_draws_equal_the_full_computation(method):
    """A shuffled draw is the overlap of the map refit on that pairing, computed in d_b; a
    label draw with the identity permutation is the observed overlap."""
    a, b = _unrelated(4, d_a=30, d_b=36, n_train=40, n_test=10)
    config = alignment.AlignmentConfig(methods=(method,), k_max=3, r_max=12, cca_components=6)
    n = len(a.train)
    perms = [np.random.default_rng(5).permutation(n), np.arange(n)]
    identity = [np.arange(len(a.labelled.train_rows()))]
    rows = pd.DataFrame(alignment.align_pair(a, b, config, perms=perms, label_perms=identity))
    r = alignment.common_rank(n, 30, 36, 12)
    factor = a.ridge_factor(config.ridge_alpha)
    reductions = (a.reduction(r), b.reduction(r))
    refit = alignment.fit_map(method, a.train, b.train, config, perms[0], reductions, factor)
    for c in EMOTIONS:
        got = rows[rows.condition == c].sort_values("k")
        mapped = refit.apply(a.subspaces[c][:3])
        full = alignment.overlap_sweep(mapped, b.subspaces[c][:3])
        after = got.overlap_after.to_numpy()
        # mean of {refit on perms[0], refit on the identity pairing = the observed map}
        np.testing.assert_allclose(got.overlap_shuffled, (full + after) / 2, atol=1e-9)
        np.testing.assert_allclose(got.overlap_permuted, after, atol=1e-6)
        assert (got.n_permuted_ge == 1).all()  # the identity draw ties the observed value


def test_similarity_measures():
    rng = np.random.default_rng(6)
    n = 60
    x = rng.standard_normal((n, 12)) * np.arange(1, 13) ** -0.5
    q = np.linalg.qr(rng.standard_normal((20, 20)))[0][:12]  # [12, 20] orthonormal rows
    y = 3.0 * x @ q + 7.0  # rotated, scaled, shifted
    assert alignment.cka_debiased(x, y) == pytest.approx(1.0)
    assert alignment.mutual_knn(x, y, 5) == pytest.approx(1.0)
    # debiased CKA is the unbiased HSIC estimator (Song et al. 2012) normalised
    z = rng.standard_normal((n, 15))

    def hsic(gk, gl):
        gk, gl = gk.copy(), gl.copy()
        np.fill_diagonal(gk, 0)
        np.fill_diagonal(gl, 0)
        one = np.ones(n)
        return (
            np.trace(gk @ gl)
            + (one @ gk @ one) * (one @ gl @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ gk @ gl @ one
        ) / (n * (n - 3))

    xc, zc = x - x.mean(0), z - z.mean(0)
    gk, gl = xc @ xc.T, (zc + x[:, :1]) @ (zc + x[:, :1]).T
    expected = hsic(gk, gl) / np.sqrt(hsic(gk, gk) * hsic(gl, gl))
    assert alignment.cka_debiased(x, zc + x[:, :1]) == pytest.approx(expected, rel=1e-10)
    # a draw of the null is the measure on re-paired rows
    perms = alignment.pairing_permutations(n, 3, seed=0)
    for measure, fn in (
        ("cka_debiased", alignment.cka_debiased),
        ("mutual_knn", alignment.mutual_knn),
    ):
        kw = {"k": 5} if measure == "mutual_knn" else {}
        value, draws = alignment.similarity_null(measure, x, z, perms, 5)
        assert value == pytest.approx(fn(x, z, **kw))
        for p, draw in zip(perms, draws, strict=True):
            assert draw == pytest.approx(fn(x, z[p], **kw))
    with pytest.raises(ValueError, match="unknown similarity measure 'rsa'"):
        alignment.similarity_null("rsa", x, z, perms)


def _p(rows, null):
    return (1 + rows[f"n_{null}_ge"]) / (1 + rows[f"n_{null}"])


def test_unrelated_models_give_uniform_p_values():
    """Two unrelated models (power-law spectra, random labels): the learned maps put every
    subspace in B's high-variance axes, so the uniform random baseline is beaten by far, but
    both nulls that go through the same map give uniform p-values. One row per replicate (its
    method, k and emotion in turn; data and draws seeded by the replicate), so the rows are
    independent and the KS test is exact."""
    from scipy.stats import kstest

    p, z = _unrelated_p_values(range(240))
    # the seed's baseline: "significant" although nothing is shared
    assert np.mean(np.array(z) > 3) > 0.75
    assert [len(v) for v in p.values()] == [240, 240, 120, 120]
    for name, values in p.items():
        # mutual k-NN counts shared neighbours: ties with the null make its p conservative,
        # so only the anti-conservative side is tested
        side = "greater" if name == "mutual_knn" else "two-sided"
        assert kstest(values, "uniform", alternative=side).pvalue > 0.01, name
        assert np.mean(np.array(values) < 0.05) <= 0.08, name


def _unrelated_p_values(reps):
    p = {"shuffled": [], "permuted": [], "cka_debiased": [], "mutual_knn": []}
    z = []
    for rep in reps:
        method, k = alignment.METHODS[rep % 3], (1, 3)[rep // 3 % 2]
        condition, measure = EMOTIONS[rep // 6 % 3], alignment.SIMILARITY_MEASURES[rep % 2]
        config = alignment.AlignmentConfig(
            methods=(method,), k_max=3, r_max=24, n_shuffles=100, n_label_permutations=100,
            similarity=(measure,), knn_k=5, seed=rep,
        )  # fmt: skip
        a, b = _unrelated(rep, n_train=40, n_test=25)
        one = [alignment.Side(s.train, s.test, {condition: s.subspaces[condition]}, s.labelled)
               for s in (a, b)]  # fmt: skip
        rows = pd.DataFrame(alignment.align_pair(*one, config, null_ks=[k]))
        row = rows[rows.k == k].iloc[0]
        z.append((row.overlap_after - row.overlap_random_mean) / row.overlap_random_sd)
        for null in ("shuffled", "permuted"):
            p[null].append(_p(row, null))
        p[measure].append(_p(alignment.similarity_pair(*one, config)[0], "shuffled"))
    return p, z


def test_a_planted_shared_subspace_is_detected():
    """A shared latent under a random rotation plus noise: at the planted dimension (k = 3)
    every map beats both nulls, and CKA and mutual k-NN beat their shuffled pairings."""
    config = alignment.AlignmentConfig(k_max=3, r_max=24, n_label_permutations=200)
    a, b = _shared(0)
    rows = pd.DataFrame(alignment.align_pair(a, b, config, null_ks=[3]))
    rows = rows[rows.k == 3]
    assert set(rows.method) == {"procrustes", "ridge", "cca"} and len(rows) == 9
    assert (rows.overlap_after > 0.5).all()
    for null in ("shuffled", "permuted"):
        assert (_p(rows, null) < 0.01).all(), rows[_p(rows, null) >= 0.01]
    sim = pd.DataFrame(alignment.similarity_pair(a, b, config)).set_index("measure")
    assert (_p(sim, "shuffled") < 0.01).all()
    assert sim.similarity["cka_debiased"] > 0.2


def test_shared_basis_none_has_the_permuted_label_null_only():
    """Equal widths: ``none`` (the identity) is tested against permuted labels only; with the
    identity permutation its draw is its observed overlap, and summaries say it assumes a
    shared basis."""
    a, b = _unrelated(7, d_a=30, d_b=30, n_train=40, n_test=10)
    config = alignment.AlignmentConfig(methods=("ridge",), k_max=3, r_max=12)
    identity = [np.arange(len(a.labelled.train_rows()))]
    rows = pd.DataFrame(alignment.align_pair(a, b, config, null_ks=[1], label_perms=identity))
    none = rows[(rows.method == "none") & (rows.k == 1)]
    assert len(none) == 3 and (none.n_shuffled == 0).all() and (none.n_permuted == 1).all()
    np.testing.assert_allclose(none.overlap_permuted, none.overlap_after, atol=1e-6)
    for c in EMOTIONS:
        direct = alignment.subspace_overlap(a.subspaces[c][:1], b.subspaces[c][:1])
        assert none[none.condition == c].overlap_after.iloc[0] == pytest.approx(direct)
    common = {"dataset": "d", "model_a": "a", "model_b": "b", "layer_a": 0, "layer_b": 0,
              "site": "hook_resid_post", "position": "mean", "matched_depth": True}  # fmt: skip
    summaries = alignment.alignment_summaries(rows.assign(**common), ks=[1])
    none_rows = summaries[summaries.setting.str.startswith("method=none")]
    assert set(none_rows.comparison) == {"vs_permuted_labels"}
    assert none_rows.setting.str.contains("basis=shared(assumed)", regex=False).all()
