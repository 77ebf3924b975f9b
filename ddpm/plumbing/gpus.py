"""GPU claims: one job per GPU (or train.gpus of them, all or none) on a machine that runs
several, through flocks named by the cards' UUIDs, which the OS releases when a process ends."""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from ddpm.plumbing.errors import PipelineError

_held_locks: list = []  # open lock files, held for the life of the process


def lock_dir() -> Path:
    return Path(os.environ.get("DDPM_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "ddpm-gpu-locks"))


def gpu_identities() -> list[str]:
    """One stable name per visible GPU: its UUID where torch reports one, so the lock follows the
    physical card. (Separate SLURM jobs each see their own GPU as device 0; naming locks by the
    `CUDA_VISIBLE_DEVICES` text made them queue behind each other.)"""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    names = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        names.append(str(uuid) if uuid else visible[index] if visible else str(index))
    return names


def claim_gpu(identities: list[str], poll_s: float = 5.0) -> int:
    """Claim one of the GPUs named by `identities`; see `claim_gpus`."""
    return claim_gpus(identities, 1, poll_s)[0]


def claim_gpus(identities: list[str], count: int, poll_s: float = 5.0) -> list[int]:
    """Claim `count` of the GPUs named by `identities` that no other ddpm process on this
    machine holds, waiting while fewer are free; returns their indices. All or none: a job that
    finds fewer free releases those it took before it waits, so two jobs that each need several
    never wait on each other holding half. The claim is an flock on
    `lock_dir()/gpu-<identity>.lock`, which the OS releases when the process ends, so a crash
    never leaves a GPU claimed."""
    if count > len(identities):
        raise PipelineError(
            f"{count} GPUs were asked for (train.gpus) but this machine shows {len(identities)}"
        )
    lock_dir().mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        taken: list[tuple[int, object]] = []
        for index, identity in enumerate(identities):
            name = re.sub(r"[^A-Za-z0-9.-]", "_", identity)
            f = open(lock_dir() / f"gpu-{name}.lock", "a+")  # noqa: SIM115 - held open
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            taken.append((index, f))
            if len(taken) == count:
                _held_locks.extend(f for _, f in taken)
                return [index for index, _ in taken]
        for _, f in taken:
            f.close()  # releases its lock
        if not waited:
            busy = len(identities) - len(taken)
            print(
                f"{busy} of {len(identities)} GPUs are in use by other ddpm processes and this "
                f"job needs {count}; waiting",
                flush=True,
            )
            waited = True
        time.sleep(poll_s)


def wants_cuda(preference: str) -> bool:
    """Whether `preference` (auto, cuda, cpu) means CUDA here; refuses cuda where there is none."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return False
    if not torch.cuda.is_available():
        raise PipelineError("device 'cuda' was requested but CUDA is not available here")
    return True
