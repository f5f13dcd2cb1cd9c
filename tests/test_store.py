"""circuitflow.store: manifests, keys, verify, hook names, samples and the vectors store."""

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from circuitflow import cli, store

REPO = Path(__file__).resolve().parent.parent
MANIFEST_SCHEMA = yaml.safe_load((REPO / "schemas" / "manifest.schema.yaml").read_text())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def artifact_dir(tmp_path) -> Path:
    """A directory artifact with a nested file and a Snakemake timestamp (not content)."""
    art = tmp_path / "art"
    (art / "sub").mkdir(parents=True)
    (art / "a.txt").write_bytes(b"alpha\n")
    (art / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")
    (art / ".snakemake_timestamp").write_bytes(b"")
    return art


@pytest.fixture
def input_file(tmp_path) -> Path:
    path = tmp_path / "input.jsonl"
    path.write_text('{"x": 1}\n')
    return path


# ---------------------------------------------------------------- write_manifest
def test_write_manifest_directory(artifact_dir, input_file):
    manifest = store.write_manifest(
        artifact_dir,
        "dataset",
        inputs={"src": input_file},
        params={"b": 2, "a": (1, 2)},
        seeds={"split": 7},
    )
    on_disk = json.loads((artifact_dir / "manifest.json").read_text())
    assert on_disk == manifest
    jsonschema.validate(on_disk, MANIFEST_SCHEMA)
    assert manifest["kind"] == "dataset"
    assert manifest["files"] == {"a.txt": _sha(b"alpha\n"), "sub/b.bin": _sha(b"\x00\x01\x02")}
    assert manifest["inputs"] == {"src": "sha256:" + _sha(input_file.read_bytes())}
    assert manifest["params"] == {"a": [1, 2], "b": 2}  # tuples become JSON lists
    assert manifest["seeds"] == {"split": 7}
    assert manifest["code_version"] == store.code_version()
    assert manifest["code_version"].startswith("0.1.0+")
    expected_key = store.artifact_key(
        "dataset", manifest["inputs"], {"a": [1, 2], "b": 2}, {"split": 7}
    )
    assert manifest["key"] == expected_key


def test_write_manifest_single_file_sidecar(tmp_path, input_file):
    table = tmp_path / "stats" / "effect_sizes.csv"
    table.parent.mkdir()
    table.write_text("a,b\n1,2\n")
    manifest = store.write_manifest(table, "effect_sizes", inputs={"rows": [input_file]})
    sidecar = tmp_path / "stats" / "effect_sizes.csv.manifest.json"
    assert store.manifest_path(table) == sidecar
    assert json.loads(sidecar.read_text()) == manifest
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    assert manifest["files"] == {"effect_sizes.csv": _sha(b"a,b\n1,2\n")}
    # a list of inputs is keyed name[i]
    assert manifest["inputs"] == {"rows[0]": "sha256:" + _sha(input_file.read_bytes())}
    assert store.verify(table) == []


def test_manifest_path_conventions(tmp_path):
    assert store.manifest_path(tmp_path / "x.zarr") == tmp_path / "x.zarr" / "zarr.json"
    assert store.manifest_path(tmp_path / "models" / "m") == tmp_path / "models/m/manifest.json"
    assert store.manifest_path(tmp_path / "t.csv") == tmp_path / "t.csv.manifest.json"


def test_schema_rejects_a_manifest_without_key(artifact_dir):
    manifest = store.write_manifest(artifact_dir, "dataset")
    del manifest["key"]
    with pytest.raises(jsonschema.ValidationError, match="'key' is a required property"):
        jsonschema.validate(manifest, MANIFEST_SCHEMA)


# ---------------------------------------------------------------- keys
def _key(art, inputs, params, seeds):
    return store.write_manifest(art, "vectors", inputs=inputs, params=params, seeds=seeds)["key"]


def test_key_is_stable_and_sensitive(artifact_dir, input_file):
    inputs = {"src": input_file}
    base = _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.5}, {"seed": 0})
    # identical work -> identical key, whatever the dict order
    assert _key(artifact_dir, inputs, {"alpha": 0.5, "layers": [1, 2]}, {"seed": 0}) == base
    # the artifact's own content is not part of its identity
    (artifact_dir / "a.txt").write_text("rewritten")
    assert _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.5}, {"seed": 0}) == base

    assert _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.6}, {"seed": 0}) != base
    assert _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.5}, {"seed": 1}) != base
    input_file.write_text('{"x": 2}\n')
    changed_input = _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.5}, {"seed": 0})
    assert changed_input != base
    input_file.write_text('{"x": 1}\n')
    assert _key(artifact_dir, inputs, {"layers": [1, 2], "alpha": 0.5}, {"seed": 0}) == base


def test_key_depends_on_kind():
    assert store.artifact_key("dataset", {}, {}, {}) != store.artifact_key("vectors", {}, {}, {})


def test_input_key_plain_file_and_artifact(tmp_path, artifact_dir, input_file):
    assert store.input_key(input_file) == "sha256:" + _sha(b'{"x": 1}\n')
    manifest = store.write_manifest(artifact_dir, "dataset", inputs={"src": input_file})
    assert store.input_key(artifact_dir) == manifest["key"]
    # a file with a sidecar manifest is keyed by the manifest, not by its bytes
    table = tmp_path / "t.csv"
    table.write_text("x\n")
    sidecar = store.write_manifest(table, "effect_sizes", params={"p": 1})
    assert store.input_key(table) == sidecar["key"]
    # and downstream inputs carry the upstream key
    down = tmp_path / "down"
    down.mkdir()
    assert store.write_manifest(down, "vectors", inputs={"ds": artifact_dir})["inputs"] == {
        "ds": manifest["key"]
    }


def test_input_key_of_a_plain_folder_follows_its_files(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"a")
    (photos / "sub" / "b.jpg").write_bytes(b"b")
    key = store.input_key(photos)
    assert key.startswith("sha256:") and store.keyable_inputs([photos])["inputs"] == [photos]
    (photos / "sub" / "b.jpg").write_bytes(b"B")
    changed = store.input_key(photos)
    (photos / "sub" / "b.jpg").rename(photos / "b.jpg")
    assert len({key, changed, store.input_key(photos)}) == 3  # contents and names both count
    (photos / "b.jpg").write_bytes(b"b")
    (photos / "sub" / "b.jpg").write_bytes(b"b")
    (photos / "b.jpg").unlink()
    assert store.input_key(photos) == key


def test_input_key_of_nothing_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="input has neither a manifest nor file content"):
        store.input_key(tmp_path / "empty")


# ---------------------------------------------------------------- verify
def test_verify_intact(artifact_dir):
    store.write_manifest(artifact_dir, "dataset")
    assert store.verify(artifact_dir) == []
    # Snakemake touching its timestamp file is not a content change
    (artifact_dir / ".snakemake_timestamp").write_text("touched")
    assert store.verify(artifact_dir) == []


def test_verify_names_changed_missing_unexpected(artifact_dir):
    store.write_manifest(artifact_dir, "dataset")
    (artifact_dir / "a.txt").write_bytes(b"alpha!\n")
    (artifact_dir / "sub" / "b.bin").unlink()
    (artifact_dir / "sub" / "c.txt").write_text("new")
    assert store.verify(artifact_dir) == [
        f"changed: {artifact_dir / 'a.txt'}",
        f"missing: {artifact_dir / 'sub' / 'b.bin'}",
        f"unexpected: {artifact_dir / 'sub' / 'c.txt'}",
    ]


def test_verify_single_file(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("x\n1\n")
    store.write_manifest(table, "effect_sizes")
    table.write_text("x\n2\n")
    assert store.verify(table) == [f"changed: {table}"]
    table.unlink()
    assert store.verify(table) == [f"missing: {table}"]


def test_verify_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest; rebuild"):
        store.verify(tmp_path)


def test_cli_verify(artifact_dir, capsys):
    store.write_manifest(artifact_dir, "dataset")
    assert cli.main(["verify", str(artifact_dir)]) == 0
    assert capsys.readouterr().out == f"{artifact_dir}: ok (2 files)\n"

    (artifact_dir / "a.txt").write_text("tampered")
    assert cli.main(["verify", str(artifact_dir)]) == 1
    assert capsys.readouterr().out == f"{artifact_dir}: changed: {artifact_dir / 'a.txt'}\n"


def test_cli_verify_without_manifest(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("x\n")
    assert cli.main(["verify", str(table)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{table}: {table}.manifest.json: no manifest; rebuild {table} with snakemake\n"
    )


# ---------------------------------------------------------------- hook names
@pytest.mark.parametrize(
    "layer, site", [(0, "hook_resid_pre"), (8, "hook_resid_post"), (12, "attn.hook_result")]
)
def test_hook_name_round_trip(layer, site):
    name = store.hook_name(layer, site)
    assert name == f"blocks.{layer}.{site}"
    assert store.parse_hook_name(name) == (layer, site)


@pytest.mark.parametrize(
    "bad", ["hook_embed", "blocks.x.hook_resid_pre", "layers.1.hook", "blocks.3"]
)
def test_parse_hook_name_error(bad):
    with pytest.raises(ValueError) as err:
        store.parse_hook_name(bad)
    assert str(err.value) == f"not a block hook name: {bad!r} (expected blocks.<layer>.<site>)"


def test_safe_name():
    assert store.safe_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB_SmolLM2-135M"


# ---------------------------------------------------------------- samples
def test_samples_round_trip(tmp_path):
    rows = [
        {
            "sample_id": "p00001",
            "text": "Thanks — “really”",
            "label": "gratitude",
            "split": "train",
            "frame_id": "",
            "span": [0, 6],
        },
        {
            "sample_id": "f001.anger",
            "text": "I am angry.\nReally.",
            "label": "anger",
            "split": "test",
            "frame_id": "f001",
            "span": [5, 10],
        },
    ]
    path = store.write_samples(tmp_path / "ds", rows)
    assert path == tmp_path / "ds" / "samples.jsonl"
    assert len(path.read_text().splitlines()) == 2  # one row per line, newlines escaped
    assert path.read_text().isascii()
    assert store.read_samples(tmp_path / "ds") == rows


# ---------------------------------------------------------------- vectors store
def test_vectors_store_round_trip(tmp_path):
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.2.hook_resid_pre"]
    positions = list(store.POSITIONS)
    conditions = ["anger", "gratitude"]
    H, P, C, S, D = 3, len(positions), 2, 5, 8
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(H, P, C, D))
    norm = rng.random((H, P, C))
    projection = rng.normal(size=(H, P, C, S))
    cosines = rng.normal(size=(H, P, C, C))
    coords = {
        "sample": np.array(["p1", "p2", "p3", "f1.anger", "f1.neutral"]),
        "label": np.array(["anger", "neutral", "gratitude", "anger", "neutral"]),
        "split": np.array(["train", "test", "train", "test", "test"]),
        "frame_id": np.array(["", "", "", "f1", "f1"]),
    }
    dims = ["hook", "position", "condition"]
    ds = store.vectors_dataset(
        hooks,
        conditions,
        coords,
        {
            "direction": ([*dims, "d_model"], unit),
            "norm": (dims, norm),
            "projection": ([*dims, "sample"], projection),
            "cosine_conditions": ([*dims, "condition_b"], cosines),
        },
        attrs={"model": "tiny", "baseline": "neutral"},
    )
    path = tmp_path / "v.zarr"
    store.write_dataset(path, ds)
    ds = store.open_dataset(path)
    assert dict(ds.sizes) == {
        "hook": H,
        "position": P,
        "condition": C,
        "sample": S,
        "d_model": D,
        "condition_b": C,
    }
    assert ds["direction"].dims == ("hook", "position", "condition", "d_model")
    assert ds["norm"].dims == ("hook", "position", "condition")
    assert ds["projection"].dims == ("hook", "position", "condition", "sample")
    assert list(ds["hook"].values) == hooks
    assert list(ds["layer"].values) == [0, 0, 2]
    assert list(ds["site"].values) == ["hook_resid_pre", "hook_resid_post", "hook_resid_pre"]
    assert list(ds["position"].values) == ["last", "trigger_mean", "mean"]
    assert list(ds["condition"].values) == conditions
    assert list(ds["condition_b"].values) == conditions
    for key, values in coords.items():
        assert key in ds.coords
        assert ds[key].dims == ("sample",)
        assert list(ds[key].values) == list(values)
    for name in ("layer", "site"):
        assert name in ds.coords and ds[name].dims == ("hook",)
    assert ds["direction"].dtype == np.float32
    np.testing.assert_allclose(ds["direction"].values, unit.astype(np.float32))
    np.testing.assert_allclose(ds["norm"].values, norm.astype(np.float32))
    np.testing.assert_allclose(
        ds["projection"]
        .sel(hook="blocks.2.hook_resid_pre", position="mean", condition="anger")
        .values,
        projection[2, 2, 0].astype(np.float32),
    )
    np.testing.assert_allclose(
        ds["cosine_conditions"].sel(condition="anger", condition_b="gratitude").values,
        cosines[:, :, 0, 1].astype(np.float32),
    )
    assert ds.attrs == {"model": "tiny", "baseline": "neutral"}
    # label-based selection works through the sample coordinates
    test_anger = ds["projection"].where(
        (ds["split"] == "test") & (ds["label"] == "anger"), drop=True
    )
    assert list(test_anger["sample"].values) == ["f1.anger"]
    # the store with a manifest beside it still verifies and opens
    store.write_manifest(path, "vectors")
    assert store.verify(path) == []
    assert store.open_dataset(path).sizes["sample"] == S


def test_write_manifest_single_file_without_suffix(tmp_path):
    readme = tmp_path / "README"
    readme.write_text("hi\n")
    store.write_manifest(readme, "dataset")
    assert (tmp_path / "README.manifest.json").exists()


# ---------------------------------------------------------------- Zarr stores: manifest in attrs
@pytest.fixture
def zarr_store(tmp_path) -> Path:
    """A two-array Zarr v3 store (4 sample chunks of one array) with its manifest."""
    import zarr

    path = tmp_path / "acts.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs["model"] = "tiny"
    root.create_array("sample", data=np.array(["s0", "s1", "s2", "s3"]), dimension_names=["sample"])
    root.create_array(
        "blocks.0.hook_resid_post",
        data=np.arange(24, dtype=np.float32).reshape(4, 6),
        chunks=(1, 6),
        dimension_names=["sample", "d_model"],
    )
    store.write_manifest(path, "activations", params={"batch": 2})
    return path


def _chunks(path: Path) -> list[Path]:
    folder = path / "blocks.0.hook_resid_post"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def test_zarr_manifest_lives_in_root_attributes(zarr_store):
    import warnings

    import xarray as xr

    assert not (zarr_store / "manifest.json").exists()
    meta = json.loads((zarr_store / "zarr.json").read_text())
    manifest = meta["attributes"]["circuitflow_manifest"]
    assert manifest == store.read_manifest(zarr_store)
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    assert manifest["params"] == {"batch": 2}
    # 1 root + 2 array metadata + 1 sample chunk + 4 data chunks
    assert len(manifest["files"]) == 8 and "zarr.json" in manifest["files"]
    assert store.verify(zarr_store) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ZarrUserWarning about stray files
        ds = xr.open_zarr(zarr_store, consolidated=False)
    assert ds["blocks.0.hook_resid_post"].shape == (4, 6)
    assert store.open_dataset(zarr_store).attrs == {"model": "tiny"}


def test_zarr_manifest_survives_update_and_remove(zarr_store):
    before = store.read_manifest(zarr_store)
    after = store.update_manifest(zarr_store, device={"used": "cpu"})
    assert after == {**before, "device": {"used": "cpu"}}
    assert store.read_manifest(zarr_store)["device"] == {"used": "cpu"}
    assert store.verify(zarr_store) == []  # the manifest attribute is not content
    store.remove_manifest(zarr_store)
    assert not store.has_manifest(zarr_store)
    with pytest.raises(FileNotFoundError, match="attribute circuitflow_manifest\\): no manifest"):
        store.read_manifest(zarr_store)


def test_zarr_verify_names_deleted_corrupted_and_edited(zarr_store):
    import zarr

    chunks = _chunks(zarr_store)
    chunks[1].unlink()
    chunks[2].write_bytes(b"\x00" + chunks[2].read_bytes()[1:])
    zarr.open_group(zarr_store, mode="r+").attrs["model"] = "other"
    assert store.verify(zarr_store) == [
        f"missing: {chunks[1]}",
        f"changed: {chunks[2]}",
        f"changed: {zarr_store / 'zarr.json'}",
    ]


def test_verify_inputs_refuses_a_deleted_chunk_with_one_line(zarr_store, input_file):
    store.verify_inputs([zarr_store, input_file])  # intact store, plain file: accepted
    chunk = _chunks(zarr_store)[0]
    chunk.unlink()
    with pytest.raises(store.ArtifactError) as err:
        store.verify_inputs([input_file, zarr_store])
    assert str(err.value) == (
        f"input {zarr_store} does not match its manifest: missing: {chunk}; "
        f"delete {zarr_store} and rerun snakemake to rebuild it"
    )


def test_verify_inputs_names_the_cache_entry_behind_a_link(zarr_store, tmp_path):
    link = tmp_path / "results" / "acts.zarr"
    link.parent.mkdir()
    link.symlink_to(zarr_store)
    chunks = _chunks(zarr_store)
    for chunk in chunks[:2]:
        chunk.write_bytes(b"garbage")
    with pytest.raises(store.ArtifactError) as err:
        store.verify_inputs([link])
    assert str(err.value) == (
        f"input {link} does not match its manifest: changed: {link / chunks[0].relative_to(zarr_store)}"
        f" (+1 more); delete {link} and the cache entry it links to ({zarr_store}) and rerun "
        "snakemake to rebuild it"
    )


def test_verify_inputs_refuses_a_store_of_the_wrong_shape(zarr_store):
    import zarr

    root = zarr.open_group(zarr_store, mode="r+")
    root.create_array("blocks.0.hook_resid_post", shape=(4, 5), dtype="float32", overwrite=True)
    with pytest.raises(
        store.ArtifactError, match=r"does not match its manifest: (changed|missing)"
    ):
        store.verify_inputs([zarr_store])


def test_verify_tree_walks_results(tmp_path, zarr_store, artifact_dir, capsys):
    results = tmp_path / "results"
    (results / "activations").mkdir(parents=True)
    zarr_store.rename(results / "activations" / "m.zarr")
    artifact_dir.rename(results / "art")
    store.write_manifest(results / "art", "dataset")
    table = results / "stats" / "t.csv"
    table.parent.mkdir()
    table.write_text("x\n1\n")
    store.write_manifest(table, "effect_sizes")
    assert store.verify_tree(results) == (3, [])
    assert cli.main(["verify", str(results)]) == 0
    assert capsys.readouterr().out == f"{results}: ok (3 artifacts)\n"

    (results / "stats" / "stray.png").write_bytes(b"png")
    (results / "art" / "a.txt").write_text("tampered")
    table.unlink()
    n, problems = store.verify_tree(results)
    assert n == 2
    assert problems == [
        f"changed: {results / 'art' / 'a.txt'}",
        f"unexpected: {results / 'stats' / 'stray.png'} (no artifact's manifest lists it)",
        f"missing: {table}",
    ]
    assert cli.main(["verify", str(results)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{results}: {line}" for line in problems]


def test_cli_verify_empty_tree(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert cli.main(["verify", str(tmp_path / "results")]) == 2
    assert capsys.readouterr().err == (
        f"{tmp_path / 'results'}: no artifacts under {tmp_path / 'results'}; run snakemake first\n"
    )


def test_work_dir_is_keyed_and_drops_stale_work(tmp_path, monkeypatch, input_file):
    monkeypatch.chdir(tmp_path)
    out = "results/activations/d/m.zarr"
    first = store.work_dir(out, "activations", {"src": input_file}, {"batch": 2})
    assert first == store.work_dir(out, "activations", {"src": input_file}, {"batch": 2})
    assert first.parent == Path(".snakemake/circuitflow/work") / out
    first.mkdir(parents=True)
    (first / "progress.json").write_text("{}")
    other = store.work_dir("results/activations/d/n.zarr", "activations", {"src": input_file})
    other.mkdir(parents=True)
    changed = store.work_dir(out, "activations", {"src": input_file}, {"batch": 4})
    assert changed != first and changed.parent == first.parent
    assert not first.exists()  # stale work of the same artifact is gone
    assert other.exists()  # another artifact's work is kept
