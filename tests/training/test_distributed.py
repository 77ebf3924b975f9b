"""One network trained by several processes (train.gpus: 2, on the CPU with gloo): the same
experiment as one process, a dead process ends the job instead of hanging it, a SIGTERM
resumes exactly. (The pipeline runs such networks in test_workflow.py's keep-going sweep.)"""

import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
import yaml
from conftest import ENV
from test_train import RUN, run_training, train_cmd, write_config

from ddpm.data.artefacts import read_checkpoint, read_final, read_log
from ddpm.data.preprocess import preprocess
from ddpm.pipeline.config import ConfigError, config_from_dict, load_config

pytestmark = pytest.mark.slow

TWO = ("--set", "train.gpus=2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny config (dropout 0: each process would draw its own masks) and its dataset."""
    root = tmp_path_factory.mktemp("distributed")
    config = write_config(root / "c.yaml")
    data = root / "data.npy"
    preprocess(load_config(config).data, data, bars=False)
    return config, data


def train(config, data, out, *extra, threads=1, check=True):
    env = {**ENV, "OMP_NUM_THREADS": str(threads)}
    command = [*train_cmd(config, data, out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=check)


def distance(a: dict, b: dict) -> float:
    """|a - b| / |a| over all weights."""
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a)
    den = sum(float(a[k].double().square().sum()) for k in a)
    return (num / den) ** 0.5


def one_process(config, data, out, threads: int, overrides=None):
    """A 1-process training in this process, on `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_training(config, data, out, overrides)
    finally:
        torch.set_num_threads(before)
    return read_final(out / "final.pt")["ema"]


def test_two_processes_train_the_one_process_experiment_and_a_sigterm_resumes_exactly(
    setup, tmp_path
):
    """1. The final EMA weights of a 2-process run are as far from a 1-process run's as two
    1-process runs that differ only in their thread count (the same sums in another order;
    measured 2.1e-4 and 2.0e-4 after 40 steps at lr 1e-3): the allowance is 3x that floor. A
    different seed, another experiment, lands far outside it.
    2. SIGTERM to the job (Snakemake's or SLURM's cancel) reaches both processes, which stop
    at the same step and write one checkpoint; the same command then resumes, and the weights
    and log equal the uninterrupted 2-process run's exactly (the same sums in the same order)."""
    config, data = setup
    two = tmp_path / "two"
    train(config, data, two, *TWO)
    weights = {
        "one": one_process(config, data, tmp_path / "one", 1),
        "threads": one_process(config, data, tmp_path / "threads", 2),
        "seed": one_process(config, data, tmp_path / "seed", 1, {"train.seed": 1}),
        "two": read_final(two / "final.pt")["ema"],
    }
    floor = distance(weights["one"], weights["threads"])
    assert floor > 0, "the thread count changed no sum: no floor to compare with"
    assert distance(weights["one"], weights["two"]) <= 3 * floor
    assert distance(weights["one"], weights["seed"]) > 100 * floor
    # The log is the whole batch's, in both: the same steps and losses up to that order.
    one_log, two_log = read_log(tmp_path / "one/train_log.csv"), read_log(two / "train_log.csv")
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log]
    for a, b in zip(one_log, two_log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    summary = yaml.safe_load((two / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 40

    resumed = tmp_path / "resumed"
    _interrupt_then_rerun(config, data, resumed)
    a, b = read_final(resumed / "final.pt")["ema"], weights["two"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("images_per_s", "elapsed_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(read_log(resumed / "train_log.csv")) == strip(two_log)


def _interrupt_then_rerun(config, data, out) -> None:
    """SIGTERM once the first checkpoint is written, then the same command again."""
    launcher = _start(config, data, out, steps=40)
    try:
        _wait_for(out / "checkpoint.pt", launcher)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    stopped_at = read_checkpoint(out / "checkpoint.pt")["step"]
    if launcher.returncode == 0:
        pytest.fail("the training ended before the signal: no interrupt was tested")
    assert launcher.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert "SIGTERM" in err.decode().strip().splitlines()[-1]
    # The first process says where both stopped (once, not once per process); the launcher
    # then says how to go on.
    said = [line for line in err.decode().splitlines() if line.startswith("error: ")]
    assert len(said) == 2 and f": SIGTERM at step {stopped_at}; " in said[0], said
    assert 5 <= stopped_at < 40 and not (out / "final.pt").exists()
    rerun = train(config, data, out, *TWO)
    assert f"resuming {RUN} from step {stopped_at}" in rerun.stdout


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """LOCAL_RANK -> pid of the training processes that `launcher` started."""
    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("LOCAL_RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and "ddpm" in " ".join(child.cmdline()):
            ranks[int(rank)] = child.pid
    return ranks


def _start(config, data, out, steps: int) -> subprocess.Popen:
    command = [*train_cmd(config, data, out), *TWO, "--set", f"train.steps={steps}"]
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_a_killed_process_ends_the_job_with_a_clear_error_and_no_hang(setup, tmp_path):
    config, data = setup
    out = tmp_path / "run"
    launcher = _start(config, data, out, steps=100_000)
    try:
        _wait_for(out / "checkpoint.pt", launcher)
        ranks = _rank_pids(launcher)
        assert set(ranks) == {0, 1}
        os.kill(ranks[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=90)  # gloo sees the closed connection at once
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("error: data-parallel training stopped: a process of the 2 "), last
    assert "Signal 9 (SIGKILL) received by PID" in err.decode()  # torchrun's root cause
    assert not psutil.pid_exists(ranks[0]), "the surviving process was left running"
    assert read_checkpoint(out / "checkpoint.pt")["step"] >= 5  # kept


def test_a_batch_that_the_processes_cannot_share_evenly_is_refused():
    with pytest.raises(ConfigError, match="train.batch_size: 10 images cannot be split evenly"):
        config_from_dict({"train": {"batch_size": 10, "gpus": 4}})
