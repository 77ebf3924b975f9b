"""The stage table: what each stage reads, networks and sampler variants, settings files, and
the commands both tools run."""

import json
from pathlib import Path

import pytest
from conftest import TINY

from ddpm.cli import build_parser
from ddpm.pipeline import fingerprints, stages
from ddpm.pipeline.config import (
    TUNING,
    ConfigError,
    UndeclaredSettingError,
    config_from_dict,
    leaf_keys,
)
from ddpm.pipeline.stages import plan, read_keys, table

ROOT = Path(__file__).resolve().parents[2]
FLOWERS = config_from_dict({"model": {"preset": "tiny"}})
SYNTHETIC = config_from_dict(TINY)


def test_every_setting_is_read_by_some_stage_or_is_tuning():
    read = {key for stage in table(FLOWERS).values() for key in read_keys(stage)}
    for key in leaf_keys():
        assert key in read or key in TUNING or key in stages.LOCATIONS, key


# What each stage's code is, stated independently of the import scan that computes it.
DIFFUSION = {
    "diffusion/__init__.py",
    "diffusion/model.py",
    "diffusion/unet.py",
    "diffusion/presets.py",
    "diffusion/process.py",
    "diffusion/schedules.py",
    "diffusion/devices.py",
}
ARTEFACTS = {"data/__init__.py", "data/artefacts.py"}  # how the files are written and read
SAMPLERS = DIFFUSION | ARTEFACTS | {"sampling/__init__.py", "sampling/samplers.py"}
SCORING = {
    "evaluation/__init__.py",
    "evaluation/scores.py",
    "evaluation/reference.py",
    "evaluation/inception.py",
    "evaluation/features.py",
    "diffusion/__init__.py",
    "diffusion/devices.py",
}
EXPECTED_CODE = {
    "download": {"data/__init__.py", "data/download.py"},
    "preprocess": {"data/__init__.py", "data/preprocess.py", "data/decode.py", "data/synthetic.py"},
    "inception_weights": {
        "evaluation/__init__.py",
        "evaluation/inception_weights.py",
        "evaluation/inception.py",
        "evaluation/features.py",
        "data/__init__.py",
        "data/synthetic.py",  # the demo's feature network learns the flowers' attributes
    },
    "reference_stats": SCORING
    | ARTEFACTS  # fidelity.py names its scores as metrics.json does
    | {"evaluation/reference_stats.py", "evaluation/fidelity.py"}
    | {"data/__init__.py", "data/dataset.py"},
    "dinov2_weights": {
        "evaluation/__init__.py",
        "evaluation/dinov2_weights.py",
        "evaluation/dinov2.py",  # the network the download must load into
    },
    "dinov2_reference": {
        "evaluation/__init__.py",
        "evaluation/dinov2_reference.py",
        "evaluation/dinov2.py",
        "evaluation/scores.py",  # FD's real side is torchmetrics' FID state
        "diffusion/__init__.py",
        "diffusion/devices.py",
        "data/__init__.py",
        "data/dataset.py",
    },
    "train": DIFFUSION
    | ARTEFACTS
    | {
        "training/__init__.py",
        "training/train.py",
        "training/ema.py",
        "training/ranks.py",
        "data/__init__.py",
        "data/dataset.py",
    },
    "sample": SAMPLERS | {"sampling/sample.py", "sampling/images.py"},
    "progress": SAMPLERS | SCORING | {"evaluation/progress.py"},
    "evaluate": SCORING
    | ARTEFACTS
    | {"evaluation/evaluate.py", "evaluation/fidelity.py"}
    | {"evaluation/dinov2.py", "evaluation/names.py"},
    "summary": {"report/__init__.py", "report/summary.py", "report/runs.py"}
    | {"evaluation/__init__.py", "evaluation/names.py"}  # metrics.json's FD_DINOv2 keys
    | {"diffusion/__init__.py", "diffusion/schedules.py"}
    | ARTEFACTS,
    "report": {
        "report/__init__.py",
        "report/report.py",
        "report/runs.py",
        "evaluation/__init__.py",
        "evaluation/verdict.py",
        "evaluation/names.py",
        "diffusion/__init__.py",
        "diffusion/schedules.py",
        "sampling/__init__.py",
        "sampling/images.py",
        "data/__init__.py",
        "data/dataset.py",  # imported inside a function: the scan sees function-level imports
        "data/artefacts.py",
        "report/templates/report.html.j2",
    },
}


@pytest.mark.parametrize("name", [s.name for s in table(FLOWERS).values()])
def test_each_stage_fingerprints_the_code_it_runs(name):
    """A stage's code is its entry's import closure, outside the pipeline layer and the
    plumbing; its entry module is its own, named after it."""
    stage = table(FLOWERS)[name]
    assert set(stage.code) == EXPECTED_CODE[name]
    assert stage.entry.rsplit("/", 1)[-1] == f"{name}.py"
    assert not any(fingerprints.is_outside(c) for c in stage.code)
    for path in stages.code_files(stage):
        assert path.is_file(), path


def test_no_two_stages_share_an_entry_module():
    entries = [s.entry for s in stages.STAGES]
    assert len(entries) == len(set(entries))


def test_the_settings_step_fingerprints_the_code_that_writes_settings_files():
    code = set(stages.settings_code())
    assert {
        "pipeline/config.py",
        "pipeline/stages.py",
        "pipeline/dvcfile.py",
        "pipeline/layout.py",
        "pipeline/fingerprints.py",
        "diffusion/presets.py",
    } <= code
    assert "training/train.py" not in code and "evaluation/evaluate.py" not in code


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package that the fingerprints are computed from, to edit."""
    copy = tmp_path / "ddpm"
    for path in fingerprints.PACKAGE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (copy / path.relative_to(fingerprints.PACKAGE)).parent.mkdir(
                parents=True, exist_ok=True
            )
            (copy / path.relative_to(fingerprints.PACKAGE)).write_bytes(path.read_bytes())
    monkeypatch.setattr(fingerprints, "PACKAGE", copy)
    return copy


def _fingerprints():
    return {s.name: stages.code_fingerprint(s) for s in table(FLOWERS).values()}


def _changed(before):
    after = _fingerprints()
    return {n for n in before if before[n] != after[n]}


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


# (file, what the edit is about): the stages whose code it is. An edit to code that no stage
# runs (plumbing, the pipeline layer, the live view) changes no fingerprint.
EDITS = {
    "diffusion/unet.py": {"train", "sample", "progress"},
    "sampling/images.py": {"sample", "report"},
    "sampling/sample.py": {"sample"},  # the sample stage's summary: not progress's code
    "evaluation/evaluate.py": {"evaluate"},  # evaluation.json's wording: not the reference's
    "evaluation/scores.py": {"reference_stats", "dinov2_reference", "progress", "evaluate"},
    "data/decode.py": {"preprocess"},  # EXIF decoding: not the download
    "data/synthetic.py": {"preprocess", "inception_weights"},
    "report/runs.py": {"summary", "report"},
    "report/summary.py": {"summary"},  # the CSV's writer: not the report's code
    "plumbing/gpus.py": set(),  # the GPU lock
    "plumbing/launcher.py": set(),  # the torchrun launcher
    "plumbing/console.py": set(),  # progress bars in logs
    "training/view.py": set(),  # previews and TensorBoard: they only watch
    "pipeline/layout.py": set(),  # where files live: the stage table's wiring
    "data/artefacts.py": {
        *("train", "progress", "sample", "evaluate", "summary", "report", "reference_stats")
    },
}


@pytest.mark.parametrize("name", EDITS)
def test_a_code_change_changes_exactly_the_fingerprints_of_the_stages_that_run_it(package, name):
    before = _fingerprints()
    _append(package / name, "\n_EDITED = True\n")
    assert _changed(before) == EDITS[name]


REWRITES = {
    "a comment": lambda src: src.replace("\n\n\n", "\n\n\n# a note for readers\n", 1),
    "a docstring": lambda src: src.replace('"""', '"""A reworded summary. ', 1),
    "the formatting": lambda src: src.replace("(", "(  ", 3).replace("\n", "\n\n", 5),
}


@pytest.mark.parametrize("rewrite", REWRITES)
def test_a_comment_a_docstring_or_a_reformatting_changes_no_fingerprint(package, rewrite):
    before = _fingerprints()
    for name in ("diffusion/unet.py", "evaluation/scores.py", "sampling/samplers.py"):
        path = package / name
        source = path.read_text()
        rewritten = REWRITES[rewrite](source)
        assert rewritten != source
        compile(rewritten, name, "exec")  # still Python
        path.write_text(rewritten)
    assert _changed(before) == set()


def test_a_changed_number_in_a_docstring_free_module_still_counts(package):
    before = _fingerprints()
    path = package / "diffusion/schedules.py"
    source = path.read_text()
    path.write_text(source.replace("0.008", "0.009", 1))
    assert "0.008" in source
    assert _changed(before) == {"train", "sample", "progress", "summary", "report"}


def test_sampler_axes_make_variants_of_the_same_networks():
    cfg = config_from_dict(
        {
            **TINY,
            "grid": {"T": [20, 30], "sample.steps": [2, 4], "eta": [0.0, 1.0]},
        }
    )
    the_plan = plan(cfg)
    assert [n.id for n in the_plan.networks] == ["T~20", "T~30"]
    assert len(the_plan.variants) == 8
    assert "T~30/sample.steps~4_eta~1.0" in [v.key for v in the_plan.variants]
    assert the_plan.network_axes == ["T"] and the_plan.variant_axes == ["sample.steps", "eta"]
    variant = next(v for v in the_plan.variants if v.key == "T~30/sample.steps~4_eta~1.0")
    assert variant.config.diffusion.T == 30 and variant.config.sample.eta == 1.0
    # The training settings of every variant of a network are the network's.
    train = table(cfg)["train"]
    for v in the_plan.variants:
        network = next(n for n in the_plan.networks if n.id == v.network)
        assert stages.settings_of(train, v.config) == stages.settings_of(train, network.config)


def test_a_bundle_axis_varies_settings_together():
    """Full DDPM sampling beside DDIM at a step count: one axis whose values set two settings."""
    sampler = [{"method": "ddpm"}, {"method": "ddim", "sample.steps": 5}]
    no_steps = {**TINY["sample"], "steps": None}  # the shared value, which DDPM needs
    cfg = config_from_dict(
        {**TINY, "sample": no_steps, "grid": {"T": [20, 30], "sampler": sampler}}
    )
    the_plan = plan(cfg)
    assert [n.id for n in the_plan.networks] == ["T~20", "T~30"]
    assert the_plan.variant_axes == ["sampler"]
    settings = {v.key: (v.config.sample.method, v.config.sample.steps) for v in the_plan.variants}
    assert settings == {
        "T~20/sampler~ddim-5": ("ddim", 5),
        "T~20/sampler~ddpm": ("ddpm", None),
        "T~30/sampler~ddim-5": ("ddim", 5),
        "T~30/sampler~ddpm": ("ddpm", None),
    }


@pytest.mark.parametrize(
    "axis, values, message",
    [
        ("T", [{"method": "ddim"}], "whose name must not be a setting"),
        ("sampler", [{"method": "ddim"}, "ddpm"], "every value of a bundle axis must be a mapping"),
        ("mixed", [{"T": 20, "method": "ddim"}], "all be read by training or all only by sampling"),
        ("sampler", [{"method": "ddpm", "sample.steps": 5}], "only meaningful with sample.method"),
        ("sampler", [{"stepz": 5}], "unknown key 'stepz'"),
    ],
)
def test_a_bundle_axis_that_cannot_work_is_refused(axis, values, message):
    with pytest.raises(ConfigError, match=message):
        plan(config_from_dict({**TINY, "grid": {axis: values}}))


@pytest.mark.parametrize(
    "axis, message",
    [
        ("data.image_size", "runs once for every run"),
        ("evaluate.reference_max_images", "runs once for every run"),
        ("report.title", "read by no training, sampling or evaluation stage"),
        ("data.workers", "cannot change a result"),
        ("sample.batch_size", "cannot change a result"),
    ],
)
def test_an_axis_that_cannot_vary_per_run_is_refused(axis, message):
    values = {"data.image_size": [16, 32], "evaluate.reference_max_images": [8, 16]}.get(
        axis, ["a", "b"] if axis == "report.title" else [1, 2]
    )
    cfg = config_from_dict({**TINY, "grid": {axis: values}})
    with pytest.raises(ConfigError, match=message) as e:
        plan(cfg)
    assert axis in str(e.value)


def test_settings_files_hold_exactly_what_each_stage_reads():
    files = {name: json.loads(text) for name, text in stages.all_settings(SYNTHETIC).items()}
    assert set(files) == {
        "preprocess",
        "inception_weights",
        "reference_stats",
        "train/T~20",
        "train/T~30",
        "progress/T~20",
        "progress/T~30",
        "sample/T~20/default",
        "sample/T~30/default",
        "evaluate/T~20/default",
        "evaluate/T~30/default",
        "summary",
        "report",
    }
    assert set(files["train/T~20"]["settings"]) == {"model", "diffusion", "train"}
    assert files["train/T~30"]["settings"]["diffusion"]["T"] == 30
    assert set(files["sample/T~20/default"]["settings"]) == {"sample"}
    # a variant's job knows which network it must be given (checked against its final.pt)
    assert files["sample/T~20/default"]["network"]["id"] == "T~20"
    assert files["evaluate/T~30/default"]["network"] != files["evaluate/T~20/default"]["network"]
    assert "network" not in files["train/T~20"]
    # so does the job that scores a network's snapshots; it reads none of sampling's settings
    assert files["progress/T~30"]["network"] == files["evaluate/T~30/default"]["network"]
    assert set(files["progress/T~30"]["settings"]) == {"progress", "evaluate"}
    assert "batch_size" not in files["sample/T~20/default"]["settings"]["sample"]
    assert "workers" not in files["preprocess"]["settings"]["data"]
    assert "report" not in files["summary"]["settings"]
    assert files["report"]["settings"]["grid"] == {"T": [20, 30]}
    for name, document in files.items():
        assert document["stage"] == name.split("/")[0] and len(document["code"]) == 16


def test_a_job_cannot_use_a_setting_its_stage_does_not_declare():
    cfg, document = stages.prepare("evaluate", SYNTHETIC, "T~20")
    assert cfg.evaluate.is_splits == 2
    assert cfg.evaluate.batch_size == 16, "tuning settings are passed, not fingerprinted"
    for use in (lambda: cfg.train.lr * 2, lambda: f"{cfg.diffusion.T}", lambda: bool(cfg.grid)):
        with pytest.raises(UndeclaredSettingError, match="does not declare"):
            use()


@pytest.mark.parametrize("cfg", [FLOWERS, SYNTHETIC], ids=["flowers102", "synthetic"])
def test_the_commands_both_tools_run_parse(cfg):
    """Every command the table makes (as Snakemake and DVC run it) is one the CLI accepts."""
    parser = build_parser()
    the_plan = plan(cfg)
    for stage in table(cfg).values():
        for instance in stages.instances(stage, cfg, the_plan):
            args = stages.command_args(stage, lambda t, i=instance: stages.fill(t, i) if i else t)
            argv = [stage.command, "--settings", stages.settings_path(cfg, stage, instance)]
            if stage.tunes:
                argv += ["--tune", ",".join(f"{k}=1" for k in stage.tunes)]
            parsed = parser.parse_args(argv + args)
            assert parsed.command == stage.command


def test_settings_files_must_belong_to_the_stage(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(stages.all_settings(SYNTHETIC)["train/T~20"])
    with pytest.raises(stages.SettingsError, match="settings of stage 'train'"):
        stages.read_settings(path, table(SYNTHETIC)["sample"])
    path.write_text("{not json")
    with pytest.raises(stages.SettingsError, match="unreadable"):
        stages.read_settings(path, table(SYNTHETIC)["train"])


def test_paths_with_spaces_reach_the_command_as_one_word(tmp_path):
    import shlex

    cfg = config_from_dict({**TINY, "results_dir": "my results"})
    stage = table(cfg)["train"]
    words = shlex.split(" ".join(stages.command_args(stage, lambda t: stages.fill(t, "T~20"))))
    assert words[-2:] == ["--out", "my results/runs/T~20"]
    plain = stages.command_args(table(SYNTHETIC)["train"], lambda t: stages.fill(t, "T~20"))
    assert plain[-1] == "results/runs/T~20", "plain paths stay unquoted"


def test_an_accepted_code_change_keeps_the_fingerprint_its_results_were_made_with(
    package, tmp_path
):
    cfg = config_from_dict({**TINY, "results_dir": str(tmp_path / "results"), "grid": {"T": [20]}})
    settings = tmp_path / "results/settings"
    ledger = tmp_path / fingerprints.ACCEPTED
    with pytest.raises(fingerprints.AcceptanceError, match="has not run"):
        stages.accept_code(cfg, ["train"], "why", ledger)
    made = stages.all_settings(cfg, tmp_path)
    stages.write_all_settings(cfg, settings)
    assert stages.accept_code(cfg, ["train"], "why", ledger)[0].endswith("nothing to accept")
    assert not ledger.exists()

    _append(package / "diffusion/unet.py", "\n_EDITED = True\n")
    moved = stages.all_settings(cfg, tmp_path)
    assert {n for n in made if made[n] != moved[n]} == {
        "train/T~20",
        "sample/T~20/default",
        "progress/T~20",
    }
    with pytest.raises(fingerprints.AcceptanceError, match="--reason"):
        stages.accept_code(cfg, ["train"], "  ", ledger)
    lines = stages.accept_code(cfg, ["train"], "renamed a variable", ledger)
    assert lines[0].endswith("its results stand")
    assert (
        lines[1] == "the code of progress, sample changed too: they rerun unless accepted as well"
    )
    (entry,) = fingerprints.read_accepted(ledger)
    recorded = json.loads(made["train/T~20"])["code"]
    assert entry["stage"] == "train" and entry["from"] == recorded
    assert entry["to"] == fingerprints.fingerprint(table(cfg)["train"].code) != recorded
    assert entry["reason"] == "renamed a variable" and "@" in entry["by"] and entry["at"]
    now = stages.all_settings(cfg, tmp_path)
    assert now["train/T~20"] == made["train/T~20"]
    assert now["sample/T~20/default"] == moved["sample/T~20/default"]

    # A further edit of the same code is a change of its own: it is not covered.
    _append(package / "diffusion/unet.py", "\n_AGAIN = True\n")
    assert stages.all_settings(cfg, tmp_path)["train/T~20"] != made["train/T~20"]


def test_instances_made_by_different_code_cannot_be_accepted_as_one(tmp_path):
    cfg = config_from_dict(
        {**TINY, "results_dir": str(tmp_path / "results"), "grid": {"T": [20, 30]}}
    )
    settings = tmp_path / "results/settings"
    stages.write_all_settings(cfg, settings)
    path = settings / "train/T~30.json"
    path.write_text(path.read_text().replace('"code": "', '"code": "0'))
    with pytest.raises(fingerprints.AcceptanceError, match="2 versions of its code"):
        stages.accept_code(cfg, ["train"], "why", tmp_path / "accepted.yaml")


def test_the_dinov2_stages_and_their_files_exist_only_where_fd_dinov2_is_listed():
    """FD_DINOv2's two stages, and evaluate's inputs and options for their files, are in the
    table where evaluate.metrics lists fd_dinov2 (the default) and nowhere else; switching it
    reruns evaluate and what follows, never the Inception reference or FID over training."""
    on, off = FLOWERS, SYNTHETIC
    assert "fd_dinov2" in on.evaluate.metrics and "fd_dinov2" not in off.evaluate.metrics
    dinov2_stages = {"dinov2_weights", "dinov2_reference"}
    assert dinov2_stages <= set(table(on)) and not dinov2_stages & set(table(off))
    evaluate_on, evaluate_off = table(on)["evaluate"], table(off)["evaluate"]
    assert evaluate_on.deps["dinov2_weights"] == on.evaluate.dinov2_weights
    assert evaluate_on.deps["dinov2_reference"] == table(on)["dinov2_reference"].outs["reference"]
    assert dict(evaluate_on.args)["--dinov2-weights"] == on.evaluate.dinov2_weights
    assert not any("dinov2" in name for name in evaluate_off.deps)
    assert not any("dinov2" in flag for flag, _ in evaluate_off.args)
    with pytest.raises(ConfigError, match="only when evaluate.metrics lists 'fd_dinov2'"):
        stages.get_stage("dinov2_reference", off)
    assert stages.reruns("evaluate.metrics") == ["evaluate", "summary", "report"]
    assert stages.reruns("evaluate.dinov2_weights") == [
        "dinov2_weights",
        "dinov2_reference",
        "evaluate",
        "summary",
        "report",
    ]
