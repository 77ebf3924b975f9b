"""dvc.yaml: generated from the config, the same runs and paths as Snakemake, and a real
`dvc repro` / `dvc push` / `dvc pull` round trip on a tiny config."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import ENV, SNAKEMAKE, TINY

from ddpm.dvcfile import render_file

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = render_file("config/config.yaml")
    assert (ROOT / "dvc.yaml").read_text() == expected, (
        "run `python -m ddpm dvc-yaml --config config/config.yaml --out dvc.yaml`"
    )


def dvc(repo, *args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, env=ENV
    )
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def make_repo(path: Path, cfg: dict, monkeypatch) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(path)
    (path / "config").mkdir(exist_ok=True)
    (path / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "dvc.yaml").write_text(render_file("config/config.yaml"))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc(path, "init", "-q")
    return path


def dvc_outputs(repo: Path) -> set[str]:
    code = (
        "from dvc.repo import Repo; r = Repo('.');"
        "print('\\n'.join(str(o) for s in r.index.stages for o in s.outs))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=ENV, check=True
    ).stdout
    return set(out.split())


def snakemake_outputs(repo: Path) -> set[str]:
    r = subprocess.run(
        [*SNAKEMAKE, "--directory", str(repo), "-n", "--summary"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    return {row[0] for row in rows if row[0] != "output_file"}  # skip the header


def test_snakemake_and_dvc_agree_on_runs_and_paths(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    ours, theirs = snakemake_outputs(tmp_path), dvc_outputs(tmp_path)
    runs = {p.split("/")[2] for p in ours if p.startswith("results/runs/")}
    assert runs == {
        "T~350_schedule~linear",
        "T~350_schedule~cosine",
        "T~1000_schedule~linear",
        "T~1000_schedule~cosine",
    }
    # DVC also versions each run's checkpoint.pt (kept across reruns so training can resume).
    assert theirs - ours == {f"results/runs/{run}/checkpoint.pt" for run in runs}
    assert ours <= theirs


def test_dotted_and_boolean_grid_keys_give_the_same_ids(tmp_path, monkeypatch):
    cfg = {
        **TINY,
        "grid": {"diffusion.schedule": ["linear", "cosine"], "train.hflip": [True, False]},
    }
    repo = make_repo(tmp_path / "repo", cfg, monkeypatch)
    runs = {p.split("/")[2] for p in dvc_outputs(repo) if p.startswith("results/runs/")}
    expected = {r.split("/")[2] for r in snakemake_outputs(repo) if r.startswith("results/runs/")}
    assert runs == expected and "diffusion.schedule~cosine_train.hflip~false" in runs


@pytest.mark.slow
def test_dvc_repro_push_and_pull(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo", TINY, monkeypatch)
    dvc(repo, "repro")
    produced = {str(p.relative_to(repo)) for p in (repo / "results").rglob("*") if p.is_file()}
    assert dvc_outputs(repo) <= produced
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout

    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(repo, "push")
    checkpoints = sorted((repo / "results/runs").glob("*/*.pt"))
    assert len(checkpoints) == 4  # final.pt and checkpoint.pt of two runs
    saved = {p: p.read_bytes() for p in checkpoints}
    for p in checkpoints:
        p.unlink()
    dvc(repo, "pull")
    for p, data in saved.items():
        assert p.read_bytes() == data, p
