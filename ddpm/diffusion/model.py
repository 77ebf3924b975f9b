"""The network and its diffusion, built together for training and for sampling, so the two can
never disagree about how they are made: the memory layout and whether torch.compile wraps the
network are decided here, once.

Layout: NCHW on every device. On an NVIDIA H200 (issue 13: torch 2.11, bf16, `base`, 64 px,
batch 128), channels_last trained at 552 img/s eager and 1,026 compiled, NCHW at 719 and 1,157:
GroupNorm converted channels_last back and forth around every normalisation.

Compilation: on by default on CUDA (`compile: auto`), where it doubled training speed in that
measurement; off on CPU, where compiling costs more than it gains on a short run. The network is
compiled and run once on the real shapes before the first real step (its random number
generators untouched), so compile time is measured apart from images/s, and a compiler that
fails is reported and replaced by the plain network instead of stopping the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm.diffusion.devices import autocast
from ddpm.diffusion.process import GaussianDiffusion, build_diffusion
from ddpm.diffusion.unet import UNet, build_unet

MEMORY_FORMAT = torch.contiguous_format


@dataclass
class Networks:
    model: UNet  # the parameters: what the optimiser, the EMA and checkpoints see
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # what runs: model, or compiled
    diffusion: GaussianDiffusion
    compile_s: float | None = None  # compiling and the first run on real shapes; None: eager
    compile_error: str | None = None  # why compiling failed (the run goes on uncompiled)

    @property
    def compiled(self) -> bool:
        return self.net is not self.model


def wants_compile(setting: bool | str, device: torch.device) -> bool:
    """`auto`: compile on CUDA only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def build(
    model_cfg,
    diffusion_cfg,
    image_size: int,
    device: torch.device,
    *,
    weights: dict | None = None,
    memory_format: torch.memory_format = MEMORY_FORMAT,
) -> Networks:
    """The network (initialised from torch's global RNG, or loaded from `weights` and frozen
    for inference) and the diffusion, on `device` in `memory_format`; `compile_` compiles it."""
    model = build_unet(model_cfg, image_size)
    if weights is not None:
        model.load_state_dict(weights)
        model.eval().requires_grad_(False)
    model = model.to(device, memory_format=memory_format)
    return Networks(model, model, build_diffusion(diffusion_cfg).to(device))


def compile_(
    nets: Networks,
    batch_size: int,
    precision: str,
    *,
    train: bool,
    memory_format: torch.memory_format = MEMORY_FORMAT,
    backend: str | Callable = "inductor",
) -> Networks:
    """Wrap `nets.model` in torch.compile and compile it now, on a batch of `batch_size` zeros
    under the autocast of `precision`, with a backward pass when `train`. torch's RNG states
    (dropout) are restored afterwards, so the run draws the same numbers as an eager one. If the
    compiler (`backend`, torch.compile's) fails, says so on stderr and keeps the plain network."""
    model = nets.model
    device = next(model.parameters()).device
    size, channels = model.spec.image_size, model.spec.in_channels
    compiled = torch.compile(model, backend=backend)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # Inputs as the training loss and the samplers make them (float timesteps; inside
            # inference mode for sampling): any difference fails one of the compiled graph's
            # guards at the first real call, which then compiles the network a second time.
            def inputs():
                x = torch.zeros(batch_size, channels, size, size, device=device)
                t = torch.zeros(batch_size, device=device, dtype=torch.long)
                return x.contiguous(memory_format=memory_format), nets.diffusion.scale_timesteps(t)

            if train:
                with autocast(device, precision):
                    out = compiled(*inputs())
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)
            else:
                with autocast(device, precision), torch.inference_mode():
                    compiled(*inputs())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - any compiler failure: report it, run uncompiled
        model.zero_grad(set_to_none=True)
        reason = _root_cause(e)
        print(
            f"torch.compile failed ({reason}); running the network uncompiled. Set "
            "compile: false to skip the attempt.",
            file=sys.stderr,
            flush=True,
        )
        return Networks(model, model, nets.diffusion, compile_error=reason)
    return Networks(model, compiled, nets.diffusion, compile_s=time.perf_counter() - start)


def _root_cause(error: BaseException) -> str:
    """The innermost exception's type and first line: torch wraps a compiler's own error in
    several of its own (BackendCompilerFailed, InductorError, ...)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
