"""The Snakemake workflow, through the snakemake CLI, in temporary directories."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]

TINY = {
    "results_dir": "results",
    "grid": {"T": [20, 30]},
    "data": {"source": "synthetic", "synthetic_count": 32, "image_size": 16},
    "model": {"preset": "tiny"},
    "train": {
        "device": "cpu",
        "batch_size": 8,
        "steps": 6,
        "warmup_steps": 2,
        "checkpoint_every": 3,
        "log_every": 3,
        "preview_every": 0,
    },
    "sample": {
        "method": "ddim",
        "steps": 4,
        "num_images": 8,
        "batch_size": 8,
        "device": "cpu",
        "trajectory_images": 2,
        "trajectory_points": 3,
    },
    "evaluate": {
        "inception_source": "test",
        "inception_weights": "results/weights/test.pth",
        "device": "cpu",
        "batch_size": 16,
        "kid_subset_size": 4,
        "kid_subsets": 3,
        "is_splits": 2,
    },
    "report": {"grid_images": 4},
}


def workdir(tmp_path, cfg) -> Path:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


# Rules run `python -m ddpm`: the interpreter of this environment, as for a user whose
# virtual environment is active.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(wd, *args):
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(wd), *args], capture_output=True, text=True, env=ENV
    )


def job_counts(wd, *args) -> dict[str, int]:
    r = snakemake(wd, "-n", "--quiet", "rules", *args)
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m[1] != "total"}


def test_dry_run_of_the_real_config_builds_the_expected_dag(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    counts = job_counts(tmp_path)
    assert counts == {
        "download": 1,
        "preprocess": 1,
        "inception_weights": 1,
        "reference_stats": 1,
        "train": 4,
        "sample": 4,
        "evaluate": 4,
        "summary": 1,
        "report": 1,
        "all": 1,
    }


def test_lint_is_clean():
    r = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_the_tiny_pipeline_end_to_end(tmp_path):
    wd = workdir(tmp_path, TINY)
    r = snakemake(wd, "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    for run in ("T~20", "T~30"):
        d = wd / "results/runs" / run
        assert np.load(d / "samples.npz")["images"].shape == (8, 3, 16, 16)
        metrics = json.loads((d / "metrics.json").read_text())
        assert np.isfinite(metrics["fid"]) and metrics["n_generated"] == 8
        assert json.loads((d / "train_summary.json").read_text())["steps"] == 6
    summary = (wd / "results/summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[1].startswith("T~20,ok,20")
    html = (wd / "results/report.html").read_text()
    assert 'data-run="T~20"' in html and 'data-run="T~30"' in html
    assert job_counts(wd) == {}, "a second invocation has nothing to do"
    r = snakemake(wd, "--report", str(wd / "snakemake-report.zip"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (wd / "snakemake-report.zip").stat().st_size > 0

    changed = dict(TINY, grid={"T": [20, 40]})
    workdir(tmp_path, changed)
    assert job_counts(wd) == {
        "train": 1,
        "sample": 1,
        "evaluate": 1,
        "summary": 1,
        "report": 1,
        "all": 1,
    }

    more_workers = dict(TINY, data={**TINY["data"], "workers": 1})  # back to T 20, 30
    workdir(tmp_path, more_workers)
    assert job_counts(wd) == {}, "data.workers does not change the dataset"
    other_data = dict(TINY, data={**TINY["data"], "synthetic_seed": 5})
    workdir(tmp_path, other_data)
    counts = job_counts(wd)
    assert counts["preprocess"] == 1 and counts["train"] == 2 and counts["evaluate"] == 2


@pytest.mark.parametrize(
    "section, value, key",
    [
        ("diffusion", {"schedule": "quadratic"}, "schedule"),
        ("diffusion", {"T": 0}, "T"),
        ("train", {"stepz": 5}, "stepz"),
    ],
)
def test_a_bad_config_fails_before_any_job_naming_the_key(tmp_path, section, value, key):
    wd = workdir(tmp_path, {**TINY, section: {**TINY.get(section, {}), **value}})
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0
    assert key in r.stderr + r.stdout
    assert not (wd / "results/data").exists(), "no job may run"


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


def test_slurm_profile_parses_and_sizes_the_jobs(tmp_path):
    """The profile's options are valid for Snakemake + the SLURM executor plugin (a dry run
    fails on any unknown option), its per-rule settings name real rules, and each training
    job asks for one GPU. Conda is not installable here, so use-conda is dropped for the run."""
    profile = ROOT / "workflow/profiles/slurm/config.yaml"
    settings = yaml.safe_load(profile.read_text())
    assert settings["executor"] == "slurm" and settings["use-conda"] is True
    r = subprocess.run([*SNAKEMAKE, "--list-rules"], capture_output=True, text=True, cwd=ROOT)
    rules = set(r.stdout.split())
    for section in ("set-resources", "set-threads"):
        assert set(settings[section]) <= rules, f"{section} names a rule that does not exist"

    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "profile").mkdir()
    without_conda = {k: v for k, v in settings.items() if k != "use-conda"}
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(without_conda))
    r = snakemake(tmp_path, "--workflow-profile", str(tmp_path / "profile"), "-n")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    train_jobs = [block for block in out.split("rule ")[1:] if block.startswith("train:")]
    assert len(train_jobs) == 4
    for block in train_jobs:
        assert "gpu=1" in block and "runtime=240" in block and "mem_mb=32000" in block
