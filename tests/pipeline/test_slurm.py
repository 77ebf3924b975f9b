"""The cluster path on a real SLURM: a one-node cluster from Debian's packages (munge, slurmctld,
slurmd), started by this test as root, runs the sweep through Snakemake's SLURM executor and the
project's own profile; a training cancelled with `scancel` checkpoints at once (the job step's
Snakemake passes the SIGTERM on to it), is resubmitted by the profile's retries and resumes.

The node has no accounting database (like many small clusters), so it also shows the profile's
job status queries work without one. It declares 16 CPUs, 64 GB and four GPUs as a generic
resource, each backed by a harmless character device (`SlurmdParameters=config_overrides` lets
a 2-core, GPU-less machine stand in for it), so the profile's requests are scheduled as they
are, not stripped.

The config goes to /etc/slurm/slurm.conf, the only place every SLURM command of a job finds it:
the executor plugin's job step removes SLURM_* variables (SLURM_CONF too) before its nested srun.
The test refuses to touch an existing /etc/slurm/slurm.conf, and removes its own afterwards.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ENV, ROOT, TINY, make_project

from ddpm.data.artefacts import read_log

SLURM_CONF = Path("/etc/slurm/slurm.conf")
# Marks the files this test wrote (an identifier: kept when the test moved into tests/pipeline/)
MARK = "# written by ddpm-pipeline's tests/test_slurm.py"
STEPS = 150  # per training; the cancel comes after the first 10
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


def _unavailable() -> str | None:
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmctld and slurmd needs root"
    if SLURM_CONF.exists() and MARK not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} belongs to a real cluster; this test will not replace it"
    return None


def _run(*args, check=True, **kwargs):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, **kwargs)


def _wait(predicate, what: str, timeout: float = 60, log: Path | None = None):
    start = time.time()
    while not predicate():
        if time.time() - start > timeout:
            tail = ""
            if log and log.exists():
                tail = f"; the end of {log}:\n" + "\n".join(log.read_text().splitlines()[-15:])
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s{tail}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node SLURM; every daemon is stopped by process id afterwards."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run must provide it")
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    host = socket.gethostname()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o400)
    config = f"""{MARK}
ClusterName=ddpmtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=3600
KillWait=10
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:4 State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(config)
    gres = SLURM_CONF.with_name("gres.conf")
    devices = "/dev/null,/dev/zero,/dev/full,/dev/urandom"  # stand-ins: nothing opens them
    gres.write_text(f"{MARK}\nAutoDetect=off\nNodeName={host} Name=gpu Count=4 File={devices}\n")
    cgroup = SLURM_CONF.with_name("cgroup.conf")
    # Job processes are tracked in cgroups, as on production clusters, so that cancelling a job
    # also ends processes that lost their parent (proctrack/linuxproc misses those).
    version = "v1" if Path("/sys/fs/cgroup/freezer").is_dir() else "v2"
    cgroup.write_text(f"{MARK}\nCgroupPlugin=cgroup/{version}\n")
    cgroups_before = set(Path("/sys/fs/cgroup").glob("*/slurm*"))
    pid_files = [d / "munged.pid", d / "slurmctld.pid", d / "slurmd.pid"]
    try:
        _run(
            "munged",
            "--force",
            f"--socket={d}/munge.socket",
            f"--key-file={d}/munge.key",
            f"--log-file={d}/log/munged.log",
            f"--pid-file={d}/munged.pid",
            f"--seed-file={d}/munged.seed",
        )
        _run("slurmctld")
        _wait(
            lambda: _run("scontrol", "ping", check=False).returncode == 0,
            "slurmctld",
            log=d / "log/slurmctld.log",
        )
        _run("slurmd")

        def node_ready():
            _run("scontrol", "update", f"nodename={host}", "state=resume", check=False)
            state = _run("sinfo", "--noheader", "--format=%t %G", check=False).stdout.split()
            return state[:1] == ["idle"] and "gpu:4" in state

        _wait(node_ready, "the node coming up with its GPU", 90, log=d / "log/slurmd.log")
        yield d
    finally:
        # Jobs first (their processes belong to slurmd's job steps), then the daemons.
        if shutil.which("scancel") and (d / "slurmctld.pid").exists():
            _run("scancel", "--full", "--partition=gpu", check=False)

            def jobs_gone():
                out = _run("squeue", "--noheader", "--format=%T", check=False).stdout.split()
                return not {"RUNNING", "COMPLETING", "PENDING", "CONFIGURING"} & set(out)

            with contextlib.suppress(TimeoutError):  # stop the daemons all the same
                _wait(jobs_gone, "the cancelled jobs ending", timeout=60)
        for pid_file in reversed(pid_files):
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                try:
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(50):
                        os.kill(pid, 0)
                        time.sleep(0.1)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for path in (SLURM_CONF, gres, cgroup):
            if path.exists() and MARK in path.read_text():
                path.unlink()
        for top in set(Path("/sys/fs/cgroup").glob("*/slurm*")) - cgroups_before:
            for group in sorted(top.rglob("*"), reverse=True) + [top]:  # innermost first
                if group.is_dir():
                    with contextlib.suppress(OSError):
                        group.rmdir()


def _site_profile(dest: Path) -> Path:
    """The project's profile with what a site fills in: the partition, no account (this cluster
    has no accounting database to check one against), and threads for its nodes (this one has 2
    real cores under its 16 declared ones). Shorter status intervals only make the test
    faster. Everything else is the profile as shipped."""
    settings = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    settings["default-resources"]["slurm_partition"] = "gpu"
    settings["slurm-no-account"] = True
    settings["set-threads"] = dict.fromkeys(settings["set-threads"], 1)
    settings["slurm-init-seconds-before-status-checks"] = 2
    settings["seconds-between-status-checks"] = 2
    dest.mkdir()
    (dest / "config.yaml").write_text(yaml.safe_dump(settings))
    return dest


def _slurm_jobs() -> list[dict]:
    out = _run("squeue", "--states=all", "--noheader", "--format=%i|%k|%T").stdout
    return [
        dict(zip(("id", "comment", "state"), line.split("|"), strict=True))
        for line in out.splitlines()
    ]


@pytest.mark.slow
def test_the_sweep_runs_through_slurm_and_a_cancelled_training_resumes(cluster, tmp_path):
    cfg = {
        **TINY,
        "grid": {"T": [20]},
        "train": {
            **TINY["train"],
            "steps": STEPS,
            "log_every": 10,
            "checkpoint_every": 1000,
            "snapshot_every": STEPS // 2,
        },
    }
    project = make_project(tmp_path / "cluster", cfg)
    profile = _site_profile(tmp_path / "profile")
    before = {job["id"] for job in _slurm_jobs()}
    # The same config run locally, for comparison; meanwhile the cluster mostly waits. Snakemake
    # sets OMP_NUM_THREADS to a job's threads, and CPU float sums depend on it (5e-6 of the FID
    # here), so the local jobs get the profile's thread counts.
    local = make_project(tmp_path / "local", cfg)
    threads = yaml.safe_load((profile / "config.yaml").read_text())["set-threads"]
    local_run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--set-threads",
            *(f"{rule}={n}" for rule, n in threads.items()),
        ],
        cwd=local,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--profile", str(profile)],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _check_the_cluster_run(project, proc, before)
        # The same results as the local run of the same config.
        assert local_run.wait(timeout=600) == 0
        for network in ("T~20",):
            name = f"results/runs/{network}/default/metrics.json"
            local_metrics = json.loads((local / name).read_text())
            assert json.loads((project / name).read_text()) == local_metrics, network
    finally:
        for process in (proc, local_run):
            if process.poll() is None:
                process.kill()


def _check_the_cluster_run(project: Path, proc: subprocess.Popen, before: set[str]) -> None:
    # Cancel the first training once it has logged a row (only a signal checkpoints it).
    log = project / "results/runs/T~20/train_log.csv"
    _wait(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, "training", 600)
    running = [
        j
        for j in _slurm_jobs()
        if j["comment"].startswith("rule_train")
        and "T~20" in j["comment"]
        and j["state"] == "RUNNING"
    ]
    assert len(running) == 1, _slurm_jobs()
    details = _run("scontrol", "show", "job", "--details", running[0]["id"]).stdout
    assert "GRES=gpu:1(IDX:" in details, details  # one of the node's GPUs, by index
    _run("scancel", running[0]["id"])
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-4000:]

    # Every job went through sbatch, and the cancelled one was submitted again.
    jobs = [j for j in _slurm_jobs() if j["id"] not in before]
    rules = [j["comment"] for j in jobs]
    for rule, count in (
        ("preprocess", 1),
        ("reference_stats", 1),
        ("progress", 1),
        ("sample", 1),
        ("evaluate", 1),
        ("summary", 1),
        ("report", 1),
    ):
        assert sum(c.startswith(f"rule_{rule}") for c in rules) == count, rules
    assert sum(c.startswith("rule_train") and "T~20" in c for c in rules) == 2, rules
    assert {j["state"] for j in jobs if j["id"] != running[0]["id"]} == {"COMPLETED"}
    assert output.count("has been submitted with SLURM jobid") == len(jobs)
    # The GPU requests reached the scheduler, not stripped: every training, progress, sampling
    # and evaluation job asked for one GPU (and ran, so it got one), and no other job asked.
    gpu_rules = ("rule_train", "rule_progress", "rule_sample", "rule_evaluate")
    for job in jobs:
        details = _run("scontrol", "show", "job", "--oneliner", job["id"]).stdout
        wants_gpu = job["comment"].startswith(gpu_rules)
        assert ("TresPerJob=gres:gpu:1" in details) == wants_gpu, details

    # No process of any job lives on, the cancelled one's included (a job step's processes
    # are tracked in cgroups, so even those that lost their parent were ended).
    left = _processes_in(project)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text() for pid in left]

    # The retry resumed from the checkpoint that the cancelled job wrote when it was signalled
    # (the periodic ones come every 1000 steps), and lost no log row.
    train_log = (project / "results/logs/train/T~20.log").read_text()
    resumed = re.search(r"resuming T~20 from step (\d+)", train_log)
    assert resumed, train_log
    assert 10 <= int(resumed[1]) < STEPS, train_log
    assert [row["step"] for row in read_log(log)] == list(range(10, STEPS + 1, 10))


def _processes_in(folder: Path) -> list[int]:
    """Process ids of the processes working in `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) == folder.resolve():
                    found.append(int(entry.name))
    return found
