"""circuitflow.tracking: finished jobs as MLflow runs in a sqlite store, read back with
MLflow's own client; a broken tracking URI only warns."""

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from conftest import REPO
from snakemake.iocontainers import Namedlist

from circuitflow import store, tracking

pytest.importorskip("mlflow", reason="pip install -r requirements.txt (mlflow-skinny)")
from mlflow.tracking import MlflowClient  # noqa: E402

SAE_OUT = "results/sae/emotion/tiny-lm/blocks.1.hook_resid_post/topk"
STORE_OUT = "results/activations/emotion/tiny-lm.zarr"


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"  # four slashes: absolute


def _sae_artifact() -> dict:
    """An SAE-like directory artifact: small JSON / CSV files, one CSV over the 1 MB cap,
    weights that are not logged; its manifest as the sae phase writes one."""
    out = Path(SAE_OUT)
    out.mkdir(parents=True)
    Path("data.jsonl").write_text('{"text": "thanks"}\n')
    (out / "metrics.json").write_text(json.dumps({"held_out": {"l0": 3.5}}) + "\n")
    (out / "features.csv").write_text("feature,auroc\n0,0.75\n1,0.5\n")
    (out / "big.csv").write_text("x\n" + "1\n" * 600_000)  # 1.2 MB
    (out / "sae_weights.safetensors").write_bytes(b"\0" * 64)
    return store.write_manifest(
        out,
        kind="sae",
        inputs={"dataset": "data.jsonl"},
        params={"model": "tiny-lm", "sae": {"k": 4, "lr": 0.003}, "labels": ["anger", "neutral"]},
        seeds={"seed": 7},
        extra={
            "summary": {
                "held_out": {"l0": 3.5, "explained_variance": 0.71, "evaluated_on": "test"},
                "top_heads": [{"head": "L1H0", "mean_recovery": 0.25}],
                "converged": True,
            },
            "n_rows": 12,
        },
    )


def _store_artifact() -> dict:
    """A tiny activation store written with the real store functions."""
    ds = xr.Dataset(
        {"blocks.0.hook_resid_post": (("sample", "d_model"), np.ones((3, 4), np.float32))},
        coords={"sample": ["a", "b", "c"]},
    )
    store.write_dataset(STORE_OUT, ds)
    return store.write_manifest(
        STORE_OUT, kind="activations", params={"dataset": "emotion"}, extra={"summary": {"n": 3}}
    )


def _job(rule: str, outputs: dict, **wildcards) -> SimpleNamespace:
    """What a Snakemake script job sees: its rule, named outputs and wildcards."""
    return SimpleNamespace(
        rule=rule,
        output=Namedlist(fromdict=outputs),
        wildcards=Namedlist(fromdict=wildcards),
        params=Namedlist(fromdict={"seed": 7}),
    )


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for info in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return sorted(found)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Jobs run in the workflow directory with relative output paths."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_jobs_become_mlflow_runs(workdir, capsys):
    sae_manifest = _sae_artifact()
    zarr_manifest = _store_artifact()
    uri = _uri(workdir)
    options = {"experiment": "circuitflow-test", "max_artifact_mb": 1}
    wc = {"dataset": "emotion", "model": "tiny-lm"}
    sae_job = _job("train_sae", {"sae": SAE_OUT}, **wc, hook="blocks.1.hook_resid_post")
    sae_run = tracking.log_job(sae_job, uri, seconds=12.5, **options)
    store_run = tracking.log_job(
        _job("extract_activations", {"activations": STORE_OUT}, **wc), uri, **options
    )
    assert sae_run and store_run
    assert "warning" not in capsys.readouterr().err

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("circuitflow-test")
    assert experiment.artifact_location == (workdir / "mlflow" / "mlartifacts").as_uri()
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {sae_run, store_run}

    run = runs[sae_run]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train_sae emotion/tiny-lm/blocks.1.hook_resid_post"
    assert run.data.params == {
        "model": "tiny-lm",
        "sae.k": "4",
        "sae.lr": "0.003",
        "labels": '["anger", "neutral"]',
        "seeds.seed": "7",
    }
    assert run.data.metrics == {
        "summary.held_out.l0": 3.5,
        "summary.held_out.explained_variance": 0.71,
        "summary.top_heads.0.mean_recovery": 0.25,
        "n_rows": 12.0,
        "job_seconds": 12.5,
    }
    tags = run.data.tags
    assert tags["circuitflow.key"] == sae_manifest["key"] == store.read_manifest(SAE_OUT)["key"]
    assert (tags["circuitflow.rule"], tags["circuitflow.kind"]) == ("train_sae", "sae")
    assert (tags["dataset"], tags["model"]) == ("emotion", "tiny-lm")
    assert tags["hook"] == "blocks.1.hook_resid_post"
    assert tags["circuitflow.input.dataset"] == sae_manifest["inputs"]["dataset"]
    assert _artifacts(client, sae_run) == [
        f"{SAE_OUT}/features.csv",
        f"{SAE_OUT}/manifest.json",
        f"{SAE_OUT}/metrics.json",
    ]
    copy = client.download_artifacts(sae_run, f"{SAE_OUT}/features.csv", str(workdir / "dl"))
    assert Path(copy).read_text() == (Path(SAE_OUT) / "features.csv").read_text()

    run = runs[store_run]
    assert run.data.tags["circuitflow.key"] == zarr_manifest["key"]
    assert run.data.tags["circuitflow.kind"] == "activations"
    assert run.data.metrics == {"summary.n": 3.0}
    assert _artifacts(client, store_run) == [f"{STORE_OUT}.manifest.json"]
    logged = client.download_artifacts(store_run, f"{STORE_OUT}.manifest.json", str(workdir))
    assert json.loads(Path(logged).read_text()) == store.read_manifest(STORE_OUT)
    assert store.verify(SAE_OUT) == [] and store.verify(STORE_OUT) == []


def test_outputs_that_disagree_keep_both_values(workdir):
    """Two file outputs (sidecar manifests): a param they share once, one that differs under
    each output's name; the tags name both keys and the artifacts include the sidecars."""
    Path("a.csv").write_text("x\n1\n")
    Path("b.csv").write_text("x\n2\n")
    first = store.write_manifest("a.csv", kind="table", params={"k": 1, "method": "ridge"})
    second = store.write_manifest("b.csv", kind="summaries", params={"k": 3, "method": "ridge"})
    job = _job("align_models", {"table": "a.csv", "summaries": "b.csv"})
    record = tracking.job_record(job)
    assert record["params"] == {"k": "1", "method": "ridge", "summaries.k": "3"}
    assert record["tags"]["circuitflow.key.table"] == first["key"]
    assert record["tags"]["circuitflow.key.summaries"] == second["key"]
    assert record["tags"]["circuitflow.key"] == first["key"]
    files = tracking.artifact_files(job.output, 2**20)
    assert sorted(p.name for p, _ in files) == [
        "a.csv",
        "a.csv.manifest.json",
        "b.csv",
        "b.csv.manifest.json",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "nosuchscheme://tracking",
        "sqlite:///{tmp}/file.txt/mlflow.db",  # a folder that is a file
        "http://127.0.0.1:9",  # nothing listens: refused at once, retried once
    ],
)
def test_a_bad_tracking_uri_warns_once_and_keeps_the_job(workdir, bad, capsys):
    _sae_artifact()
    Path("file.txt").write_text("not a folder")
    uri = bad.format(tmp=workdir)
    job = _job("train_sae", {"sae": SAE_OUT}, dataset="emotion")
    assert tracking.log_job(job, uri, experiment="x", max_artifact_mb=1) is None
    lines = [line for line in capsys.readouterr().err.splitlines() if "circuitflow [" in line]
    assert len(lines) == 1
    assert lines[0].startswith("circuitflow [train_sae]: warning: MLflow tracking skipped (")
    assert uri in lines[0]
    assert store.verify(SAE_OUT) == []


def test_track_is_off_by_default(workdir):
    from circuitflow.workflow import schema_defaults

    job = _job("train_sae", {"sae": SAE_OUT})
    job.config = {"tracking": schema_defaults("tracking")}
    assert schema_defaults("tracking")["mlflow"] is None
    assert tracking.track(job) is None
    assert list(workdir.iterdir()) == []


SNAKEFILE = """
rule all:
    input:
        expand("out/{name}.csv", name=["a", "b"]),


rule table:
    output:
        "out/{name}.csv",
    log:
        "logs/{name}.log",
    script:
        "job.py"
"""

SCRIPT = """
from circuitflow import store, tracking

out = snakemake.output[0]  # noqa: F821
with open(out, "w") as fh:
    fh.write("x\\n1\\n")
store.write_manifest(out, kind="table", params={"name": snakemake.wildcards.name})  # noqa: F821
tracking.track(snakemake, seconds=1.0)  # noqa: F821
"""


@pytest.mark.slow
def test_snakemake_script_jobs_reach_the_tracking_config(tmp_path):
    """Two jobs side by side on a fresh sqlite store (their first migrations would race):
    both runs land, with the config that ``snakemake.config`` hands the script."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(SCRIPT)
    uri = _uri(tmp_path)
    config = {"mlflow": uri, "experiment": "wf", "artifact_location": None, "max_artifact_mb": 1}
    (tmp_path / "config.yaml").write_text(json.dumps({"tracking": config}))
    cmd = [str(REPO / ".venv/bin/snakemake"), "--cores", "2", "--configfile", "config.yaml"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLflow tracking skipped" not in done.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("wf").experiment_id])
    by_name = {r.data.tags["name"]: r for r in runs}
    assert set(by_name) == {"a", "b"}
    for name, run in by_name.items():
        assert (
            run.data.tags["circuitflow.key"]
            == store.read_manifest(tmp_path / "out" / f"{name}.csv")["key"]
        )
        assert run.data.params == {"name": name}
        assert _artifacts(client, run.info.run_id) == [
            f"out/{name}.csv",
            f"out/{name}.csv.manifest.json",
        ]
