"""The workflow through profiles/slurm on a one-node Slurm cluster on this machine.

.ci/slurm/start.sh installs Debian's slurm-wlm + munge if missing and starts the controller
and the node (partitions cpu and gpu, no slurmdbd); the tiny random model then goes through
every phase as Slurm jobs. Needs root (CI runs as root); stopped again in teardown.
"""

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, TESTS

from circuitflow import stats

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
SLURM = REPO / ".ci" / "slurm"
RUN_LIMIT_S = 900  # 11 jobs took 3.7-4.6 min on 2 busy cores; timeout -k ends a hung Snakemake
JOB_MEM_MB = 2000


@pytest.fixture(scope="module")
def cluster():
    """A running one-node cluster; stopped afterwards unless it was up before."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        reason = "a Slurm cluster here needs root and apt-get (.ci/slurm/start.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    proc = subprocess.run(
        ["bash", str(SLURM / "start.sh")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    started = "already up" not in proc.stdout
    yield proc.stdout
    if started:
        subprocess.run(["bash", str(SLURM / "stop.sh")], capture_output=True, timeout=120)


def rule_bodies() -> dict[str, str]:
    """Each rule's text in rules/*.smk, by rule name."""
    bodies = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):$", path.read_text(), flags=re.M)
        bodies.update(zip(parts[1::2], parts[2::2], strict=True))
    return bodies


def slurm_config() -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", out, re.M))


def write_profile(folder):
    """profiles/slurm with the settings a cluster without slurmdbd needs (status from squeue,
    checked after 1 s), kept job logs, no retries, and every rule's memory cut to fit a small
    node; partitions, runtimes and the plugin's other settings are the real profile's."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile.update(
        {
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-keep-successful-logs": True,
            "retries": 0,
            "latency-wait": 5,
        }
    )
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    for rule in rule_bodies():
        profile["set-resources"].setdefault(rule, {})["mem_mb"] = JOB_MEM_MB
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def test_profile_sends_every_gpu_capable_rule_to_the_gpu_partition():
    """The default config planned with profiles/slurm: each rule that declares a `gpu`
    resource goes to partition gpu with the profile's memory and runtime, the rest to cpu."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", TARGET, "--profile", "profiles/slurm"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    planned, rule = {}, None
    for line in proc.stdout.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            planned.setdefault(rule, dict(re.findall(r"(\w+)=([^,\s]+)", line)))
    gpu_capable = {name for name, body in rule_bodies().items() if re.search(r"\bgpu=", body)}
    assert {"extract_activations", "patch_model", "train_sae"} <= gpu_capable & set(planned)
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for name, resources in planned.items():
        assert resources["slurm_partition"] == ("gpu" if name in gpu_capable else "cpu"), name
        assert int(resources["runtime"]) >= 60, name
        if name in profile["set-resources"]:
            assert int(resources["mem_mb"]) == profile["set-resources"][name]["mem_mb"], name


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, tiny_model_dirs):
    """The tiny config built through the Slurm profile, in a fresh working directory."""
    root = tmp_path_factory.mktemp("slurm")
    work = root / "work"
    work.mkdir()
    config = {
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
        "models": {
            "tiny-llama": {"source": str(tiny_model_dirs["llama"]), "per_token_layers": [1]}
        },
        "stats": {"bootstrap_resamples": 200},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    profile = write_profile(root / "profile")
    cmd = [
        "timeout", "-k", "30", str(RUN_LIMIT_S),
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
        TARGET, "--configfile", str(work / "config.yaml"), "--profile", str(profile),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        cmd, cwd=work, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S + 60
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake (rc {proc.returncode}):\n{out[-6000:]}"
    return work, out


def test_effect_sizes_built_through_slurm(slurm_run):
    work, out = slurm_run
    table = pd.read_csv(work / TARGET)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    assert len(table) > 100
    assert {"vectors", "patching", "steering", "sae"} <= set(table.phase)
    assert set(table.model) == {"tiny-llama"}
    assert "Falling back to 'sacct'" not in out


def test_every_job_ran_as_a_slurm_job_with_its_partition_and_memory(slurm_run):
    """Each Snakemake job left a Slurm log named by its Slurm job id, and Slurm's completion
    record of that id says COMPLETED in this working directory, with the profile's partition
    and memory."""
    work, out = slurm_run
    done = re.findall(r"^(\d+) of (\d+) steps \(100%\) done$", out, re.M)
    assert done and done[-1][0] == done[-1][1], out[-3000:]
    n_jobs = int(done[-1][0])
    logs = sorted((work / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))
    rule_of = {int(log.stem): log.relative_to(work / ".snakemake" / "slurm_logs").parts[0]
               for log in logs}  # fmt: skip
    assert len(rule_of) == n_jobs >= 10
    config = slurm_config()
    assert config["JobCompType"] == "jobcomp/filetxt", "start.sh keeps a job completion log"
    records = {}
    with open(config["JobCompLoc"]) as lines:
        for line in lines:
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            records[int(fields["JobId"])] = fields
    ran = {job: records[job] for job in rule_of}
    assert {r["JobState"] for r in ran.values()} == {"COMPLETED"}
    assert {r["WorkDir"] for r in ran.values()} == {str(work)}
    assert len({r["Name"] for r in ran.values()}) == 1  # the run's id
    partitions = {rule_of[job]: r["Partition"] for job, r in ran.items()}
    assert partitions["rule_extract_activations"] == "gpu"
    assert partitions["rule_patch_model"] == "gpu"
    assert partitions["rule_build_prompts"] == "cpu"
    assert partitions["rule_effect_sizes"] == "cpu"
    assert all(f"mem={JOB_MEM_MB}M" in r["Tres"] for r in ran.values())
