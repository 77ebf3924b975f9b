"""The torchrun launcher: `train.gpus: N` runs the train command as N processes on this machine
(on N claimed GPUs, or on the CPU with gloo), with SIGTERM and SIGINT passed to every process and
one `error:` line when they did not all end well."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ddpm.plumbing.errors import PipelineError


def launch_training(argv: list[str], train_cfg) -> None:
    """`python -m ddpm ARGV` (a train command) as train.gpus processes: on as many GPUs, claimed
    all at once, or on the CPU (train.device, as a single process chooses)."""
    from ddpm.plumbing.gpus import claim_gpus, gpu_identities, wants_cuda

    gpus = claim_gpus(gpu_identities(), train_cfg.gpus) if wants_cuda(train_cfg.device) else None
    launch(argv, train_cfg.gpus, gpus)


def launch(argv: list[str], processes: int, gpu_indices: list[int] | None) -> None:
    """Run `python -m ddpm ARGV` as `processes` processes under torchrun on this machine (on the
    GPUs `gpu_indices`, claimed by the caller, or on the CPU); SIGTERM and SIGINT reach every
    process. Raises `DistributedError` when they did not all end well."""
    env = dict(os.environ)
    if gpu_indices is not None:
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            visible[i] if visible else str(i) for i in gpu_indices
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--monitor-interval=0.5",
        "-m",
        "ddpm",
        "--",  # the rest is ddpm's, which torchrun would otherwise read as its own options
        *argv,
    ]
    proc = subprocess.Popen(command, env=env)
    forwarded: list[int] = []

    def forward(signum, frame):
        forwarded.append(signum)
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0:
        return
    if forwarded:  # the processes wrote a checkpoint and said so
        name = signal.Signals(forwarded[0]).name
        raise DistributedError(
            f"{name}: the {processes} training processes stopped; run the same command again "
            "to resume from the checkpoint they wrote.",
            exit_code=128 + forwarded[0],
        )
    raise DistributedError(
        f"data-parallel training stopped: a process of the {processes} ended with an error (its "
        f"message and torchrun's report of which are above; exit code {code}). The last "
        "checkpoint is kept: run the same command again to resume from it."
    )


class DistributedError(PipelineError):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code  # 1: a process failed; 128 + N: signal N stopped them
