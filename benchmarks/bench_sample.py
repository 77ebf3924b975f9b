"""Sampling speed: DDPM over all T steps against DDIM with 50 and 100 steps, and our DDPM sampler
against diffusers' DDPMPipeline driving the very same network (the difference is per-step
overhead: per-sample noise generators, float64 coefficients, clipping).

    python benchmarks/bench_sample.py [--preset tiny] [--size 32] [--batch 16] [--T 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rate, repeat, save, table  # noqa: E402

from ddpm.diffusion.process import build_diffusion  # noqa: E402
from ddpm.diffusion.unet import build_unet  # noqa: E402
from ddpm.pipeline.config import DiffusionConfig, ModelConfig  # noqa: E402
from ddpm.sampling.samplers import ddim_sample, ddpm_sample  # noqa: E402


def diffusers_pipeline(model, diffusion, size: int):
    """DDPMPipeline around our network: diffusers passes integer t, our net expects (t + 1) / T."""
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.config = type("Config", (), {"sample_size": size, "in_channels": 3})()

        @property
        def dtype(self):
            return torch.float32

        @property
        def device(self):
            return torch.device("cpu")

        def forward(self, x, t):
            t = torch.as_tensor(t).expand(x.shape[0])
            return UNet2DOutput(sample=self.net(x, diffusion.scale_timesteps(t)))

    betas = diffusion.betas.float()
    scheduler = DDPMScheduler(
        num_train_timesteps=diffusion.T,
        trained_betas=betas.numpy(),
        variance_type="fixed_small",
        clip_sample=True,
    )
    pipe = DDPMPipeline(unet=Wrapped(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--T", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_unet(ModelConfig(preset=args.preset), args.size).eval()
    diffusion = build_diffusion(DiffusionConfig(T=args.T))
    shape = (3, args.size, args.size)
    idx = range(args.batch)
    cases = {
        f"ddpm ({args.T} steps)": (lambda: ddpm_sample(model, diffusion, 0, idx, shape), args.T),
        "ddim 100 steps": (lambda: ddim_sample(model, diffusion, 0, idx, shape, steps=100), 100),
        "ddim 50 steps": (lambda: ddim_sample(model, diffusion, 0, idx, shape, steps=50), 50),
    }
    try:
        pipe = diffusers_pipeline(model, diffusion, args.size)
        gen = torch.Generator().manual_seed(0)
        cases[f"diffusers DDPMPipeline ({args.T} steps)"] = (
            lambda: pipe(
                batch_size=args.batch, generator=gen, num_inference_steps=args.T, output_type="np"
            ),
            args.T,
        )
    except ImportError as e:
        print(f"diffusers unavailable ({e}); skipping it (pip install -e '.[bench]')")

    results, rows = {}, []
    with torch.inference_mode():
        for name, (fn, steps) in cases.items():
            timing = repeat(fn, args.repeats, warmup=0 if steps > 100 else 1)
            r = rate(timing, args.batch)
            ms_per_step = timing["median_s"] / steps * 1e3
            results[name] = {**r, "steps": steps, "ms_per_step": ms_per_step}
            rows.append(
                [
                    name,
                    steps,
                    f"{r['per_s']:.2f}",
                    f"{r['per_s_min']:.2f}-{r['per_s_max']:.2f}",
                    f"{ms_per_step:.1f}",
                ]
            )
    print(f"{args.preset} U-Net, {args.size} px, batch {args.batch}, T = {args.T}, CPU fp32")
    print(table(rows, ["sampler", "steps", "images/s", "range", "ms per step (batch)"]))
    ours = results[f"ddpm ({args.T} steps)"]["ms_per_step"]
    theirs = results.get(f"diffusers DDPMPipeline ({args.T} steps)", {}).get("ms_per_step")
    if theirs:
        print(
            f"per-step overhead of ours against diffusers: {ours - theirs:+.2f} ms "
            f"({ours / theirs:.2f}x)"
        )
    path = save(
        "sample",
        {
            "preset": args.preset,
            "size": args.size,
            "batch": args.batch,
            "T": args.T,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
