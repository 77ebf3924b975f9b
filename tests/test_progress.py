"""FID over training: the progress stage scores each snapshot and the final weights."""

import json
import math
import shutil

import pytest
import yaml
from conftest import TINY

from ddpm.cli import main
from ddpm.config import config_from_dict
from ddpm.data import preprocess
from ddpm.metrics import evaluate, make_test_inception, reference_stats
from ddpm.sampling import generate
from ddpm.stages import prepare
from ddpm.train import train

NETWORK = "T~20"
CONFIG = {
    **TINY,
    "grid": {"T": [20]},
    "train": {**TINY["train"], "steps": 6, "snapshot_every": 3},
    "progress": {"steps": 3, "num_images": 10, "fid_halves": 4, "batch_size": 4, "device": "cpu"},
}


def _train(root, config: dict, out):
    cfg = config_from_dict(config)
    job_cfg, document = prepare("train", cfg, NETWORK)
    train(job_cfg, NETWORK, root / "data.npy", out, identity=document, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    cfg = config_from_dict(CONFIG)
    preprocess(cfg.data, root / "data.npy", progress=False)
    _train(root, CONFIG, root / "run")
    make_test_inception(root / "weights.pth")
    reference_stats(
        prepare("reference_stats", cfg)[0].evaluate,
        root / "data.npy",
        root / "weights.pth",
        root / "reference.pt",
        progress=False,
    )
    return root


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
    generate(sample_cfg, NETWORK, trained / "run/final.pt", tmp_path / "v", progress=False)
    eval_cfg = prepare("evaluate", cfg, NETWORK)[0].evaluate
    m = evaluate(
        eval_cfg,
        tmp_path / "v/samples.npz",
        trained / "reference.pt",
        trained / "weights.pth",
        tmp_path / "v",
        progress=False,
    )
    assert points[-1]["fid"] == pytest.approx(m["fid"], rel=1e-6)


def test_a_snapshot_of_another_training_is_refused(trained, tmp_path, capsys):
    other = {**CONFIG, "train": {**CONFIG["train"], "lr": 5.0e-4}}
    _train(trained, other, tmp_path / "other")
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
    _train(trained, config, tmp_path / "run")
    (trained / "none.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "progress.json"
    cmd = progress_cmd(trained, tmp_path / "run", out)
    cmd[2] = str(trained / "none.yaml")
    assert main(cmd) == 0
    assert json.loads(out.read_text())["points"] == []
