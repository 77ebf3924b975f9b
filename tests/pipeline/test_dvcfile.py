"""dvc.yaml: rendered from the stage table for the config, the same runs and paths as Snakemake,
and refusing to run when stale. The `dvc repro` / `dvc push` / fresh clone / `dvc pull` round
trip is executed once, as the baseline of test_pipeline.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    ENV,
    ROOT,
    TINY,
    dvc,
    make_project,
    snakemake,
    write_config,
)

from ddpm.pipeline.dvcfile import render_files


def test_dvc_yaml_and_params_are_generated_from_the_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    dvc_yaml, params = render_files("config/config.yaml")
    hint = "run `python -m ddpm dvc-yaml --config config/config.yaml --out dvc.yaml`"
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml, hint
    assert (ROOT / "params.yaml").read_text() == params, hint


def dvc_outputs(project: Path) -> set[str]:
    code = (
        "from dvc.repo import Repo; r = Repo('.');"
        "print('\\n'.join(str(o) for s in r.index.stages for o in s.outs))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout
    return set(out.split())


def snakemake_outputs(project: Path) -> set[str]:
    r = snakemake(project, "-n", "--summary")
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    return {row[0] for row in rows if row[0] != "output_file"}  # skip the header


def test_snakemake_and_dvc_agree_on_runs_and_paths(tmp_path):
    project = make_project(
        tmp_path, yaml.safe_load((ROOT / "config/config.yaml").read_text()), dvc=True
    )
    ours, theirs = snakemake_outputs(project), dvc_outputs(project)
    runs = {p.split("/")[2] for p in ours if p.startswith("results/runs/")}
    assert runs == {
        "T~350_schedule~linear",
        "T~350_schedule~cosine",
        "T~1000_schedule~linear",
        "T~1000_schedule~cosine",
    }
    # DVC versions the settings as one folder, Snakemake writes them one file each.
    settings = {p for p in ours if p.startswith("results/settings/")}
    assert len(settings) == 72 and "results/settings" in theirs
    # DVC also versions each network's checkpoint.pt and snapshots (kept across reruns so
    # training can resume).
    assert theirs - ours == {"results/settings"} | {
        f"results/runs/{run}/{kept}" for run in runs for kept in ("checkpoint.pt", "snapshots")
    }
    assert ours - settings <= theirs


def test_dotted_and_boolean_grid_keys_give_the_same_ids(tmp_path):
    cfg = {
        **TINY,
        "grid": {"diffusion.schedule": ["linear", "cosine"], "train.hflip": [True, False]},
    }
    project = make_project(tmp_path, cfg, dvc=True)
    runs = {p.split("/")[2] for p in dvc_outputs(project) if p.startswith("results/runs/")}
    expected = {
        p.split("/")[2] for p in snakemake_outputs(project) if p.startswith("results/runs/")
    }
    assert runs == expected and "diffusion.schedule~cosine_train.hflip~false" in runs


def test_a_bundle_axis_gives_both_tools_the_same_variant_paths(tmp_path):
    sampler = [{"method": "ddpm"}, {"method": "ddim", "sample.steps": 2}]
    grid = {"T": [20, 30], "sampler": sampler}
    cfg = {**TINY, "sample": {**TINY["sample"], "steps": None}, "grid": grid}  # DDPM: all steps
    project = make_project(tmp_path, cfg, dvc=True)
    ours, theirs = snakemake_outputs(project), dvc_outputs(project)
    variants = {"/".join(p.split("/")[2:4]) for p in theirs if p.count("/") >= 4}
    assert variants == {f"T~{t}/sampler~{v}" for t in (20, 30) for v in ("ddpm", "ddim-2")}
    runs = {p for p in ours if p.startswith("results/runs/")}  # settings: one folder in DVC
    assert {p for p in runs if "/sampler~" in p} <= theirs


@pytest.mark.parametrize(
    "edit",
    [
        {"grid": {"T": [20, 30, 40]}},  # DVC would run the wrong stages
        {"train": {**TINY["train"], "lr": 1.0e-3}},  # the older params.yaml would win
    ],
    ids=["grid", "setting"],
)
def test_a_stale_dvc_yaml_refuses_to_run(tmp_path, edit):
    project = make_project(tmp_path, TINY, dvc=True)
    write_config(project, {**TINY, **edit})
    r = dvc(project, "repro", check=False)
    assert r.returncode != 0
    assert "dvc.yaml does not match config/config.yaml" in r.stdout + r.stderr
    assert "python -m ddpm dvc-yaml --config config/config.yaml --out dvc.yaml" in (
        r.stdout + r.stderr
    )
    assert not (project / "results/data").exists(), "no stage after `settings` ran"
