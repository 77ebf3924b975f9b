"""The device and the arithmetic a job computes with: CUDA when present (a GPU of its own, claimed
through `ddpm.plumbing.gpus`), the CUDA matmul settings, and bf16 / fp16 autocast."""

from __future__ import annotations

import torch

from ddpm.plumbing.gpus import claim_gpu, gpu_identities, wants_cuda


def select_device(
    preference: str, exclusive: bool = False, local_rank: int | None = None
) -> torch.device:
    """`auto` -> CUDA when available, else CPU. With `exclusive`, claim a GPU of our own; a
    process of a data-parallel training (`local_rank`) takes the GPU its launcher claimed."""
    if not wants_cuda(preference):
        return torch.device("cpu")
    if local_rank is not None:
        index = local_rank
    else:
        index = claim_gpu(gpu_identities()) if exclusive else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def configure_cuda(device: torch.device) -> None:
    """The matmul and convolution settings training runs with on CUDA (benchmarks too): TF32
    where fp32 remains, and cuDNN picking the fastest kernels for the fixed shapes."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str):
    """bf16 / fp16 autocast on CUDA; a no-op context on CPU and for fp32."""
    enabled = device.type == "cuda" and precision != "fp32"
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)
