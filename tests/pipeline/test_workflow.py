"""The Snakemake workflow, through the snakemake CLI, in copies of the project."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import tomllib
import torch
import yaml
from conftest import (
    ENV,
    ROOT,
    TINY,
    make_project,
    planned_jobs,
    run_tool,
    snakemake,
    write_config,
)

from ddpm.data.artefacts import TIMING_FIELDS, read_checkpoint, read_final, read_log


def test_dry_run_of_the_real_config_builds_the_expected_dag(tmp_path):
    project = make_project(tmp_path, yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    assert planned_jobs(project) == {
        # 6 stages that run once (FD_DINOv2's two among them), 4 networks' training and
        # progress, 4 x 7 sampler variants x (sample, evaluate), summary, report
        "settings": 72,
        "download": 1,
        "preprocess": 1,
        "inception_weights": 1,
        "reference_stats": 1,
        "dinov2_weights": 1,
        "dinov2_reference": 1,
        "train": 4,
        "progress": 4,
        "sample": 28,
        "evaluate": 28,
        "summary": 1,
        "report": 1,
        "all": 1,
    }


def test_lint_is_clean_and_neither_lint_nor_a_dry_run_writes_anything(tmp_path):
    project = make_project(tmp_path, TINY)
    assert snakemake(project, "--lint").returncode == 0
    snakemake(project, "-n")
    written = [p for p in project.rglob("*") if p.is_file() and ".snakemake" not in p.parts]
    assert not (project / "results").exists(), written


def test_a_configfile_grid_replaces_the_default_grid(tmp_path):
    """`--configfile config/demo.yaml` runs the demo's grid, not the demo's axes added to the
    default config's (whose `sampler` axis, of other samplers, would replace the demo's)."""
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    project = make_project(tmp_path, default)
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    jobs = planned_jobs(project, "--configfile", "config/demo.yaml")
    networks = len(demo["grid"]["schedule"]) * len(demo["grid"]["train.seed"])
    assert len(demo["grid"]["sampler"]) != len(default["grid"]["sampler"])
    variants = networks * len(demo["grid"]["sampler"])
    planned = (jobs["train"], jobs["progress"], jobs["sample"], jobs["evaluate"])
    assert planned == (networks, networks, variants, variants)


def _ddpm_processes(project):
    """Processes of this project's pipeline still alive (by working directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if proc.info["cwd"] == str(project) and "ddpm" in " ".join(proc.info["cmdline"]):
                found.append(proc.info["cmdline"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_then_plain_snakemake_resumes_and_loses_nothing(tmp_path):
    """Ctrl-C (SIGINT to Snakemake's process group) in the middle of training; then the same
    `snakemake --cores 2` command again. The weights equal an uninterrupted training's, the log
    has every row once, and no process is left behind. (The command asks for the trained
    network, so that the stages after training, tested elsewhere, do not run here.)"""
    cfg = {
        **TINY,
        "grid": {"T": [20]},
        "train": {
            **TINY["train"],
            "steps": 120,
            "checkpoint_every": 20,
            "log_every": 10,
            "snapshot_every": 30,
        },
    }
    project = make_project(tmp_path / "project", cfg)
    checkpoint = project / "results/runs/T~20/checkpoint.pt"
    target = "results/runs/T~20/final.pt"
    # The training job gets one thread, as the run by hand below does (conftest sets
    # OMP_NUM_THREADS=1): CPU float sums depend on the thread count, and the weights must match.
    # (--set-threads takes several values, so it comes after the target.)
    one_thread = ["--set-threads", "train=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", target, *one_thread],
        cwd=project,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    try:
        start = time.time()
        first_snapshot = project / "results/runs/T~20/snapshots/step_0000030.pt"
        while not first_snapshot.exists():  # then a rerun that lost it could not make it again
            assert proc.poll() is None and time.time() - start < 300, "training never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    interrupted_at = read_checkpoint(checkpoint)["step"]
    assert 30 <= interrupted_at < 120, "the interrupt landed mid-training"
    assert not (project / "results/runs/T~20/final.pt").exists()
    assert _ddpm_processes(project) == []

    snakemake(project, "--cores", "2", target, *one_thread)
    log = (project / "results/logs/train/T~20.log").read_text()
    assert f"resuming T~20 from step {interrupted_at}" in log
    assert planned_jobs(project, target) == {}

    # The same training, uninterrupted, by hand from the same settings file.
    straight = tmp_path / "straight"
    run_tool(
        project,
        "python",
        "-m",
        "ddpm",
        "train",
        "--settings",
        "results/settings/train/T~20.json",
        "--data",
        "results/data/dataset.npy",
        "--out",
        str(straight),
    )
    run = project / "results/runs/T~20"
    resumed, reference = read_final(run / "final.pt"), read_final(straight / "final.pt")
    for name, tensor in reference["ema"].items():
        assert torch.equal(resumed["ema"][name], tensor), name
    rows = read_log(run / "train_log.csv")
    assert [r["step"] for r in rows] == list(range(10, 121, 10))
    untimed = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
    assert untimed == [
        {k: v for k, v in r.items() if k not in TIMING_FIELDS}
        for r in read_log(straight / "train_log.csv")
    ]
    summary = json.loads((run / "train_summary.json").read_text())
    assert (
        summary["final_loss"]
        == json.loads((straight / "train_summary.json").read_text())["final_loss"]
    )
    # The snapshots made before the interrupt survived Snakemake's cleanup of the job's outputs.
    index = json.loads((run / "snapshots.json").read_text())
    assert index == json.loads((straight / "snapshots.json").read_text())
    assert [e["step"] for e in index["snapshots"]] == [30, 60, 90]
    for entry in index["snapshots"]:
        ours = read_final(run / "snapshots" / entry["file"])["ema"]
        theirs = read_final(straight / "snapshots" / entry["file"])["ema"]
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), entry["file"]


@pytest.mark.slow
def test_a_failed_training_does_not_stop_the_sweep_and_its_cause_is_shown(tmp_path):
    """profiles/default's keep-going and show-failed-logs: a training at lr 0.99 without
    clipping or warm-up goes non-finite; it runs first (`--prioritize`), the healthy network is
    trained, sampled and evaluated after it, Snakemake exits 1, and the failed job's own error
    line is on screen, not only its log's path.

    Both networks train as two processes (train.gpus: 2, on the CPU with gloo): the healthy
    one goes through the pipeline like any network, and both processes of the failing one stop
    at the same non-finite step, which ends the job instead of hanging it."""
    cfg = {
        **TINY,
        "grid": {"train.lr": [2.0e-4, 0.99]},
        "train": {**TINY["train"], "grad_clip": 0, "warmup_steps": 0, "gpus": 2},
    }
    project = make_project(tmp_path / "project", cfg)
    healthy, failing = "results/runs/train.lr~0.0002", "results/runs/train.lr~0.99"
    r = snakemake(
        project,
        "--cores",
        "2",
        f"{healthy}/default/metrics.json",
        f"{failing}/final.pt",
        "--prioritize",
        f"{failing}/final.pt",
        check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert (project / healthy / "default/metrics.json").exists()
    summary = json.loads((project / healthy / "train_summary.json").read_text())
    assert summary["processes"] == 2
    assert not (project / failing / "final.pt").exists()
    failure = out.index("Error in rule train")
    assert "error: train.lr~0.99: the loss became non-finite at step" in out[failure:]
    assert out.count("the loss became non-finite") == 1, "said once, not once per process"
    finished_after = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out[failure:])
    assert {"train", "sample", "evaluate"} <= set(finished_after), out[failure:]


@pytest.mark.parametrize(
    "section, value, key",
    [
        ("diffusion", {"schedule": "quadratic"}, "schedule"),
        ("diffusion", {"T": 0}, "T"),
        ("train", {"stepz": 5}, "stepz"),
    ],
)
def test_a_bad_config_fails_before_any_job_naming_the_key(tmp_path, section, value, key):
    project = make_project(tmp_path, {**TINY, section: {**TINY.get(section, {}), **value}})
    r = snakemake(project, "--cores", "1", check=False)
    assert r.returncode != 0
    assert key in r.stderr + r.stdout
    assert not (project / "results").exists(), "no job may run"


def test_a_key_written_twice_or_a_file_for_results_dir_stops_snakemake_before_any_job(tmp_path):
    """Snakemake's YAML reader keeps the last of two `train:` sections; the workflow reads the
    config files again with ours, which refuses them, naming the lines."""
    project = make_project(tmp_path, TINY)
    config = project / "config/config.yaml"
    config.write_text(config.read_text() + "train:\n  steps: 50000\n")
    r = snakemake(project, "--cores", "1", check=False)
    assert r.returncode != 0 and "key 'train' is written twice" in r.stdout + r.stderr
    assert not (project / "results").exists(), "no job may run"

    write_config(project, TINY)
    (project / "results").write_text("a file where the results folder should be")
    r = snakemake(project, "--cores", "1", check=False)
    assert r.returncode != 0
    assert "results_dir: 'results' cannot be a folder, because results is a file" in (
        r.stdout + r.stderr
    )


def _names(requirements):
    return {
        re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def test_conda_env_lists_every_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "workflow/envs/ddpm.yaml").read_text())
    listed = []
    for item in env["dependencies"]:
        listed += item["pip"] if isinstance(item, dict) else [item]
    missing = _names(deps) - _names(listed)
    assert not missing, f"workflow/envs/ddpm.yaml lacks {sorted(missing)}"


def test_pyproject_reads_without_a_deprecation_warning():
    """setuptools reads pyproject.toml as `pip install -e .` does, warnings being errors (they
    are in tests): the licence as a TOML table is deprecated and refused from February 2027."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    distribution = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert distribution.metadata.license_expression == "MIT"


def test_slurm_profile_parses_and_sizes_the_jobs(tmp_path):
    """The profile as shipped: its options are valid for Snakemake + the SLURM executor plugin
    (a dry run fails on any unknown option) without conda, as README installs it; its per-rule
    settings name real rules, and each training job asks for one GPU,
    or for train.gpus on one node."""
    settings = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert settings["executor"] == "slurm" and "use-conda" not in settings
    project = make_project(
        tmp_path / "project", yaml.safe_load((ROOT / "config/config.yaml").read_text())
    )
    rules = set(snakemake(project, "--list-rules").stdout.split())
    for section in ("set-resources", "set-threads"):
        assert set(settings[section]) <= rules, f"{section} names a rule that does not exist"

    r = snakemake(project, "--profile", "profiles/slurm", "-n")
    out = r.stdout + r.stderr
    assert "profiles/default" in out, "the default workflow profile applies too"
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert len(train_jobs) == 4
    train = settings["set-resources"]["train"]
    for block in train_jobs:  # what the profile asks for reaches the jobs
        assert "gpu=1" in block and "nodes=1" in block
        assert f"runtime={train['runtime']}" in block and f"mem_mb={train['mem_mb']}" in block

    # One network trained by two GPUs asks for both, on one node (--gpus=2 --nodes=1).
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["grid"] = {"T": [350, 1000]}
    config["train"]["gpus"] = 2
    write_config(project, config)
    out = snakemake(project, "--profile", "profiles/slurm", "-n").stdout
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert len(train_jobs) == 2
    assert all("gpu=2" in block and "nodes=1" in block for block in train_jobs)
