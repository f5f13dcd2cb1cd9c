"""The Snakemake workflow end to end on tiny random models (tests/data prompts)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TESTS

from circuitflow import stats, store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"


def _config(models: dict, **extra) -> dict:
    return {
        "seed": 0,
        "datasets": {
            "tiny": {
                "prompts": str(TESTS / "data" / "prompts.jsonl"),
                "frames": str(TESTS / "data" / "frames.jsonl"),
                "labels": ["gratitude", "anger", "apology", "neutral"],
                "baseline": "neutral",
                "test_fraction": 0.5,
            }
        },
        "models": models,
        "stats": {"bootstrap_resamples": 200},
        **extra,
    }


def snakemake(workdir, config: dict, *args, cache=None, check=True):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
    ]
    if cache is not None:
        env["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
        cmd.append("--cache")
        cmd += ["--cores", "2"]  # ends --cache's rule list
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def models(tiny_model_dirs):
    return {
        "tiny-llama": {"source": str(tiny_model_dirs["llama"]), "per_token_layers": [1]},
        "tiny-gemma3": {"source": str(tiny_model_dirs["gemma3"])},
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("wf")
    cache = root / "cache"
    cache.mkdir()
    work = root / "copy1"
    snakemake(work, _config(models), TARGET, cache=cache)
    return root, cache, work


def test_effect_sizes_table(first_run):
    _, _, work = first_run
    every_phase = pd.read_csv(work / TARGET)
    assert list(every_phase.columns) == stats.EFFECT_COLUMNS
    assert {"vectors", "patching", "steering", "alignment", "sae"} <= set(every_phase.phase)
    vectors = every_phase[every_phase.phase == "vectors"]
    assert {"specificity_projection", "specificity_projection_selected"} <= set(vectors.metric)
    table = vectors[vectors.metric == "projection_on_mean_diff"]
    assert set(table.model) == {"tiny-llama", "tiny-gemma3"}
    assert set(table.condition) == {"gratitude", "anger", "apology"}
    assert set(table.site) == {"hook_resid_pre", "hook_resid_post"}
    assert set(table.position) == set(store.POSITIONS)
    # 2 models x 3 layers x 2 sites x 3 positions x 3 conditions, minus constant comparisons
    assert 0.8 * 108 <= len(table) <= 108
    assert ((table.p_fdr_bh >= table.p) & (table.p_fdr_bh <= 1)).all()
    assert (table.n_treatment == 8).all() and (table.n_baseline == 8).all()


def test_every_artifact_has_an_intact_manifest(first_run):
    _, _, work = first_run
    artifacts = [
        work / "resources/models/tiny-llama",
        work / "results/datasets/tiny",
        work / "results/activations/tiny/tiny-gemma3.zarr",
        work / "results/vectors/tiny/tiny-llama.zarr",
        work / TARGET,
    ]
    for path in artifacts:
        assert store.verify(path) == [], path
        assert len(store.read_manifest(path)["key"]) == 64


def test_rerun_is_a_noop_and_downstream_params_do_not_rerun_extraction(first_run, models):
    _, _, work = first_run
    dry = snakemake(work, _config(models), "-n", TARGET)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    changed = _config(models)
    changed["stats"]["bootstrap_resamples"] = 300
    dry = snakemake(work, changed, "-n", TARGET)
    out = dry.stdout + dry.stderr
    assert "effect_sizes" in out
    for rule in ("extract_activations", "prepare_model", "build_prompts", "directions"):
        assert f"rule {rule}:" not in out, out


def test_second_copy_reuses_the_cache(first_run, models):
    root, cache, work = first_run
    copy2 = root / "copy2"
    proc = snakemake(copy2, _config(models), TARGET, cache=cache)
    out = proc.stdout + proc.stderr
    for rel in (
        "results/activations/tiny/tiny-llama.zarr/zarr.json",
        "resources/models/tiny-gemma3/manifest.json",
    ):
        assert f"Symlinking output file {rel} from cache" in out, out[-3000:]
    # cached jobs never ran their scripts: Snakemake touches their logs, nothing writes to them
    logs = [
        *(copy2 / "logs").glob("extract_activations/*/*.log"),
        *(copy2 / "logs").glob("prepare_model/*.log"),
    ]
    assert len(logs) == 4 and all(log.stat().st_size == 0 for log in logs)
    assert (work / "logs/extract_activations/tiny/tiny-llama.log").stat().st_size > 0
    for rel in (
        "results/activations/tiny/tiny-llama.zarr",
        "results/vectors/tiny/tiny-gemma3.zarr",
    ):
        assert store.read_manifest(copy2 / rel) == store.read_manifest(work / rel)
    assert (copy2 / TARGET).read_bytes() == (work / TARGET).read_bytes()


def _fingerprint(work: Path) -> dict[str, str]:
    """Every artifact's key and file hashes, and the bytes of every CSV, by relative path."""
    found = []
    for top in ("results", "resources/models"):
        artifacts, unclaimed = store.artifacts_under(work / top)
        assert unclaimed == [], unclaimed
        found += artifacts
    prints = {}
    for artifact in found:
        manifest = store.read_manifest(artifact)
        rel = artifact.relative_to(work).as_posix()
        prints[f"{rel} (key)"] = manifest["key"]
        for name, digest in manifest["files"].items():
            prints[f"{rel}: {name}"] = digest
    for path in (work / "results").rglob("*.csv"):
        prints[path.relative_to(work).as_posix()] = store.sha256_file(path)
    return prints


def test_two_clean_runs_give_identical_bytes(first_run, models, tmp_path):
    """A second run from scratch into its own cache: every CSV byte-identical, every manifest
    with the same key and file hashes (timings in manifests may differ)."""
    _, _, work = first_run
    cache = tmp_path / "cache"
    cache.mkdir()
    again = tmp_path / "again"
    snakemake(again, _config(models), TARGET, cache=cache)
    first, second = _fingerprint(work), _fingerprint(again)
    assert len(first) > 100
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert differ == [], f"{len(differ)} files differ between two clean runs: {differ[:20]}"


def test_unknown_config_key_is_named(tmp_path, models):
    config = _config({"tiny-llama": {**models["tiny-llama"], "colour": "red"}})
    proc = snakemake(tmp_path / "w", config, "-n", TARGET, check=False)
    assert proc.returncode != 0
    assert (
        "config key models.tiny-llama.colour: unknown key; allowed here:"
        in proc.stdout + proc.stderr
    )


def test_unreachable_hub_model_fails_in_one_line_without_partial_output(tmp_path):
    work = tmp_path / "w"
    proc = snakemake(
        work,
        _config({"ghost": {"source": "nobody-here/no-such-model"}}),
        "resources/models/ghost",
        check=False,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("circuitflow [")]
    assert len(set(lines)) == 1  # the job's line, repeated as the last line printed
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    assert lines[0].startswith(
        "circuitflow [prepare_model]: model 'ghost': cannot load 'nobody-here/no-such-model'"
    )
    assert "set models.ghost.source: DIR" in lines[0]
    assert not (work / "resources/models/ghost").exists()


def test_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_config_dry_run_lists_the_jobs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", TARGET, "--quiet", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_extra_config_validates_and_dry_runs(tmp_path, path):
    """Each config under configs/ plans the main target. A local photo folder it names that
    this machine lacks (e.g. a Debian wallpaper package) is replaced by a folder of three
    photos written here, so the plan is checked everywhere."""
    import numpy as np
    from PIL import Image

    config = yaml.safe_load(path.read_text())
    stand_in = tmp_path / "photos"
    for entry in config["datasets"].values():
        sources = entry.get("images", {}).get("sources", [])
        for i, source in enumerate(sources):
            if not source.startswith("builtin:") and not Path(source).exists():
                stand_in.mkdir(exist_ok=True)
                for k in range(3):
                    pixels = np.random.default_rng(k).integers(0, 255, (64, 96, 3), np.uint8)
                    Image.fromarray(pixels).save(stand_in / f"photo_{k}.png")
                sources[i] = str(stand_in)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", TARGET, "--quiet", "rules",
         "--configfile", str(tmp_path / "config.yaml")],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "effect_sizes" in proc.stdout
