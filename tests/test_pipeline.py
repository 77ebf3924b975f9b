"""The pipeline's promises, executed end to end in copies of the project, with both tools: a
change reruns exactly what it should (nothing for a change that cannot alter a result), and the
result of each rerun is complete and current.

One baseline project is run once by Snakemake and recorded by DVC (`dvc commit`, the documented
Snakemake -> DVC step); each case edits a byte-exact copy of it (at another path, so every case
also checks that moving the project reruns nothing), then plans and runs it with each tool. An
edit of a shared setting affects every network alike, so one network suffices here; edits of
the grid itself are tested in test_workflow.py.
"""

import copy
import json

import pytest
import yaml
from conftest import (
    TINY,
    copy_project,
    dvc,
    dvc_changed_stages,
    dvc_repro,
    make_project,
    planned_jobs,
    run_tool,
    snakemake,
    write_config,
)

CONFIG = {**TINY, "grid": {"T": [20]}}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("baseline"), CONFIG, dvc=True)
    snakemake(project, "--cores", "2")
    dvc(project, "commit", "--force")
    assert planned_jobs(project) == {}
    assert dvc_changed_stages(project) == set()
    return project


def edit_config(section: str, **values):
    def apply(project):
        cfg = copy.deepcopy(CONFIG)
        cfg.setdefault(section, {}).update(values)
        write_config(project, cfg)

    return apply


def edit_code(path: str):
    def apply(project):
        with open(project / path, "a") as f:
            f.write("# an edit\n")

    return apply


# (edit, jobs Snakemake plans, stages dvc repro runs). Stage `settings` writes the settings files
# (one job per changed file under Snakemake; one stage under DVC, which reads the config itself).
AFTER_TRAINING = {"sample": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1}
DVC_AFTER_TRAINING = {"sample", "evaluate", "summary", "report"}
CASES = {
    "data": (
        edit_config("data", synthetic_seed=5),
        {"settings": 3, "preprocess": 1, "reference_stats": 1, "train": 1, **AFTER_TRAINING},
        {"settings", "preprocess", "reference_stats", "train"} | DVC_AFTER_TRAINING,
    ),
    "model": (
        edit_config("model", base_channels=16),
        {"settings": 3, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
    ),
    "diffusion": (
        edit_config("diffusion", objective="v"),
        {"settings": 3, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
    ),
    "train": (
        edit_config("train", lr=1.0e-3),
        {"settings": 3, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
    ),
    "sample": (
        edit_config("sample", num_images=6),
        {"settings": 3, **AFTER_TRAINING},
        {"settings"} | DVC_AFTER_TRAINING,
    ),
    "evaluate": (
        edit_config("evaluate", reference_max_images=20),
        {"settings": 3, "reference_stats": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1},
        {"settings", "reference_stats", "evaluate", "summary", "report"},
    ),
    "report": (
        edit_config("report", title="Another title"),
        {"settings": 1, "report": 1, "all": 1},
        {"settings", "report"},
    ),
    # A comment in the network's code: training and sampling rerun. Their results are
    # byte-identical, and DVC compares content, so under DVC evaluation is not repeated
    # (Snakemake runs what follows a rerun job in the same invocation).
    "code of the network": (
        edit_code("ddpm/unet.py"),
        {"settings": 2, "train": 1, **AFTER_TRAINING},
        {"settings", "train", "sample", "summary", "report"},
    ),
    "data.workers (cannot change a result)": (
        edit_config("data", workers=1),
        {},
        {"settings"},
    ),
}


def assert_current(project, tmp_path):
    """Everything the pipeline made matches the project's current config and code: each
    settings file is what `python -m ddpm settings` writes now, and the outputs show it."""
    fresh = tmp_path / "settings-now"
    run_tool(
        project,
        "python",
        "-m",
        "ddpm",
        "settings",
        "--config",
        "config/config.yaml",
        "--out",
        str(fresh),
    )
    written = sorted(p.relative_to(fresh) for p in fresh.rglob("*.json"))
    assert written
    for name in written:
        assert (project / "results/settings" / name).read_text() == (fresh / name).read_text()
    cfg = yaml.safe_load((project / "config/config.yaml").read_text())
    run = project / "results/runs/T~20"
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6
    metrics = json.loads((run / "default/metrics.json").read_text())
    assert metrics["n_generated"] == cfg["sample"]["num_images"]
    title = cfg["report"].get("title", "DDPM sweep")
    assert f"<title>{title}</title>" in (project / "results/report.html").read_text()


def _results(project):
    return {
        str(p.relative_to(project)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in (project / "results").rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_snakemake_reruns_exactly_what_an_edit_changes(baseline, tmp_path, case):
    edit, jobs, _ = CASES[case]
    project = copy_project(baseline, tmp_path / "moved")
    edit(project)
    before = _results(project)
    assert planned_jobs(project) == jobs
    assert _results(project) == before, "a dry run writes nothing"

    snakemake(project, "--cores", "2")
    assert planned_jobs(project) == {}
    after = _results(project)
    if not jobs:
        assert after == before, "nothing was rewritten"
    assert_current(project, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_dvc_reruns_exactly_what_an_edit_changes(baseline, tmp_path, case):
    edit, _, stages = CASES[case]
    project = copy_project(baseline, tmp_path / "moved")
    edit(project)
    assert dvc_changed_stages(project) == {"settings"}
    # one network: DVC names its matrix stages train@20, sample@20, evaluate@20
    assert {name.removesuffix("@20") for name in dvc_repro(project)} == stages
    assert dvc_changed_stages(project) == set()
    assert_current(project, tmp_path)
