"""GPU speed in one run (`make bench-gpu`). Its run time on an H100 or H200, estimated from the
rates in issue 13: 4 training cases of 80 steps x 128 images at 552-1,157 images/s = 52 s, 80
sampling steps at 122-321 ms = 18 s, Inception 2 s, so about 1.2 minutes of timed work, plus
three torch.compile runs (two training layouts, one sampler), not yet measured for this network.

1. Training: the shipped step, `TrainLoop.run_step` (the function `ddpm train` calls, not a
   copy), for the `base` preset at 64 px, batch 128, bf16: eager and torch.compile, NCHW and
   channels_last. Images/s, model FLOP utilisation (MFU) against the card's bf16 peak from its
   datasheet and against a bf16 matmul measured in the same run, peak memory, compile seconds.
2. Sampling: the shipped DDPM sampler (`ddpm_sample`, host-side noise included) at batch 500,
   eager and compiled: ms per step, and minutes per 10,000 images at T = 1000 and T = 350.
3. Evaluation: Inception (FID's network, random weights of the right shape) images/s at 299 px.

    python benchmarks/bench_gpu.py            # on CUDA: the table, and results/bench_gpu.json
    python benchmarks/bench_gpu.py --quick    # tiny sizes, runs anywhere (CPU too): a check
                                              # that tests/test_bench_gpu.py runs
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, flops_per_image, matmul_flops, rate, repeat, save, sync_of, table  # noqa: E402

from ddpm.diffusion.devices import autocast, configure_cuda  # noqa: E402
from ddpm.diffusion.model import build, compile_  # noqa: E402
from ddpm.evaluation.inception import extract_features, load_inception
from ddpm.evaluation.inception_weights import make_test_inception  # noqa: E402
from ddpm.pipeline.config import config_from_dict  # noqa: E402
from ddpm.sampling.samplers import ddpm_sample  # noqa: E402
from ddpm.training.train import TrainLoop  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity), in FLOP/s; the first name
# contained in torch.cuda.get_device_name() wins.
SPEC_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
FULL = {"preset": "base", "size": 64, "batch": 128, "steps": 20, "sample_batch": 500,
        "sample_steps": 10, "inception_images": 2048, "inception_batch": 256}  # fmt: skip
# Quick: one resolution level (every kind of layer, half as many as the tiny preset to trace).
QUICK = {"preset": "tiny", "channel_mults": (1,), "size": 16, "batch": 8, "steps": 3,
         "sample_batch": 4, "sample_steps": 3, "inception_images": 8,
         "inception_batch": 4}  # fmt: skip


def spec_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in SPEC_BF16.items() if key in name), None)


def _config(sizes: dict, **train):
    return config_from_dict(
        {
            "model": {"preset": sizes["preset"], "channel_mults": sizes.get("channel_mults")},
            "data": {"image_size": sizes["size"], "source": "synthetic"},
            "train": {"batch_size": sizes["batch"], "precision": "bf16", **train},
        }
    )


def bench_training(sizes: dict, device: torch.device, peaks: dict, backend: str) -> list[dict]:
    rows = []
    data = torch.randint(0, 256, (1024, 3, sizes["size"], sizes["size"]), dtype=torch.uint8)
    data = data.to(device)
    cfg = _config(sizes)
    model = build(cfg.model, cfg.diffusion, sizes["size"], device).model
    per_image = flops_per_image(model, lambda m, x, t: m(x, t), sizes["size"], device)
    del model
    for compiled in (False, True):
        for layout, memory_format in LAYOUTS.items():
            cfg = _config(sizes, compile=compiled)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loop = TrainLoop(
                cfg, data, device, memory_format=memory_format, compile_backend=backend
            )
            timing = _time_steps(loop, sizes["steps"], device)
            images = rate(timing, sizes["steps"] * sizes["batch"])
            images_per_s = images["per_s"]
            row = {
                "compiled": loop.nets.compiled,
                "layout": layout,
                "images_per_s": images_per_s,
                "images_per_s_range": [images["per_s_min"], images["per_s_max"]],
                "flops_per_image": per_image,
                "compile_s": loop.nets.compile_s,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else None,
            }
            for name, peak in peaks.items():
                row[f"mfu_vs_{name}"] = images_per_s * per_image / peak if peak else None
            rows.append(row)
            del loop  # before the next one is built: its memory is not that one's peak
    return rows


def _time_steps(loop: TrainLoop, steps: int, device: torch.device) -> dict:
    """Seconds per `steps` optimiser steps, as `train` takes them."""
    counter = itertools.count()

    def run() -> None:
        for _ in range(steps):
            loop.run_step(next(counter))

    return repeat(run, repeats=3, sync=sync_of(device))


def bench_sampling(sizes: dict, device: torch.device, backend: str) -> list[dict]:
    """ms per DDPM step, from the sampler itself over a short chain (a step costs the same at
    any T: one network call, the posterior and the noise)."""
    cfg = _config(sizes)
    short = dataclasses.replace(cfg.diffusion, T=sizes["sample_steps"])
    fresh = build(cfg.model, short, sizes["size"], device).model.state_dict()
    rows = []
    for compiled in (False, True):
        nets = build(cfg.model, short, sizes["size"], device, weights=fresh)
        if compiled:
            nets = compile_(nets, sizes["sample_batch"], "bf16", train=False, backend=backend)

        def chain(nets=nets):
            with autocast(device, "bf16"), torch.inference_mode():
                ddpm_sample(
                    nets.net,
                    nets.diffusion,
                    0,
                    range(sizes["sample_batch"]),
                    (3, sizes["size"], sizes["size"]),
                    device=device,
                )

        timing = repeat(chain, repeats=3, sync=sync_of(device))
        ms = 1000 * timing["median_s"] / sizes["sample_steps"]
        batches = math.ceil(10_000 / sizes["sample_batch"])
        rows.append(
            {
                "compiled": nets.compiled,
                "batch": sizes["sample_batch"],
                "ms_per_step": ms,
                "compile_s": nets.compile_s,
                **{f"min_per_10k_T{T}": ms * T * batches / 60_000 for T in (1000, 350)},
            }
        )
    return rows


def bench_inception(sizes: dict, device: torch.device) -> dict:
    images = torch.randint(
        0, 256, (sizes["inception_images"], 3, 64, 64), dtype=torch.uint8
    )  # upsampled to 299 px inside, as in evaluation
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "inception.pth"
        make_test_inception(weights, calibration_images=8)
        net = load_inception(weights, device)
        timing = repeat(
            lambda: extract_features(net, images, sizes["inception_batch"], device, bars=False),
            repeats=3,
            sync=sync_of(device),
        )
    return {"images": len(images), "images_per_s": len(images) / timing["median_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument(
        "--backend",
        default="inductor",
        help="torch.compile backend of the compiled cases (eager: checks the harness without "
        "generating code; the timings then mean nothing)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    configure_cuda(device)
    sizes = QUICK if args.quick else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPUs emulate bf16
    peaks = {
        "spec": spec_peak(device),
        "matmul": matmul_flops(device, dtype, 8192 if device.type == "cuda" else 512),
    }
    training = bench_training(sizes, device, peaks, args.backend)
    sampling = bench_sampling(sizes, device, args.backend)
    inception = bench_inception(sizes, device)
    name = "bench_gpu_quick" if args.quick else "bench_gpu"
    path = save(
        name,
        {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "sizes": sizes,
            "compile_backend": args.backend,
            "peak_flops": peaks,
            "training": training,
            "sampling": sampling,
            "inception": inception,
        },
        args.out,
    )

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    print(f"training: {sizes['preset']}, {sizes['size']} px, batch {sizes['batch']}, bf16")
    print(
        table(
            [
                [
                    "compiled" if r["compiled"] else "eager",
                    r["layout"],
                    f"{r['images_per_s']:,.0f}",
                    pct(r["mfu_vs_spec"]),
                    pct(r["mfu_vs_matmul"]),
                    "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
                    "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}",
                ]
                for r in training
            ],
            ["mode", "layout", "img/s", "MFU spec", "MFU matmul", "peak GiB", "compile s"],
        )
    )
    print(f"\nsampling: DDPM, batch {sizes['sample_batch']}, bf16")
    print(
        table(
            [
                [
                    "compiled" if r["compiled"] else "eager",
                    f"{r['ms_per_step']:.1f}",
                    f"{r['min_per_10k_T1000']:.0f}",
                    f"{r['min_per_10k_T350']:.0f}",
                ]
                for r in sampling
            ],
            ["mode", "ms/step", "min/10k T=1000", "min/10k T=350"],
        )
    )
    print(f"\nInception (299 px): {inception['images_per_s']:,.0f} images/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
