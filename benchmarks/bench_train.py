"""Training step (forward, backward, AdamW step) in images/s for our U-Net presets, at 64 px.

    python benchmarks/bench_train.py [--batch 32] [--presets tiny ddpm base] [--peers]

Also reports parameters, FLOPs per image (torch.utils.flop_counter, forward + backward) and the
achieved FLOP/s as a fraction of a large matmul's FLOP/s measured in the same run. On CUDA the
step runs in bf16 autocast, with and without torch.compile. `--peers` adds diffusers'
UNet2DModel (train_unconditional defaults) and denoising-diffusion-pytorch's Unet(dim=64,
dim_mults=(1, 2, 4, 8)) (install the `bench` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import flops_per_image, matmul_flops, rate, repeat, save, table  # noqa: E402

from ddpm.diffusion.unet import build_unet, count_parameters  # noqa: E402
from ddpm.pipeline.config import ModelConfig  # noqa: E402


def peers(size: int) -> dict:
    out = {}
    try:
        from diffusers import UNet2DModel

        net = UNet2DModel(
            sample_size=size,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        )
        out["diffusers UNet2DModel"] = (net, lambda m, x, t: m(x, t * 1000).sample)
    except ImportError as e:
        print(f"diffusers unavailable ({e}); skipping it (pip install -e '.[bench]')")
    try:
        from denoising_diffusion_pytorch import Unet

        out["lucidrains Unet(64, (1,2,4,8))"] = (
            Unet(dim=64, dim_mults=(1, 2, 4, 8)),
            lambda m, x, t: m(x, t * 1000),
        )
    except ImportError:
        print("denoising-diffusion-pytorch not installed; skipping it")
    return out


def step_fn(model, call, batch: int, size: int, device, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.rand(batch, device=device)
    target = torch.randn_like(x)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (call(model, x, t).float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--presets", nargs="+", default=["tiny", "ddpm"])
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    modes = (
        [("bf16", False), ("bf16+compile", True)] if device.type == "cuda" else [("fp32", False)]
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_flops(device, dtype, 4096 if device.type == "cuda" else 2048)

    models = {
        f"ddpm {p}": (build_unet(ModelConfig(preset=p), args.size), lambda m, x, t: m(x, t))
        for p in args.presets
    }
    if args.peers:
        models.update(peers(args.size))
    rows, results = [], {}
    for name, (model, call) in models.items():
        model = model.to(device)
        fpi = flops_per_image(model, call, args.size, device)
        for mode, compiled in modes:
            net = torch.compile(model) if compiled else model
            step = step_fn(net, call, args.batch, args.size, device, device.type == "cuda")
            timing = repeat(
                lambda step=step: [step() for _ in range(args.steps)], args.repeats, sync=sync
            )
            r = rate(timing, args.batch * args.steps)
            achieved = r["per_s"] * fpi
            results[f"{name} [{mode}]"] = {
                **r,
                "parameters": count_parameters(model),
                "flops_per_image": fpi,
                "flops_per_s": achieved,
                "fraction_of_matmul": achieved / peak,
            }
            rows.append(
                [
                    name,
                    mode,
                    f"{count_parameters(model) / 1e6:.1f}M",
                    f"{fpi / 1e9:.1f}",
                    f"{r['per_s']:.1f}",
                    f"{r['per_s_min']:.1f}-{r['per_s_max']:.1f}",
                    f"{achieved / peak:.0%}",
                ]
            )
        model.cpu()
    print(
        f"device: {device}; matmul peak {peak / 1e12:.2f} TFLOP/s; batch {args.batch}, "
        f"{args.size} px"
    )
    print(
        table(
            rows,
            [
                "model",
                "mode",
                "params",
                "GFLOP/img (fwd+bwd)",
                "images/s",
                "range",
                "of matmul peak",
            ],
        )
    )
    path = save(
        "train",
        {"batch": args.batch, "size": args.size, "matmul_flops_per_s": peak, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
