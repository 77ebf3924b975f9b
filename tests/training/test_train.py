import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from ddpm.data.artefacts import TIMING_FIELDS, read_checkpoint, read_final, read_log
from ddpm.data.preprocess import preprocess
from ddpm.diffusion.process import GaussianDiffusion
from ddpm.pipeline.config import load_config
from ddpm.pipeline.stages import BY_NAME, NET, prepare
from ddpm.sampling.sample import generate
from ddpm.training.train import TrainingError, train
from ddpm.training.view import TrainingView

RUN = "T~50"


def write_config(path, **train_overrides):
    """The shared tiny config, with one network of T = 50 trained a little longer."""
    raw = {
        **TINY,
        "grid": {"T": [50]},
        "data": {**TINY["data"], "synthetic_count": 128},
        "train": {
            **TINY["train"],
            "steps": 40,
            "warmup_steps": 5,
            "lr": 1.0e-3,
            "checkpoint_every": 5,
            "log_every": 5,
            "ema_decay": 0.99,
            "snapshot_every": 0,  # the snapshot test asks for them
            **train_overrides,
        },
        "sample": {
            **TINY["sample"],
            "steps": 10,
            "num_images": 12,
            "batch_size": 5,
            "trajectory_points": 4,
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def setup(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    data = tmp_path / "data.npy"
    preprocess(load_config(config).data, data, bars=False)
    return config, data


def job(stage, config, overrides=None, run=RUN):
    """A stage's config and settings document from a config file, as the pipeline makes them."""
    return prepare(stage, load_config(config, overrides), run)


def run_training(config, data, out, overrides=None, **kwargs):
    cfg, document = job("train", config, overrides)
    return train(cfg, RUN, data, out, identity=document, bars=False, view=TrainingView, **kwargs)


def cli(*args):
    return [sys.executable, "-m", "ddpm", *map(str, args)]


def train_cmd(config, data, out):
    return cli("train", "--config", config, "--run", RUN, "--data", data, "--out", out)


def ema_weights(run_dir):
    return read_final(run_dir / "final.pt")["ema"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tiny_run_completes_and_learns(setup, tmp_path):
    config, data = setup
    overrides = {"train.steps": 60, "train.preview_every": 30}
    summary = run_training(config, data, tmp_path / "run", overrides)
    log = read_log(tmp_path / "run/train_log.csv")
    assert [r["step"] for r in log] == list(range(5, 61, 5))
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert summary["steps"] == 60 and summary["images_seen"] == 480
    assert summary["parameters"] > 0 and summary["images_per_s"] > 0
    assert (tmp_path / "run/previews/step_0000060.png").exists()
    state = read_checkpoint(tmp_path / "run/checkpoint.pt")
    assert state["step"] == 60 and state["settings"]["diffusion"]["T"] == 50
    assert [r["step"] for r in state["log"]["rows"]] == list(range(5, 61, 5))


def wait_for(path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(setup, tmp_path):
    config, data = setup
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    r = subprocess.run(train_cmd(config, data, full), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # stderr is not a terminal (as a pipeline job's log file is not): the bar prints lines
    assert "\r" not in r.stderr and any("100%" in line for line in r.stderr.splitlines())

    proc = subprocess.Popen(
        train_cmd(config, data, crashed), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(crashed / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(crashed / "checkpoint.pt")["step"]
    assert 0 < killed_at < 40 and not (crashed / "final.pt").exists()

    r = subprocess.run(train_cmd(config, data, crashed), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming {RUN} from step {killed_at}" in r.stdout
    assert_same_weights(ema_weights(full), ema_weights(crashed))
    assert_same_weights(
        read_checkpoint(full / "checkpoint.pt")["model"],
        read_checkpoint(crashed / "checkpoint.pt")["model"],
    )
    steps = [r["step"] for r in read_log(crashed / "train_log.csv")]
    assert steps == list(range(5, 41, 5)), "the log has each step once after a resume"
    # and so has the live view: the rows logged after the last checkpoint are shown once
    assert_shows(live_view(crashed / "tensorboard")[0], read_log(crashed / "train_log.csv"))


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_resumes(setup, tmp_path):
    """SIGTERM between log rows: the checkpoint carries the losses since the last row, so the
    resumed run's log and summary equal an uninterrupted run's (apart from timing columns)."""
    config, data = setup
    settings = {"checkpoint_every": 1000, "preview_every": 10}  # only SIGTERM checkpoints
    config = write_config(config, steps=400, **settings)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(config, data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(out / "previews/step_0000010.png", proc)
    time.sleep(0.5)
    # The live view while it trains: TensorBoard's files hold the log's rows and the previews.
    assert proc.poll() is None
    scalars, previews = live_view(out / "tensorboard")
    shown = set(scalars["loss/total"])  # the rows written before the view was read
    rows = [r for r in read_log(out / "train_log.csv") if r["step"] in shown]
    assert len(rows) >= 2 and [r["step"] for r in rows] == sorted(shown) and 10 in previews
    assert_shows(scalars, rows)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "Run the same command again to resume" in err
    step = read_checkpoint(out / "checkpoint.pt")["step"]
    assert 0 < step < 400
    total = step + 7 if step % 5 else step + 5  # an interruption between rows, then some more
    write_config(config, steps=total, **settings)  # more steps may be asked for
    r = subprocess.run(train_cmd(config, data, out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"from step {step}" in r.stdout
    assert read_final(out / "final.pt")["step"] == total

    straight = tmp_path / "straight"
    assert subprocess.run(train_cmd(config, data, straight), capture_output=True).returncode == 0
    assert_same_weights(ema_weights(out), ema_weights(straight))

    def untimed(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]

    resumed_log = read_log(out / "train_log.csv")
    assert untimed(resumed_log) == untimed(read_log(straight / "train_log.csv"))
    assert [r["step"] for r in resumed_log] == [*range(5, total + 1, 5)] + (
        [total] if total % 5 else []
    )
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in (out, straight)]
    assert summaries[0]["final_loss"] == summaries[1]["final_loss"]
    # The view of the resumed run shows each step once: what the first run logged after its
    # checkpoint is dropped (the log is the uninterrupted run's, as checked above).
    scalars, previews = live_view(out / "tensorboard")
    assert_shows(scalars, resumed_log)
    assert sorted(previews) == [*range(10, total + 1, 10)]


def live_view(folder):
    """What TensorBoard shows of one training: {tag: {step: value}}, {step: image size}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddpm.training.view import PREVIEW_TAG

    view = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    view.Reload()
    scalars = {tag: {e.step: e.value for e in view.Scalars(tag)} for tag in view.Tags()["scalars"]}
    images = view.Images(PREVIEW_TAG) if PREVIEW_TAG in view.Tags()["images"] else []
    steps = [e.step for e in images]
    assert len(steps) == len(set(steps)), "each preview once"
    return scalars, {e.step: (e.width, e.height) for e in images}


def assert_shows(scalars, rows):
    """Every logged column at every logged step, and nothing else (float32 in the events)."""
    from ddpm.training.view import TAGS

    assert set(scalars) == set(TAGS.values())
    for key, tag in TAGS.items():
        assert scalars[tag] == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in rows}, key


def test_damaged_checkpoint_and_changed_settings_give_clear_errors(setup, tmp_path):
    config, data = setup
    out = tmp_path / "run"
    run_training(config, data, out, {"train.steps": 5})
    good = (out / "checkpoint.pt").read_bytes()

    changed = {"train.steps": 10, "train.lr": 5.0e-4, "diffusion.schedule": "cosine"}
    with pytest.raises(TrainingError) as e:
        run_training(config, data, out, changed)
    assert "diffusion.schedule changed; train.lr changed" in str(e.value)
    assert "--restart-if-changed" in str(e.value), "the refusal names the way out"
    assert (out / "checkpoint.pt").read_bytes() == good, "a refused checkpoint is left alone"

    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    r = subprocess.run(train_cmd(config, data, out), capture_output=True, text=True)
    assert r.returncode == 2
    assert "truncated or corrupted" in r.stderr and "Traceback" not in r.stderr
    assert "delete it" in r.stderr


def test_a_changed_setting_sets_the_checkpoint_aside_and_trains_from_scratch(setup, tmp_path):
    config, data = setup
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    run_training(config, data, out, {"train.steps": 10})
    old = (out / "checkpoint.pt").read_bytes()
    changed = {"train.steps": 10, "train.lr": 5.0e-4}
    run_training(config, data, out, changed, restart_if_changed=True)
    assert (out / "checkpoint.stale.pt").read_bytes() == old, "set aside, not deleted"
    run_training(config, data, fresh, changed)
    assert_same_weights(ema_weights(out), ema_weights(fresh))
    assert [r["loss"] for r in read_log(out / "train_log.csv")] == [
        r["loss"] for r in read_log(fresh / "train_log.csv")
    ]
    # The live view shows the new training alone: the old one's event files are gone.
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert_shows(live_view(out / "tensorboard")[0], read_log(out / "train_log.csv"))


def test_more_steps_resume_and_a_finished_run_finishes_again(setup, tmp_path):
    """Asking for more steps continues the same run; a checkpoint already at the last step
    (a rerun after final.pt was lost) writes final.pt, the summary and the full log again."""
    config, data = setup
    out, straight = tmp_path / "run", tmp_path / "straight"
    run_training(config, data, out, {"train.steps": 10})
    first = run_training(config, data, out, {"train.steps": 20})
    run_training(config, data, straight, {"train.steps": 20})
    assert_same_weights(ema_weights(out), ema_weights(straight))
    (out / "final.pt").unlink()
    (out / "train_log.csv").unlink()
    again = run_training(config, data, out, {"train.steps": 20})
    assert_same_weights(ema_weights(out), ema_weights(straight))
    assert [r["step"] for r in read_log(out / "train_log.csv")] == list(range(5, 21, 5))
    assert again["final_loss"] == first["final_loss"] and again["steps"] == 20


def test_snapshots_are_the_ema_weights_at_their_steps_and_survive_a_resume(setup, tmp_path):
    """Every 5 steps a snapshot in final.pt's format: 10 steps then 10 more give the snapshots
    of 20 straight (the one at step 10 is made on resuming: the first run ended there with
    final.pt); a restart with other settings replaces the old ones."""
    config, data = setup
    every = {"train.snapshot_every": 5}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(config, data, straight, {"train.steps": 20, **every})
    index = json.loads((straight / "snapshots.json").read_text())
    assert index == {
        "network": RUN,
        "snapshots": [
            {"step": k, "images_seen": 8 * k, "file": f"step_{k:07d}.pt"} for k in (5, 10, 15)
        ],
    }
    run_training(config, data, resumed, {"train.steps": 10, **every})
    assert [
        e["step"] for e in json.loads((resumed / "snapshots.json").read_text())["snapshots"]
    ] == [5]
    assert_same_weights(
        ema_weights(resumed), read_final(straight / "snapshots/step_0000010.pt")["ema"]
    )
    run_training(config, data, resumed, {"train.steps": 20, **every})
    assert (resumed / "snapshots.json").read_text() == (straight / "snapshots.json").read_text()
    for k in (5, 10, 15):
        a, b = (read_final(d / f"snapshots/step_{k:07d}.pt") for d in (straight, resumed))
        assert a["step"] == b["step"] == k and a["images_seen"] == 8 * k
        assert_same_weights(a["ema"], b["ema"])

    changed = {"train.steps": 10, "train.lr": 5.0e-4, **every}
    run_training(config, data, resumed, changed, restart_if_changed=True)
    assert sorted(p.name for p in (resumed / "snapshots").iterdir()) == ["step_0000005.pt"]
    run_training(config, data, tmp_path / "fresh", changed)
    assert_same_weights(
        read_final(resumed / "snapshots/step_0000005.pt")["ema"],
        read_final(tmp_path / "fresh/snapshots/step_0000005.pt")["ema"],
    )


@pytest.mark.parametrize("every", [None, 2], ids=["snapshots off (the default)", "snapshots on"])
def test_every_output_the_stage_table_declares_exists_after_training(setup, tmp_path, every):
    """DVC checks every declared output and persisted path of a stage when it runs or commits
    it, so each must exist whatever the settings: the snapshots folder too, empty without
    snapshots (`dvc repro` failed on it with the package default, snapshot_every 0)."""
    config, data = setup
    overrides = {"train.steps": 4}
    if every is None:
        config.write_text(config.read_text().replace("snapshot_every: 0", ""))
        assert load_config(config).train.snapshot_every == 0, "the package default"
    else:
        overrides["train.snapshot_every"] = every
    run_training(config, data, tmp_path / "run", overrides)
    stage = BY_NAME["train"]
    declared = [*stage.outs.values(), *stage.persist.values()]
    relative = [Path(t).relative_to(str(NET.folder)) for t in declared]
    missing = [str(p) for p in relative if not (tmp_path / "run" / p).exists()]
    assert not missing, f"declared but not written: {missing}"
    made = sorted(p.name for p in (tmp_path / "run/snapshots").iterdir())
    assert made == ([] if every is None else ["step_0000002.pt"])


def test_fewer_steps_than_the_checkpoint_is_a_different_training(setup, tmp_path):
    config, data = setup
    out = tmp_path / "run"
    run_training(config, data, out, {"train.steps": 10})
    with pytest.raises(TrainingError, match="beyond the 5 steps now asked for"):
        run_training(config, data, out, {"train.steps": 5})


def test_temporaries_of_a_killed_writer_are_removed(setup, tmp_path):
    config, data = setup
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen(["true"])  # a process that has surely exited
    proc.wait()
    stale = out / f".checkpoint.pt.tmp{proc.pid}"
    stale.write_bytes(b"half a checkpoint")
    mine = out / f".notes.txt.tmp{os.getpid()}"  # a live process's temporary stays
    mine.write_bytes(b"in progress")
    run_training(config, data, out, {"train.steps": 5})
    assert not stale.exists() and mine.exists()


def test_nan_loss_stops_naming_the_step(setup, tmp_path, monkeypatch):
    config, data = setup
    original = GaussianDiffusion.training_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 13:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_loss", poisoned)
    with pytest.raises(TrainingError, match="at step 13"):
        run_training(config, data, tmp_path / "run")
    assert read_checkpoint(tmp_path / "run/checkpoint.pt")["step"] == 10  # last good one kept


def test_samples_are_uint8_reproducible_and_ddim_uses_fewer_evaluations(setup, tmp_path):
    config, data = setup
    run_training(config, data, tmp_path / "run", {"train.steps": 5})
    ckpt = tmp_path / "run/final.pt"
    cfg, _ = job("sample", config)
    a = generate(cfg, RUN, ckpt, tmp_path / "a", bars=False)
    generate(cfg, RUN, ckpt, tmp_path / "b", bars=False)
    samples = np.load(tmp_path / "a/samples.npz")["images"]
    assert samples.dtype == np.uint8 and samples.shape == (12, 3, 16, 16)
    np.testing.assert_array_equal(samples, np.load(tmp_path / "b/samples.npz")["images"])
    assert a["nfe_per_image"] == 10
    assert a["trajectory_t"] == [49, 27, 0, -1]  # 4 columns: x_T .. x_0, then the sample
    ddpm_cfg, _ = job("sample", config, {"sample.method": "ddpm", "sample.steps": None})
    b = generate(ddpm_cfg, RUN, ckpt, tmp_path / "c", bars=False)
    assert b["nfe_per_image"] == 50 > a["nfe_per_image"]
    for name in ("grid.png", "trajectory.png", "sample_summary.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    assert json.loads((tmp_path / "a/sample_summary.json").read_text())["num_images"] == 12
    # DPM-Solver++(3M) on trailing timesteps, through the same stage
    dpm = {"sample.method": "dpmpp-3m", "sample.steps": 4, "sample.spacing": "trailing"}
    dpm_cfg, _ = job("sample", config, dpm)
    c = generate(dpm_cfg, RUN, ckpt, tmp_path / "d", bars=False)
    assert (c["method"], c["spacing"], c["nfe_per_image"]) == ("dpmpp-3m", "trailing", 4)
    assert c["trajectory_t"] == [49, 24, 11, -1]  # of 49, 37, 24, 11 (trailing)
    dpm_samples = np.load(tmp_path / "d/samples.npz")["images"]
    assert dpm_samples.shape == samples.shape and (dpm_samples != samples).any()


def test_sampling_reads_only_sample_settings(setup, tmp_path):
    """The network and its diffusion come from final.pt: the sample stage's config holds no
    training settings at all, and using one would raise instead of silently taking a default."""
    from ddpm.pipeline.config import UndeclaredSettingError

    config, data = setup
    cfg, document = job("sample", config)
    assert set(document["settings"]) == {"sample"}
    with pytest.raises(UndeclaredSettingError, match="diffusion.T"):
        cfg.diffusion.T + 1  # noqa: B018


@pytest.mark.slow
def test_compiled_training_and_sampling_match_the_plain_ones(setup, tmp_path, monkeypatch):
    """torch.compile (inductor, on CPU here) changes how the network runs, not what it
    computes; each stage compiles its network once (the warm-up's inputs pass every guard of
    the real calls); and a checkpoint written compiled resumes uncompiled (another machine)."""
    config, data = setup
    # Each stage is its own process; here they share one, so dynamo forgets between them.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    # One resolution level: inductor generates the same kinds of kernels as for three, in half
    # the time. Sampling reads the network from final.pt.
    one_level = {"model.channel_mults": [1]}
    logs, summaries = {}, {}
    for compiled in (False, True):
        out = tmp_path / f"compiled-{compiled}"
        summaries[compiled] = run_training(
            config, data, out, {"train.steps": 10, "train.compile": compiled, **one_level}
        )
        logs[compiled] = read_log(out / "train_log.csv")
    assert summaries[False]["compiled"] is False and summaries[False]["compile_s"] is None
    assert summaries[True]["compiled"] is True and summaries[True]["compile_s"] > 0
    for plain, fast in zip(logs[False], logs[True], strict=True):
        assert fast["step"] == plain["step"]
        assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-4)

    resumed = run_training(
        config,
        data,
        tmp_path / "compiled-True",
        {"train.steps": 15, "train.compile": False, **one_level},
    )
    assert resumed["steps"] == 15 and resumed["compiled"] is False
    assert [r["step"] for r in read_log(tmp_path / "compiled-True/train_log.csv")] == [5, 10, 15]

    ckpt = tmp_path / "compiled-False/final.pt"
    images = {}
    torch._dynamo.reset()
    for compiled in (False, True):
        # 12 images in chains of 5: the compiled network runs the last one at 5 too
        cfg, _ = job("sample", config, {"sample.compile": compiled})
        assert (cfg.sample.num_images, cfg.sample.batch_size) == (12, 5)
        summary = generate(cfg, RUN, ckpt, tmp_path / f"samples-{compiled}", bars=False)
        assert summary["compiled"] is compiled
        images[compiled] = np.load(tmp_path / f"samples-{compiled}/samples.npz")["images"]
    difference = np.abs(images[True].astype(int) - images[False].astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01  # float rounding, at most
