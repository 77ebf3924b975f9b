"""FID over training: the progress stage scores each snapshot and the final weights."""

import json
import math
import shutil

import pytest
import yaml
from conftest import SCORED_CONFIG, SCORED_NETWORK, train_network

from ddpm.cli import main
from ddpm.evaluation.evaluate import evaluate
from ddpm.pipeline.config import config_from_dict
from ddpm.pipeline.stages import prepare
from ddpm.sampling.sample import generate

NETWORK, CONFIG = SCORED_NETWORK, SCORED_CONFIG


@pytest.fixture
def trained(scored):
    return scored


def progress_cmd(root, run, out):
    return [
        "progress",
        "--config",
        str(root / "config.yaml"),
        "--run",
        NETWORK,
        "--snapshots",
        str(run / "snapshots.json"),
        "--ckpt",
        str(run / "final.pt"),
        "--reference",
        str(root / "reference.pt"),
        "--weights",
        str(root / "weights.pth"),
        "--out",
        str(out),
    ]


def test_each_snapshot_and_the_final_weights_are_scored_like_the_evaluate_stage(trained, tmp_path):
    """Two points (the snapshot at step 3, final.pt at 6); the last one is the FID that the
    sample and evaluate stages give for the same sampler, images and seeds."""
    out = tmp_path / "progress.json"
    assert main(progress_cmd(trained, trained / "run", out)) == 0
    document = json.loads(out.read_text())
    points = document["points"]
    assert [(p["step"], p["images_seen"], p["n_images"]) for p in points] == [
        (3, 24, 10),
        (6, 48, 10),
    ]
    assert all(math.isfinite(p["fid"]) and p["fid_std"] > 0 for p in points)
    assert points[0]["fid"] != points[1]["fid"]
    assert document["network"] == NETWORK and document["sampler"] == "DDIM, 3 steps, eta 0"

    same = {
        **CONFIG,
        "sample": {**CONFIG["sample"], "method": "ddim", "steps": 3, "num_images": 10, "seed": 0},
    }
    cfg = config_from_dict(same)
    sample_cfg, _ = prepare("sample", cfg, NETWORK)
    generate(sample_cfg, NETWORK, trained / "run/final.pt", tmp_path / "v", bars=False)
    eval_cfg = prepare("evaluate", cfg, NETWORK)[0].evaluate
    m = evaluate(
        eval_cfg,
        tmp_path / "v/samples.npz",
        trained / "reference.pt",
        trained / "weights.pth",
        tmp_path / "v",
        bars=False,
    )
    assert points[-1]["fid"] == pytest.approx(m["fid"], rel=1e-6)


def test_a_snapshot_of_another_training_is_refused(trained, tmp_path, capsys):
    other = {**CONFIG, "train": {**CONFIG["train"], "lr": 5.0e-4}}
    train_network(trained, other, NETWORK, tmp_path / "other")
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    shutil.copy(tmp_path / "other/snapshots/step_0000003.pt", run / "snapshots/step_0000003.pt")
    out = tmp_path / "progress.json"
    assert main(progress_cmd(trained, run, out)) == 2  # a bad input, as for sample
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_0000003.pt was trained with other training settings" in err[0]
    assert not out.exists()


def test_without_snapshots_nothing_is_sampled(trained, tmp_path):
    config = {**CONFIG, "train": {**CONFIG["train"], "snapshot_every": 0}}
    train_network(trained, config, NETWORK, tmp_path / "run")
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "progress.json"
    cmd = progress_cmd(trained, tmp_path / "run", out)
    cmd[2] = str(tmp_path / "none.yaml")
    assert main(cmd) == 0
    assert json.loads(out.read_text())["points"] == []
