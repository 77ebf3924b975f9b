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
    """The holder keeps its card until told to end; the second job says it waits, then claims
    the card as soon as the holder has ended (however slowly either starts)."""
    env = {**os.environ, "DDPM_GPU_LOCK_DIR": str(locks)}
    code = (
        "import sys; from ddpm import devices; devices.claim_gpu(['GPU-1111aaaa'], poll_s=0.1); "
        "print('claimed', flush=True); sys.stdin.readline()"
    )

    def job():
        command = [sys.executable, "-c", code]
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    with job() as holder:  # each closes its pipes and is waited for, whatever happens
        assert holder.stdout.readline().strip() == "claimed"
        with job() as waiter:  # started only once the card is held
            assert waiter.stdout.readline().strip() == (
                "all 1 GPUs are in use by other ddpm processes; waiting"
            )
            holder.stdin.write("end\n")
            holder.stdin.flush()
            assert holder.wait(timeout=60) == 0
            assert waiter.stdout.readline().strip() == "claimed"  # once the holder ended
            waiter.stdin.write("end\n")
            waiter.stdin.flush()
            assert waiter.wait(timeout=60) == 0
