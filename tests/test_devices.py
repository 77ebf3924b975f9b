"""GPU claims: one ddpm job per physical GPU, named by the card, not by how a job numbers it."""

import os
import subprocess
import sys

import pytest

from ddpm import devices


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_GPU_LOCK_DIR", str(tmp_path))
    held = list(devices._held_locks)
    yield tmp_path
    for f in devices._held_locks[len(held) :]:  # release what the test claimed
        f.close()
    devices._held_locks[:] = held


def test_each_claim_takes_a_gpu_no_other_claim_holds(locks):
    cards = ["GPU-1111aaaa", "GPU-2222bbbb"]
    assert devices.claim_gpu(cards) == 0
    assert devices.claim_gpu(cards) == 1  # the first is held (flock: per open file)
    assert sorted(p.name for p in locks.iterdir()) == [
        "gpu-GPU-1111aaaa.lock",
        "gpu-GPU-2222bbbb.lock",
    ]


def test_jobs_that_each_see_their_own_card_as_device_0_do_not_wait_for_each_other(locks):
    """Two SLURM jobs on one node: each sees one GPU, index 0, but they are different cards."""
    assert devices.claim_gpu(["GPU-1111aaaa"]) == 0
    assert devices.claim_gpu(["GPU-2222bbbb"]) == 0


def test_a_claim_waits_while_another_process_holds_the_card(locks):
    env = {**os.environ, "DDPM_GPU_LOCK_DIR": str(locks)}
    code = (
        "import time; from ddpm import devices; devices.claim_gpu(['GPU-1111aaaa'], poll_s=0.1); "
        "print('claimed', flush=True); time.sleep({})"
    )

    def job(seconds):
        command = [sys.executable, "-c", code.format(seconds)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)

    with job(2) as holder:  # closes its pipe and waits for it, whatever happens
        assert holder.stdout.readline().strip() == "claimed"
        out, _ = job(0).communicate(timeout=60)
        assert out.splitlines() == [
            "all 1 GPUs are in use by other ddpm processes; waiting",
            "claimed",  # once the holder ended
        ]
        assert holder.wait(timeout=10) == 0
