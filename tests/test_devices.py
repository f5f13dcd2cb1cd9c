"""The GPU slot pool: simulated GPUs (CIRCUITFLOW_GPU_SLOTS), concurrent holders in separate
processes, crashed holders, the CPU fallback, and the device record in manifests."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from circuitflow import devices, store
from circuitflow.core.errors import ConfigError
from circuitflow.workflow import run_logged

HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from circuitflow import devices
    out, hold_s, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    lease = devices.acquire(1, "cuda", poll_s=0.02, log=lambda line: None)
    start = time.time()
    if mode == "crash":
        print("held", lease.slots[0], flush=True)
        time.sleep(60)
    if mode == "exit":
        os._exit(3)
    time.sleep(hold_s)
    row = {"slot": lease.slots[0], "start": start, "end": time.time(),
           "cvd": os.environ["CUDA_VISIBLE_DEVICES"]}
    devices.release(lease)
    with open(out, "a") as fh:
        fh.write(json.dumps(row) + "\\n")
    """
)


@pytest.fixture
def pool(tmp_path, monkeypatch):
    """Three simulated GPUs with locks under tmp_path; no inherited CUDA_VISIBLE_DEVICES."""
    monkeypatch.setenv(devices.SLOTS_ENV, "3")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv(devices.VISIBLE_ENV, raising=False)
    monkeypatch.delenv(devices.ORDER_ENV, raising=False)
    return tmp_path


def _holder(out: Path, hold_s: float, mode: str = "hold") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(hold_s), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def _overlaps(rows: list[dict]) -> list[tuple[dict, dict]]:
    return [
        (a, b)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def test_visible_gpus_from_override_and_inherited_list(monkeypatch):
    monkeypatch.setenv(devices.SLOTS_ENV, "2")
    assert devices.visible_gpus()[0] == ["0", "1"]
    monkeypatch.setenv(devices.SLOTS_ENV, "3, 5")
    assert devices.visible_gpus()[0] == ["3", "5"]
    monkeypatch.delenv(devices.SLOTS_ENV)
    monkeypatch.setenv(devices.VISIBLE_ENV, "4,6,-1,7")
    assert devices.visible_gpus() == (["4", "6"], "CUDA_VISIBLE_DEVICES=4,6,-1,7")
    monkeypatch.setenv(devices.VISIBLE_ENV, "")
    assert devices.visible_gpus()[0] == []


def test_visible_gpus_from_nvidia_smi_with_mig(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)'\n"
        "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)'\n"
        "echo '  MIG 3g.20gb     Device  0: (UUID: MIG-1111)'\n"
        "echo '  MIG 3g.20gb     Device  1: (UUID: MIG-2222)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv(devices.SLOTS_ENV, raising=False)
    monkeypatch.delenv(devices.VISIBLE_ENV, raising=False)
    monkeypatch.delenv(devices.ORDER_ENV, raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    assert devices.visible_gpus() == (["0", "MIG-1111", "MIG-2222"], "nvidia-smi -L")
    with devices.leased(2, "cuda") as lease:
        assert os.environ[devices.VISIBLE_ENV] == "0,MIG-1111"
        assert os.environ[devices.ORDER_ENV] == "PCI_BUS_ID"
        assert lease.device("cuda:1") == "cuda:1"
    assert devices.ORDER_ENV not in os.environ and devices.VISIBLE_ENV not in os.environ


def test_device_mapping_under_a_lease(pool):
    lease = devices.acquire(1, "cuda:2", log=lambda line: None)
    try:
        assert lease.slots == (0,) and os.environ[devices.VISIBLE_ENV] == "0"
        assert lease.device("cuda:2") == "cuda:0"  # the job sees only its own GPU
        assert lease.device("cpu") == "cpu"
        assert lease.record()["used"] == "cuda:0"
        other = devices.acquire(1, "cuda", log=lambda line: None)
        assert other.slots == (1,)  # slot 0 is held, even by this same process
        devices.release(other)
    finally:
        devices.release(lease)
    assert devices.VISIBLE_ENV not in os.environ
    assert devices.job_device("cuda:1") == "cuda:1"  # no lease: unchanged


def test_multi_gpu_lease_is_all_or_nothing(pool):
    quiet = {"log": lambda line: None}
    first = devices.acquire(1, **quiet)
    try:
        pair = devices.acquire(2, **quiet)
        assert pair.slots == (1, 2) and os.environ[devices.VISIBLE_ENV] == "1,2"
        with pytest.raises(TimeoutError):
            devices.acquire(1, poll_s=0.02, timeout_s=0.1, **quiet)
        devices.release(pair)
        with pytest.raises(TimeoutError):
            devices.acquire(3, poll_s=0.02, timeout_s=0.1, **quiet)
        # the timed-out attempt gave back the two slots it had locked
        assert devices.acquire(2, timeout_s=1, **quiet).slots == (1, 2)
    finally:
        devices.release(first)
    with pytest.raises(ConfigError, match="resources gpu=4: this host offers 3 GPU"):
        devices.acquire(4, **quiet)


def test_gpus_wanted():
    assert devices.gpus_wanted(0, "cpu") == 0
    assert devices.gpus_wanted(0, "cuda:1") == 1
    assert devices.gpus_wanted(2, "cuda") == 2
    assert devices.gpus_wanted(None, None) == 0
    with pytest.raises(ConfigError, match="gpu='two'"):
        devices.gpus_wanted("two", "cuda")


def test_concurrent_holders_never_share_a_slot(pool):
    out = pool / "intervals.jsonl"
    procs = [_holder(out, 0.4) for _ in range(8)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    assert {r["slot"] for r in rows} == {0, 1, 2}
    assert all(r["cvd"] == str(r["slot"]) for r in rows)
    overlapping = _overlaps(rows)
    assert overlapping, "holders never ran concurrently: the test proves nothing"
    assert [(a, b) for a, b in overlapping if a["slot"] == b["slot"]] == []
    # never more holders at once than slots
    for r in rows:
        assert sum(o["start"] <= r["start"] < o["end"] for o in rows) <= 3


@pytest.mark.parametrize("mode", ["crash", "exit"])
def test_a_dead_holder_frees_its_slot(pool, monkeypatch, mode):
    monkeypatch.setenv(devices.SLOTS_ENV, "1")
    quiet = {"log": lambda line: None, "poll_s": 0.02}
    if mode == "crash":
        proc = _holder(pool / "unused.jsonl", 0, mode)
        assert proc.stdout.readline().split() == ["held", "0"]
        with pytest.raises(TimeoutError):
            devices.acquire(1, timeout_s=0.2, **quiet)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    else:
        proc = _holder(pool / "unused.jsonl", 0, mode)
        assert proc.wait(timeout=30) == 3
    lease = devices.acquire(1, timeout_s=5, **quiet)
    assert lease.slots == (0,)
    devices.release(lease)


def _smk(tmp_path: Path, name: str, device: str | None, gpu: int) -> SimpleNamespace:
    return SimpleNamespace(
        log=[str(tmp_path / "logs" / f"{name}.log")],
        output=[str(tmp_path / name)],
        input=[],
        rule=name,
        threads=1,
        params=SimpleNamespace(device=device),
        resources=SimpleNamespace(gpu=gpu),
    )


def _write_artifact(smk, seen: dict) -> None:
    seen["device"] = devices.job_device(smk.params.device)
    seen["cvd"] = os.environ.get(devices.VISIBLE_ENV)
    out = Path(smk.output[0])
    out.mkdir()
    (out / "table.csv").write_text("a\n1\n")
    store.write_manifest(out, kind="dataset", params={"n": 1})


def test_run_logged_leases_a_gpu_and_records_it(pool):
    seen: dict = {}
    smk = _smk(pool, "gpu_job", "cuda:1", 1)
    run_logged(smk, lambda s: _write_artifact(s, seen))
    assert seen == {"device": "cuda:0", "cvd": "0"}
    manifest = store.read_manifest(smk.output[0])
    assert manifest["device"]["requested"] == "cuda:1"
    assert manifest["device"]["used"] == "cuda:0"
    assert manifest["device"]["slot"] == 0
    assert manifest["device"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert manifest["files"] == {"table.csv": store.sha256_file(Path(smk.output[0], "table.csv"))}
    assert store.verify(smk.output[0]) == []
    assert devices.VISIBLE_ENV not in os.environ  # restored after the job
    assert devices.current() is None
    lease = devices.acquire(1, timeout_s=1, log=lambda line: None)
    assert lease.slots == (0,)  # released
    devices.release(lease)


def test_run_logged_falls_back_to_cpu_without_gpus(pool, monkeypatch):
    monkeypatch.setenv(devices.SLOTS_ENV, "0")
    seen: dict = {}
    smk = _smk(pool, "no_gpu", "cuda", 1)
    run_logged(smk, lambda s: _write_artifact(s, seen))
    assert seen == {"device": "cpu", "cvd": None}
    record = store.read_manifest(smk.output[0])["device"]
    assert (record["requested"], record["used"], record["slot"]) == ("cuda", "cpu", None)
    lines = Path(smk.log[0]).read_text().splitlines()
    fallback = [line for line in lines if "runs on cpu" in line]
    assert len(fallback) == 1 and "configured for cuda" in fallback[0]


def test_cpu_job_takes_no_slot(pool, monkeypatch):
    monkeypatch.setenv(devices.SLOTS_ENV, "1")
    held = devices.acquire(1, log=lambda line: None)
    try:
        seen: dict = {}
        smk = _smk(pool, "cpu_job", "cpu", 0)
        start = time.monotonic()
        run_logged(smk, lambda s: _write_artifact(s, seen))
        assert time.monotonic() - start < 20  # did not wait for the held slot
        assert seen == {"device": "cpu", "cvd": "0"}  # the holder's env, untouched
        assert store.read_manifest(smk.output[0])["device"]["slot"] is None
    finally:
        devices.release(held)


SNAKEFILE = """
rule all:
    input:
        expand("out/{i}.json", i=range(4)),
        "out/plain.txt",


rule plain:
    output:
        "out/plain.txt",
    log:
        "logs/plain.log",
    script:
        "plain.py"


rule hold:
    output:
        "out/{i}.json",
    log:
        "logs/{i}.log",
    params:
        device="cuda",
    resources:
        gpu=1,
    script:
        "hold.py"
"""

HOLD_SCRIPT = """
import json, os, time
from pathlib import Path
from circuitflow import devices, store
from circuitflow.workflow import run_logged


def main(smk):
    Path("holding").mkdir(exist_ok=True)
    Path("holding", smk.wildcards.i).touch()
    start = time.time()
    while len(os.listdir("holding")) < 2 and time.time() - start < 30:
        time.sleep(0.05)  # meet another job, so at least two hold a GPU at once
    time.sleep(0.5)
    lease = devices.current()
    row = {"slot": lease.slots[0], "start": start, "end": time.time(),
           "device": devices.job_device(smk.params.device),
           "cvd": os.environ["CUDA_VISIBLE_DEVICES"]}
    Path(smk.output[0]).write_text(json.dumps(row))
    store.write_manifest(smk.output[0], kind="dataset")


run_logged(snakemake, main)  # noqa: F821
"""


PLAIN_SCRIPT = """
from pathlib import Path
from circuitflow import devices, store
from circuitflow.workflow import run_logged


def main(smk):
    Path(smk.output[0]).write_text(str(devices.current().slots))
    store.write_manifest(smk.output[0], kind="dataset")


run_logged(snakemake, main)  # noqa: F821
"""


@pytest.mark.slow
def test_snakemake_jobs_get_their_own_gpu(tmp_path):
    """Four gpu=1 jobs, two GPUs: each holds its own; a job with neither a gpu resource nor a
    device param holds none and its manifest has no device record."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "hold.py").write_text(HOLD_SCRIPT)
    (tmp_path / "plain.py").write_text(PLAIN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != devices.VISIBLE_ENV}
    env.update({devices.SLOTS_ENV: "2", "HF_HUB_OFFLINE": "1"})
    env.pop(devices.LOCK_DIR_ENV, None)
    cmd = [str(REPO / ".venv/bin/snakemake"), "--cores", "4", "--resources", "gpu=2"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(4)]
    assert {r["slot"] for r in rows} == {0, 1}
    assert all(r["device"] == "cuda:0" and r["cvd"] == str(r["slot"]) for r in rows)
    overlapping = _overlaps(rows)
    assert overlapping
    assert [(a, b) for a, b in overlapping if a["slot"] == b["slot"]] == []
    for i, r in enumerate(rows):
        record = store.read_manifest(tmp_path / "out" / f"{i}.json")["device"]
        assert (record["used"], record["slot"]) == ("cuda:0", r["slot"])
    assert (tmp_path / "out" / "plain.txt").read_text() == "()"
    assert "device" not in store.read_manifest(tmp_path / "out" / "plain.txt")
    host_dir = devices.lock_dir().name
    locks = sorted(p.name for p in (tmp_path / devices.DEFAULT_LOCK_DIR / host_dir).iterdir())
    assert locks == ["gpu-0.lock", "gpu-1.lock"]
