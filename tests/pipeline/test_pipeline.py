"""The pipeline's promises, executed end to end in copies of the project, with both tools: a
change reruns exactly what it should (nothing for a change that cannot alter a result), and the
result of each rerun is complete and current.

One baseline is made once, the way a team shares results: `dvc repro` in one checkout, `dvc
push`, a fresh clone, `dvc pull`, the documented `snakemake --touch --forceall` and `dvc commit
--force`, after which both tools must have nothing to do. Each case edits a byte-exact copy of
that clone (at another path, so every case also checks that moving the project reruns
nothing), then plans and runs it with each tool, and after a Snakemake run records it with
`dvc commit --force`. An edit of a shared setting affects every network alike, so one network
suffices here; edits of the grid itself are tested in test_workflow.py.
"""

import copy
import json
import re

import pytest
import yaml
from conftest import (
    DVC_YAML,
    GIT,
    TINY,
    built_once,
    commit,
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

from ddpm.pipeline.config import config_from_dict, load_config
from ddpm.pipeline.stages import read_keys, table

CONFIG = {**TINY, "grid": {"T": [20]}}
TABLE_CONFIG = config_from_dict(CONFIG)  # the stages of the baseline


def _share(root, config=CONFIG):
    """`dvc repro` in one checkout and `dvc push`; a fresh clone that pulls, after which both
    tools have nothing to do (Snakemake after the documented `--touch`)."""
    project = make_project(root / "project", config, dvc=True)
    assert dvc_repro(project)[0] == "settings"
    assert dvc_changed_stages(project) == set()
    dvc(project, "remote", "add", "-d", "storage", str(root / "remote"))
    dvc(project, "push")
    commit(project, "results")

    clone = root / "clone"
    run_tool(root, *GIT, "clone", "-q", str(project), str(clone))
    assert not (clone / "results").exists()
    dvc(clone, "pull")
    assert dvc_changed_stages(clone) == set()
    snakemake(clone, "--touch", "--forceall", "--cores", "1")
    assert planned_jobs(clone) == {}
    r = dvc(clone, "commit", "--force")
    assert "Running stage" not in r.stdout
    assert dvc_changed_stages(clone) == set() and planned_jobs(clone) == {}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, worker_id):
    """(the checkout that ran `dvc repro` and pushed, the fresh clone that pulled): made once
    for all workers, and only read; every case works in its own copy."""
    root = built_once(tmp_path_factory, worker_id, "pipeline-shared", _share)
    return root / "project", root / "clone"


@pytest.fixture(scope="module")
def baseline(shared):
    return shared[1]


@pytest.mark.slow
def test_a_fresh_clone_pulls_every_result_and_both_tools_agree(shared, tmp_path):
    """After `dvc pull` the clone holds the very files the first checkout made, `dvc metrics
    show` prints one small file of numbers, the plots compare the loss curves and FID against
    sampling cost, and Snakemake, after the documented `--touch`, notices a later edit."""
    project, clone = shared[0], copy_project(shared[1], tmp_path / "clone")
    for name in (
        "results/runs/T~20/final.pt",
        "results/runs/T~20/snapshots/step_0000003.pt",
        "results/runs/T~20/default/metrics.json",
    ):
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    assert dvc_repro(clone) == []

    # DVC's metrics: one small file, every run's four headline numbers
    shown = json.loads(dvc(clone, "metrics", "show", "--json").stdout)
    files = {name: f["data"] for rev in shown.values() for name, f in rev["data"].items()}
    assert list(files) == ["results/metrics.json"]
    scores = files["results/metrics.json"]["T~20"]
    assert set(scores) == {"fid", "fid_std", "kid_mean", "is_mean"}
    assert all(type(v) is float for v in scores.values()), scores
    plots = json.loads(dvc(clone, "plots", "show", "--json").stdout)["data"]
    rows = plots["Training loss"][0]["content"]["data"]["values"]
    assert {row["step"] for row in rows} == {"3", "6"}
    [point] = plots["FID against sampling cost"][0]["content"]["data"]["values"]
    assert float(point["fid"]) == pytest.approx(scores["fid"])
    assert int(point["nfe_per_image"]) == CONFIG["sample"]["steps"]

    moved = copy_project(clone, tmp_path / "moved")
    cfg = {**CONFIG, "report": {**CONFIG["report"], "title": "After the pull"}}
    write_config(moved, cfg)
    assert planned_jobs(moved) == {"settings": 1, "report": 1, "all": 1}


@pytest.mark.slow
def test_with_snapshots_off_as_by_default_dvc_repro_push_and_pull_leave_nothing_to_do(tmp_path):
    """The round trip above with train.snapshot_every at the package default, 0: the training
    stage's snapshots folder is still an output, so `dvc repro` ends, and the clone gets it back
    (empty) from the cache. FID over training then has no points."""
    train = {k: v for k, v in CONFIG["train"].items() if k != "snapshot_every"}
    config = {**CONFIG, "train": {**train, "steps": 4}}
    _share(tmp_path, config)
    run = tmp_path / "clone/results/runs/T~20"
    assert load_config(run.parents[2] / "config/config.yaml").train.snapshot_every == 0
    assert run.joinpath("snapshots").is_dir() and not any(run.joinpath("snapshots").iterdir())
    assert json.loads(run.joinpath("snapshots.json").read_text())["snapshots"] == []
    assert json.loads(run.joinpath("progress.json").read_text())["points"] == []


def edit_config(section: str, **values):
    """An edit of settings as each tool's users make it: Snakemake's in config/config.yaml;
    DVC's in params.yaml where the settings are DVC params, else in the config, after which
    dvc.yaml and params.yaml are generated again (as dvc.yaml's header asks). Returns the
    params it edited (there, those that the regenerated params.yaml holds)."""

    def apply(project, tool):
        keys = {f"{section}.{key}" for key in values}
        params = yaml.safe_load((project / "params.yaml").read_text())
        if tool == "dvc" and keys <= {f"{s}.{k}" for s in params for k in params[s]}:
            params[section].update(values)
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            return keys
        cfg = copy.deepcopy(CONFIG)
        cfg.setdefault(section, {}).update(values)
        write_config(project, cfg)
        if tool != "dvc":
            return set()
        generate_dvc_files(project)
        params = yaml.safe_load((project / "params.yaml").read_text())
        return keys & {f"{s}.{k}" for s in params for k in params[s]}

    return apply


def edit_code(path: str, text: str = "_EDITED = True  # code that runs\n"):
    """Append `text` to a package file: by default a statement, which changes what the code
    does to a fingerprint (a comment would not)."""

    def apply(project, tool):
        with open(project / path, "a") as f:
            f.write(text)
        return set()

    return apply


def generate_dvc_files(project):
    run_tool(project, *DVC_YAML)


def readers(params: set[str], cfg=TABLE_CONFIG) -> set[str]:
    """The stages of `cfg` that read any of these settings, as the stage table declares them."""
    return {s.name for s in table(cfg).values() if params & set(read_keys(s))}


# (edit, jobs Snakemake plans, stages dvc repro runs, the tools that also run it). Stage
# `settings` writes the settings files (one job per changed file under Snakemake; one stage
# under DVC, which reads the config itself). Every case is planned by both tools. Both run the
# edits where they differ (a code edit: DVC compares content), the one that changes nothing,
# and `sample` (DVC cannot list its rerun of evaluation before sampling has run); the other
# cases run under one tool each, in turn, since both run the same commands. `data` reruns
# everything: DVC runs it (it cannot list the later stages before the first ones have run),
# and Snakemake runs a whole sweep in test_slurm.py. `model` and `diffusion` are
# planned only: their rerun is the `train` case's, another section that the same stage reads.
BOTH = ("snakemake", "dvc")
AFTER_TRAINING = {"progress": 1, "sample": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1}
DVC_AFTER_TRAINING = {"progress", "sample", "evaluate", "summary", "report"}
CASES = {
    "data": (
        edit_config("data", synthetic_seed=5),
        {"settings": 3, "preprocess": 1, "reference_stats": 1, "train": 1, **AFTER_TRAINING},
        {"settings", "preprocess", "reference_stats", "train"} | DVC_AFTER_TRAINING,
        ("dvc",),
    ),
    # A training setting also rewrites the settings of the network's progress, sampling and
    # evaluation, which name the training settings they expect (checked against final.pt).
    "model": (
        edit_config("model", base_channels=16),
        {"settings": 6, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
        (),
    ),
    "diffusion": (
        edit_config("diffusion", objective="v"),
        {"settings": 6, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
        (),
    ),
    # Run under DVC as an experiment, by the test after these.
    "train": (
        edit_config("train", lr=1.0e-3),
        {"settings": 6, "train": 1, **AFTER_TRAINING},
        {"settings", "train"} | DVC_AFTER_TRAINING,
        (),
    ),
    "sample": (
        edit_config("sample", num_images=6),
        {"settings": 3, "sample": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1},
        {"settings", "sample", "evaluate", "summary", "report"},
        BOTH,
    ),
    "evaluate": (
        edit_config("evaluate", reference_max_images=8),
        {
            "settings": 3,
            "reference_stats": 1,
            "progress": 1,
            "evaluate": 1,
            "summary": 1,
            "report": 1,
            "all": 1,
        },
        {"settings", "reference_stats", "progress", "evaluate", "summary", "report"},
        ("dvc",),
    ),
    # FID over training: its own settings rerun its own job, and the report that shows it.
    "progress": (
        edit_config("progress", num_images=6),
        {"settings": 2, "progress": 1, "report": 1, "all": 1},
        {"settings", "progress", "report"},
        ("snakemake",),
    ),
    "report": (
        edit_config("report", title="Another title"),
        {"settings": 1, "report": 1, "all": 1},
        {"settings", "report"},
        ("dvc",),
    ),
    # The network's code: training, sampling and progress rerun. Their results are
    # byte-identical but for progress.json's timing, and DVC compares content, so under DVC
    # evaluation is not repeated (Snakemake runs what follows a rerun job in the same
    # invocation).
    "code of the network": (
        edit_code("ddpm/diffusion/unet.py"),
        {"settings": 3, "train": 1, **AFTER_TRAINING},
        {"settings", "train", "progress", "sample", "summary", "report"},
        BOTH,
    ),
    # A comment changes no fingerprint: nothing reruns (DVC reruns its settings stage, which
    # reads the package's files, and it writes the same settings files).
    "a comment in the network's code": (
        edit_code("ddpm/diffusion/unet.py", "# a comment for readers\n"),
        {},
        {"settings"},
        BOTH,
    ),
    # Code that no stage runs, and code of one stage that another does not run: planned only
    # (DVC lists what follows a rerun stage after that stage has run).
    # (DVC: not even its settings stage, whose code does not include them either.)
    "the GPU lock": (edit_code("ddpm/plumbing/gpus.py"), {}, set(), ()),
    "the torchrun launcher": (edit_code("ddpm/plumbing/launcher.py"), {}, set(), ()),
    "the live view of training": (edit_code("ddpm/training/view.py"), {}, set(), ()),
    "the sample stage's summary": (
        edit_code("ddpm/sampling/sample.py"),
        {"settings": 1, "sample": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1},
        {"settings", "sample"},
        (),
    ),
    "the evaluate stage's record": (
        edit_code("ddpm/evaluation/evaluate.py"),
        {"settings": 1, "evaluate": 1, "summary": 1, "report": 1, "all": 1},
        {"settings", "evaluate"},
        (),
    ),
    # FD_DINOv2 switched on (a small random ViT of its family): its two stages run, and
    # evaluation with what follows; neither the Inception reference nor FID over training.
    # Planned by both tools, run by Snakemake (DVC runs the same commands; both parse them:
    # test_stages.py).
    "FD_DINOv2 switched on": (
        edit_config(
            "evaluate",
            metrics=["fid", "is", "kid", "prdc", "fd_dinov2"],
            dinov2_source="test-small",
            dinov2_weights="results/weights/dinov2-small.pth",
        ),
        {
            "settings": 5,
            "dinov2_weights": 1,
            "dinov2_reference": 1,
            "evaluate": 1,
            "summary": 1,
            "report": 1,
            "all": 1,
        },
        {"settings", "dinov2_weights", "dinov2_reference", "evaluate", "summary", "report"},
        ("snakemake",),
    ),
    "data.workers (cannot change a result)": (
        edit_config("data", workers=1),
        {},
        {"settings"},
        BOTH,
    ),
}


def assert_current(project, tmp_path, *, params: bool = False):
    """Everything the pipeline made matches the project's current config and code (with
    `params`, under the params.yaml layer that DVC's settings stage reads): each settings file
    is what `python -m ddpm settings` writes now, and the outputs show it."""
    fresh = tmp_path / "settings-now"
    layer = ("--params", "params.yaml") if params else ()
    settings = ("python", "-m", "ddpm", "settings", "--config", "config/config.yaml", *layer)
    run_tool(project, *settings, "--out", str(fresh))
    written = sorted(p.relative_to(fresh) for p in fresh.rglob("*.json"))
    assert written
    for name in written:
        assert (project / "results/settings" / name).read_text() == (fresh / name).read_text()
    cfg = load_config(
        project / "config/config.yaml", layer=project / "params.yaml" if params else None
    )
    run = project / "results/runs/T~20"
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6
    metrics = json.loads((run / "default/metrics.json").read_text())
    assert metrics["n_generated"] == cfg.sample.num_images
    # FID over training: the snapshot at step 3 and the final weights, at this config's budget
    points = json.loads((run / "progress.json").read_text())["points"]
    assert [(p["step"], p["n_images"]) for p in points] == [
        (3, cfg.progress.num_images),
        (6, cfg.progress.num_images),
    ]
    report = (project / "results/report.html").read_text()
    assert f"<title>{cfg.report.title}</title>" in report
    fd_on = "fd_dinov2" in cfg.evaluate.metrics  # then scored and compared with FID
    assert ("fd_dinov2" in metrics) == fd_on and ('id="agreement"' in report) == fd_on


def _results(project):
    return {
        str(p.relative_to(project)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in (project / "results").rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_snakemake_reruns_exactly_what_an_edit_changes(baseline, tmp_path, case):
    edit, jobs, _, runs = CASES[case]
    project = copy_project(baseline, tmp_path / "moved")
    edit(project, "snakemake")
    before = _results(project)
    assert planned_jobs(project) == jobs
    assert _results(project) == before, "a dry run writes nothing"
    if "snakemake" not in runs:
        return

    snakemake(project, "--cores", "2")
    assert planned_jobs(project) == {}
    after = _results(project)
    if not jobs:
        assert after == before, "nothing was rewritten"
    assert_current(project, tmp_path)

    # The documented Snakemake -> DVC step records the rerun without running anything.
    generate_dvc_files(project)
    r = dvc(project, "commit", "--force")
    assert "Running stage" not in r.stdout
    assert dvc_changed_stages(project) == set() and planned_jobs(project) == {}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_dvc_reruns_exactly_what_an_edit_changes(baseline, tmp_path, case):
    edit, _, stages, runs = CASES[case]
    project = copy_project(baseline, tmp_path / "moved")
    edited = edit(project, "dvc")
    # DVC names the stages whose declared params changed; one network: DVC names its matrix
    # stages train@20, sample@20, evaluate@20
    changed = networkless(dvc_changed_stages(project))
    now = load_config(project / "config/config.yaml")
    added = set(table(now)) - set(table(TABLE_CONFIG))  # stages that have never run
    assert changed == ({"settings"} | readers(edited, now) | added if stages else set())
    if "dvc" not in runs and stages:  # the settings stage alone: DVC then lists what it would rerun
        assert dvc_repro(project, "settings") == ["settings"]
        assert networkless(dvc_changed_stages(project)) == stages - {"settings"}
        return
    assert networkless(dvc_repro(project)) == stages
    assert dvc_changed_stages(project) == set()
    assert_current(project, tmp_path, params=True)


def networkless(stages) -> set[str]:
    return {name.removesuffix("@20") for name in stages}


@pytest.mark.slow
def test_a_dvc_experiment_varies_a_setting_and_leaves_the_config_alone(baseline, tmp_path):
    """`dvc exp run -S train.lr=...` (the `train` case) reruns what that case reruns, rewrites
    params.yaml only, and `dvc params diff`, `exp diff` and `exp show` report it."""
    project = copy_project(baseline, tmp_path / "moved")
    commit(project, "the baseline")  # experiments are made from, and compared with, a commit
    config = (project / "config/config.yaml").read_bytes()
    out = dvc(project, "exp", "run", "--name", "higher-lr", "-S", "train.lr=0.001").stdout
    ran = re.findall(r"^Running stage '([^']+)'", out, re.M)
    assert networkless(ran) == CASES["train"][2]
    assert (project / "config/config.yaml").read_bytes() == config, "the config is untouched"
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"] == 0.001
    assert dvc_changed_stages(project) == set()
    assert_current(project, tmp_path, params=True)

    change = {"old": CONFIG["train"].get("lr", 2.0e-4), "new": 0.001}
    diff = json.loads(dvc(project, "params", "diff", "--json").stdout)
    assert list(diff) == ["params.yaml"] and list(diff["params.yaml"]) == ["train.lr"]
    assert diff["params.yaml"]["train.lr"].items() >= change.items()
    diff = json.loads(dvc(project, "exp", "diff", "--json").stdout)
    assert diff["params"]["params.yaml"]["train.lr"].items() >= change.items()
    assert {"T~20.fid", "T~20.kid_mean"} <= set(diff["metrics"]["results/metrics.json"])
    # README's view: the settings that differ and the metrics, without the dependency hashes
    show = ("exp", "show", "--md", "--only-changed", "--drop", "results/")
    table = dvc(project, *show).stdout.splitlines()
    columns = [c.strip() for c in table[0].strip().strip("|").split("|")]
    metrics = [f"T~20.{key}" for key in ("fid", "fid_std", "is_mean", "kid_mean")]
    assert columns == ["Experiment", "Created", *metrics, "train.lr"], columns
    assert any("higher-lr" in row and "0.001" in row for row in table[2:]), table


@pytest.mark.slow
def test_an_accepted_code_change_reruns_only_the_report_that_names_it(baseline, tmp_path):
    """`accept-code` is the explicit way to keep results across a result-neutral change: the
    stages keep their fingerprints, the report says so, and a later change is not covered."""
    project = copy_project(baseline, tmp_path / "moved")
    edit_code("ddpm/diffusion/unet.py")(project, "snakemake")
    assert planned_jobs(project)["train"] == 1  # unaccepted, the change retrains
    accept = ("python", "-m", "ddpm", "accept-code", "--config", "config/config.yaml")
    out = run_tool(project, *accept, "--stages", "train", "--reason", "renamed a variable")
    assert "progress, sample changed too" in out.stdout
    run_tool(project, *accept, "--stages", "sample,progress", "--reason", "renamed a variable")
    entries = yaml.safe_load((project / "config/accepted-code.yaml").read_text())
    assert [e["stage"] for e in entries] == ["train", "sample", "progress"]

    # Only the report reruns (it names the acceptance); DVC also reruns its settings stage.
    assert networkless(dvc_changed_stages(project)) == {"settings", "report"}
    assert planned_jobs(project) == {"report": 1, "all": 1}
    snakemake(project, "--cores", "2")
    assert planned_jobs(project) == {}
    html = (project / "results/report.html").read_text()
    assert "accepted as result-neutral" in html and "renamed a variable" in html
    assert_current(project, tmp_path)
    generate_dvc_files(project)
    assert "Running stage" not in dvc(project, "commit", "--force").stdout
    assert dvc_changed_stages(project) == set()

    edit_code("ddpm/diffusion/unet.py", "_AGAIN = True\n")(project, "snakemake")
    assert planned_jobs(project)["train"] == 1
