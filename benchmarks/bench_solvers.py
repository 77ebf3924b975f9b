"""Solver overhead: what DDIM and DPM-Solver++ (2M, 3M) cost beyond the network, ours against
diffusers' `DDIMScheduler` and `DPMSolverMultistepScheduler` stepping the same chain, and that
overhead as a fraction of one call of the network the sweep samples.

The overhead is timed with a stand-in network that costs next to nothing (one multiply), so a
chain's time is the solver's own: per step, ours converts the prediction to x_0 and eps and
applies the update; diffusers' does the same through its scheduler. The network call is timed
apart, on the same batch (the `base` U-Net at 64 px by default).

    python benchmarks/bench_solvers.py [--batch 64] [--size 64] [--steps 20] [--preset base]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import repeat, save, table  # noqa: E402

from ddpm.diffusion.process import build_diffusion  # noqa: E402
from ddpm.diffusion.unet import build_unet  # noqa: E402
from ddpm.pipeline.config import DiffusionConfig, ModelConfig  # noqa: E402
from ddpm.sampling.samplers import SampleNoise, chain_timesteps, ddim_sample, dpm_solver_sample  # noqa: E402


def stand_in(x, t_in):
    return x * 0.5


def their_chain(scheduler, diffusion, shape, batch, steps):
    """diffusers' scheduler stepping the stand-in over our timesteps, from the same x_T."""
    timesteps = chain_timesteps(diffusion.T, steps)
    x = SampleNoise(0, range(batch), shape, torch.device("cpu"))()
    if isinstance(scheduler, _dpm_type()):
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        t_vec = torch.full((batch,), int(t), dtype=torch.long)
        x = scheduler.step(stand_in(x, diffusion.scale_timesteps(t_vec)), int(t), x).prev_sample
    return x


def _dpm_type():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="__array__ implementation")  # diffusers, NumPy 2

    diffusion = build_diffusion(DiffusionConfig(T=args.T))
    shape, idx, n = (3, args.size, args.size), range(args.batch), args.steps
    ours = {
        "ddim": lambda: ddim_sample(stand_in, diffusion, 0, idx, shape, steps=n),
        "dpmpp-2m": lambda: dpm_solver_sample(stand_in, diffusion, 0, idx, shape, steps=n),
        "dpmpp-3m": lambda: dpm_solver_sample(stand_in, diffusion, 0, idx, shape, steps=n, order=3),
    }
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    betas = diffusion.betas.numpy()
    theirs = {
        "ddim": DDIMScheduler(num_train_timesteps=args.T, trained_betas=betas, clip_sample=True),
        "dpmpp-2m": DPMSolverMultistepScheduler(num_train_timesteps=args.T, trained_betas=betas),
        "dpmpp-3m": DPMSolverMultistepScheduler(
            num_train_timesteps=args.T, trained_betas=betas, solver_order=3
        ),
    }

    torch.manual_seed(0)
    model = build_unet(ModelConfig(preset=args.preset), args.size).eval()
    x = torch.randn(args.batch, *shape)
    t_in = torch.full((args.batch,), 0.5)
    with torch.inference_mode():
        network = repeat(lambda: model(x, t_in), args.repeats)["median_s"] * 1e3

        results, rows = {"network_ms_per_call": network}, []
        for method in ours:
            mine = repeat(ours[method], args.repeats)["median_s"] * 1e3 / n
            scheduler = theirs[method]
            other = (
                repeat(
                    lambda s=scheduler: their_chain(s, diffusion, shape, args.batch, n),
                    args.repeats,
                )["median_s"]
                * 1e3
                / n
            )
            results[method] = {"ours_ms_per_step": mine, "diffusers_ms_per_step": other}
            rows.append([method, f"{mine:.2f}", f"{other:.2f}", f"{100 * mine / network:.2f}%"])
    print(
        f"batch {args.batch} at {args.size} px, {n} steps, T = {args.T}, CPU fp32; "
        f"one {args.preset} U-Net call: {network:.0f} ms"
    )
    print(
        table(
            rows,
            ["solver", "ours ms/step", "diffusers ms/step", f"ours / {args.preset} call"],
        )
    )
    path = save("solvers", {**vars(args), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
