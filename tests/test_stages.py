"""The stage table: what each stage reads, networks and sampler variants, settings files, and
the commands both tools run."""

import json
from pathlib import Path

import pytest
from conftest import TINY

from ddpm import stages
from ddpm.cli import build_parser
from ddpm.config import TUNING, ConfigError, UndeclaredSettingError, config_from_dict, leaf_keys
from ddpm.stages import plan, read_keys, table

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = config_from_dict({"model": {"preset": "tiny"}})
SYNTHETIC = config_from_dict(TINY)


def test_every_setting_is_read_by_some_stage_or_is_tuning():
    read = {key for stage in table(FLOWERS).values() for key in read_keys(stage)}
    for key in leaf_keys():
        assert key in read or key in TUNING or key in stages.LOCATIONS, key


# What each stage's code is, stated independently of the import scan that computes it.
SAMPLING = {
    "sampling.py",
    "model.py",
    "unet.py",
    "presets.py",
    "diffusion.py",
    "schedules.py",
    "devices.py",
    "images.py",
}
EXPECTED_CODE = {
    "download": {"data.py"},
    "preprocess": {"data.py", "dataset.py"},
    "inception_weights": {"metrics.py", "features.py", "data.py"},
    "reference_stats": {"metrics.py", "features.py", "dataset.py", "devices.py"},
    "train": {
        "train.py",
        "model.py",
        "unet.py",
        "presets.py",
        "diffusion.py",
        "schedules.py",
        "ema.py",
        "dataset.py",
        "devices.py",
        "distributed.py",
    },
    "sample": SAMPLING,
    "progress": SAMPLING | {"progress.py", "metrics.py", "features.py"},
    "evaluate": {"metrics.py", "features.py", "devices.py"},
    "summary": {"report.py", "schedules.py", "verdict.py"},
    "report": {
        "report.py",
        "verdict.py",
        "schedules.py",
        "images.py",
        "dataset.py",  # imported inside build_report: the scan sees function-level imports
        "templates/report.html.j2",
    },
}


@pytest.mark.parametrize("name", [s.name for s in table(FLOWERS).values()])
def test_each_stage_fingerprints_the_code_it_runs(name):
    """A stage's code is its entry's import closure, without plumbing and declared side code."""
    stage = table(FLOWERS)[name]
    assert set(stage.code) == EXPECTED_CODE[name]
    assert not set(stage.code) & set(stages.PLUMBING)
    for path in stages.code_files(stage):
        assert path.is_file(), path


def test_the_settings_step_fingerprints_the_code_that_writes_settings_files():
    code = set(stages.settings_code())
    assert {"config.py", "stages.py", "dvcfile.py", "layout.py", "presets.py"} <= code
    assert "train.py" not in code and "metrics.py" not in code


def test_a_code_change_changes_exactly_the_fingerprints_of_the_stages_that_run_it(
    tmp_path, monkeypatch
):
    package = tmp_path / "ddpm"
    package.mkdir()
    for path in stages.PACKAGE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (package / path.relative_to(stages.PACKAGE)).parent.mkdir(exist_ok=True)
            (package / path.relative_to(stages.PACKAGE)).write_bytes(path.read_bytes())
    monkeypatch.setattr(stages, "PACKAGE", package)
    before = {s.name: stages.code_fingerprint(s) for s in table(FLOWERS).values()}
    with open(package / "unet.py", "a") as f:
        f.write("# edited\n")
    after = {s.name: stages.code_fingerprint(s) for s in table(FLOWERS).values()}
    assert {n for n in before if before[n] != after[n]} == {"train", "sample", "progress"}
    # images.py is training's side code (its preview grids): sampling (also in progress) and
    # the report rerun
    with open(package / "images.py", "a") as f:
        f.write("# edited\n")
    again = {s.name: stages.code_fingerprint(s) for s in table(FLOWERS).values()}
    assert {n for n in after if after[n] != again[n]} == {"sample", "progress", "report"}


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
