"""What FD_DINOv2 costs: importing timm, loading DINOv2 ViT-L/14 from a file laid out as Meta's
(random weights of the same size: the cost depends on the architecture only), its forward pass
per image as evaluate feeds it (64 px samples, bicubic to 224), and the Frechet distance of
1,024-d features with its spread over random halves. The whole real config is then estimated
from these: 8,189 real images once and 10,000 samples per variant.

    python benchmarks/bench_dinov2.py [--images 32] [--batch 16] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import import_seconds, repeat, save, sync_of, table  # noqa: E402

from ddpm.diffusion.devices import select_device  # noqa: E402
from ddpm.evaluation.dinov2 import extract, load_dinov2  # noqa: E402
from ddpm.evaluation.dinov2_weights import make_test_dinov2  # noqa: E402
from ddpm.evaluation.scores import RealFID, random_halves  # noqa: E402

REAL, FAKE = 8189, 10_000  # Flowers-102's images; sample.num_images of the config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--halves", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    rows = [["import timm", import_seconds("import torch, timm") - import_seconds("import torch")]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dinov2_vitl14_pretrain.pth"
        make_test_dinov2(path)
        start = time.perf_counter()
        net = load_dinov2(path, device)
        rows.append(["load ViT-L/14 from Meta's file (1.2 GB)", time.perf_counter() - start])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 64, 64), dtype=torch.uint8, generator=g)
    timing = repeat(
        lambda: extract(net, images, args.batch, device, bars=False),
        repeats=2,
        sync=sync_of(device),
    )
    per_image = timing["median_s"] / args.images
    rows.append([f"forward, per image (batch {args.batch})", per_image])
    real = torch.randn(REAL, 1024, generator=g)
    fake = torch.randn(FAKE, 1024, generator=g) * 1.1 + 0.1
    start = time.perf_counter()
    fd = RealFID.of(real, device)
    rows.append(["FD: the real side's state", time.perf_counter() - start])
    start = time.perf_counter()
    fd(fake)
    rows.append(["FD: one value", time.perf_counter() - start])
    start = time.perf_counter()
    fd.spread(fake, random_halves(FAKE, args.halves, 0))
    rows.append([f"FD: its spread over {args.halves} halves", time.perf_counter() - start])
    estimate = {
        "reference, 8,189 images (estimate)": REAL * per_image,
        "one variant's 10,000 samples (estimate)": FAKE * per_image,
    }
    print(table([[n, f"{s:.3f}"] for n, s in rows + list(estimate.items())], ["step", "seconds"]))
    save(
        "dinov2",
        {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "images": args.images,
            "batch": args.batch,
            "seconds": {name: s for name, s in rows},
            "estimates_s": estimate,
        },
    )


if __name__ == "__main__":
    main()
