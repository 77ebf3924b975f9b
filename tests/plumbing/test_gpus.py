"""GPU claims: one ddpm job per physical GPU, named by the card, not by how a job numbers it."""

import contextlib
import os
import subprocess
import sys

import pytest

from ddpm.plumbing import gpus as devices


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
        "import sys; from ddpm.plumbing import gpus as devices; "
        "devices.claim_gpu(['GPU-1111aaaa'], poll_s=0.1); "
        "print('claimed', flush=True); sys.stdin.readline()"
    )

    @contextlib.contextmanager
    def job():
        """A process that claims the card; killed on the way out if it has not ended (a claim
        that never comes would otherwise hang the test instead of failing it)."""
        command = [sys.executable, "-c", code]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        ) as proc:
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.kill()

    with job() as holder:  # each closes its pipes and is waited for, whatever happens
        assert holder.stdout.readline().strip() == "claimed"
        with job() as waiter:  # started only once the card is held
            assert waiter.stdout.readline().strip() == (
                "1 of 1 GPUs are in use by other ddpm processes and this job needs 1; waiting"
            )
            holder.stdin.write("end\n")
            holder.stdin.flush()
            assert holder.wait(timeout=60) == 0
            assert waiter.stdout.readline().strip() == "claimed"  # once the holder ended
            waiter.stdin.write("end\n")
            waiter.stdin.flush()
            assert waiter.wait(timeout=60) == 0


def test_a_multi_gpu_claim_takes_all_its_cards_or_holds_none_while_it_waits(locks):
    """train.gpus: 2 on a machine where one of two cards is busy: the job waits holding
    nothing (a one-card job takes the free card meanwhile), and takes both once both are free,
    so two jobs that need two never wait on each other holding one each."""
    cards = ["GPU-1111aaaa", "GPU-2222bbbb"]
    assert devices.claim_gpu(cards) == 0  # another job holds the first card
    held = [devices._held_locks[-1]]
    code = (
        "import sys; from ddpm.plumbing import gpus as devices; "
        f"print(devices.claim_gpus({cards!r}, 2, "
        "poll_s=0.1), flush=True); sys.stdin.readline()"
    )
    env = {**os.environ, "DDPM_GPU_LOCK_DIR": str(locks)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env,
    ) as waiter:  # fmt: skip
        try:
            assert waiter.stdout.readline().strip() == (
                "1 of 2 GPUs are in use by other ddpm processes and this job needs 2; waiting"
            )
            assert devices.claim_gpu(cards) == 1  # the waiter holds the free card no longer
            held.append(devices._held_locks[-1])
            for lock in held:  # both one-card jobs end
                lock.close()
            assert waiter.stdout.readline().strip() == "[0, 1]"
            waiter.stdin.write("end\n")
            waiter.stdin.flush()
            assert waiter.wait(timeout=60) == 0
        finally:
            if waiter.poll() is None:
                waiter.kill()


def test_more_gpus_than_the_machine_has_is_refused(locks):
    with pytest.raises(devices.PipelineError, match="3 GPUs were asked for .* shows 2"):
        devices.claim_gpus(["GPU-1111aaaa", "GPU-2222bbbb"], 3)
