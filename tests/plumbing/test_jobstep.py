"""A SIGTERM that reaches only the job step's Snakemake reaches its job too.

A parent process stands in for the job step's Snakemake: it keeps running on SIGTERM, as
Snakemake does, and its child checkpoints-and-exits on SIGTERM, as a training does. Slurm's own
delivery is exercised in tests/pipeline/test_slurm.py."""

import os
import signal
import subprocess
import sys
import textwrap

from conftest import ENV, ROOT

from ddpm.plumbing import jobstep

CHILD = """
import signal, sys, time
def stop(signum, frame):
    print("child: SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("child: ready", flush=True)
time.sleep(60)
print("child: never signalled", flush=True)
"""

PARENT = """
import signal, subprocess, sys
from ddpm.plumbing import jobstep
forwarding = {forward} and jobstep.forward_termination()
# Like Snakemake's scheduler: note the signal, keep waiting for the running job.
signal.signal(signal.SIGTERM, lambda signum, frame: print("parent: SIGTERM", flush=True))
child = subprocess.Popen([sys.executable, "-c", {child!r}])
sys.exit(child.wait())
"""


def _start_parent(forward: bool) -> subprocess.Popen:
    """The stand-in Snakemake, once its child is ready for the signal."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT.format(forward=forward, child=CHILD))],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert parent.stdout.readline() == "child: ready\n"
    return parent


def test_sigterm_to_the_parent_reaches_its_child():
    parent = _start_parent(forward=True)
    try:
        parent.send_signal(signal.SIGTERM)
        out, _ = parent.communicate(timeout=10)
    finally:
        parent.kill()
    assert parent.returncode == 143, out
    assert sorted(out.splitlines()) == ["child: SIGTERM", "parent: SIGTERM"]


def test_without_it_the_child_never_hears_of_the_signal():
    # The control: a SIGTERM to the parent alone leaves the child running.
    parent = _start_parent(forward=False)
    try:
        parent.send_signal(signal.SIGTERM)
        assert parent.stdout.readline() == "parent: SIGTERM\n"
        children = jobstep.child_processes(parent.pid)
        assert len(children) == 1
        os.kill(children[0], 0)  # still running: raises ProcessLookupError if it had exited
    finally:
        for pid in jobstep.child_processes(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.communicate()


def test_another_wakeup_fd_is_left_alone():
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd)
    try:
        assert jobstep.forward_termination() is False
        assert signal.set_wakeup_fd(write_fd) == write_fd  # still the one set before
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
