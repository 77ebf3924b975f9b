"""Choosing the device: CUDA when present, and one training per GPU on multi-GPU machines."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

from ddpm.errors import PipelineError

_held_locks: list = []  # open lock files, held for the life of the process


def lock_dir() -> Path:
    return Path(os.environ.get("DDPM_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "ddpm-gpu-locks"))


def acquire_gpu(poll_s: float = 5.0) -> int:
    """Claim a visible GPU that no other ddpm process on this machine holds, waiting if all are
    busy. The claim is an flock on `lock_dir()/gpuN.lock` that the OS releases when the process
    ends, so a crash never leaves a GPU claimed."""
    count = torch.cuda.device_count()
    lock_dir().mkdir(parents=True, exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    waited = False
    while True:
        for index in range(count):
            ident = visible.split(",")[index] if visible else str(index)
            f = open(lock_dir() / f"gpu{ident.strip()}.lock", "a+")  # noqa: SIM115 - held open
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            _held_locks.append(f)
            return index
        if not waited:
            print(f"all {count} GPUs are in use by other ddpm processes; waiting", flush=True)
            waited = True
        time.sleep(poll_s)


def select_device(preference: str, exclusive: bool = False) -> torch.device:
    """`auto` -> CUDA when available, else CPU. With `exclusive`, claim a GPU of our own."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PipelineError("device 'cuda' was requested but CUDA is not available here")
    index = acquire_gpu() if exclusive else torch.cuda.current_device()
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: str):
    """bf16 / fp16 autocast on CUDA; a no-op context on CPU and for fp32."""
    enabled = device.type == "cuda" and precision != "fp32"
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)
