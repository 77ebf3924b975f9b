"""Termination reaches the job inside a cluster job step.

On a cluster, the process a SLURM job step runs is Snakemake itself (`--mode remote`), which runs
the rule's command as its child. When the job is cancelled, preempted or reaches its time limit,
Slurm sends SIGTERM to that Snakemake alone (a step's other processes get only the SIGKILL that
follows KillWait seconds later, 30 by default), and Snakemake answers SIGTERM by waiting for its
running job (snakemake/snakemake#3241). So a training never learned it was about to be killed and
lost every step since its last periodic checkpoint. `forward_termination` passes the signal on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path


def forward_termination() -> bool:
    """From now on, pass every SIGTERM this process receives on to its child processes, beside
    whatever this process's own handler does. Call it from the main thread; the signal is seen
    only while a Python-level SIGTERM handler is installed (Snakemake installs one when it starts
    scheduling). Returns False, changing nothing, where another wakeup fd is already in use.

    The relay reads the signal numbers that Python's C-level handler writes to the wakeup fd, so
    it neither replaces nor depends on the handler that Snakemake installs after this call."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block on a full pipe
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return False

    def relay() -> None:
        while received := os.read(read_fd, 64):
            if int(signal.SIGTERM) in received:
                for pid in child_processes(os.getpid()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)

    threading.Thread(target=relay, name="forward-sigterm", daemon=True).start()
    return True


def child_processes(parent: int) -> list[int]:
    """Process ids whose parent is `parent` (Linux, from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # "pid (command) state ppid ...": the command may hold spaces and parentheses
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
    return found
