"""Preprocessing: ours (reduced-scale JPEG decode + one resize of the centre box, all cores)
against a plain torchvision Resize + CenterCrop PIL loop, on generated Flowers-sized JPEGs
(~500 x 600). Both list the folder and write the same N x 3 x S x S uint8 file; the mean pixel
difference between the two results is reported as a check that they compute the same thing.

    python benchmarks/bench_preprocess.py [--images 8189] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rate, repeat, save, table  # noqa: E402

from ddpm.data.preprocess import preprocess
from ddpm.data.synthetic import synthetic_flower  # noqa: E402
from ddpm.pipeline.config import config_from_dict  # noqa: E402


def make_jpegs(folder: Path, n: int) -> float:
    """Flowers-sized photos: a synthetic flower upscaled to 500 x 600 (random orientation) plus
    sensor-like noise, saved at JPEG quality 90: about 46 KB a file, near the 42 KB average of
    the real 102flowers.tgz (345 MB for 8,189 images). Returns the mean file size in KB."""
    rng = np.random.default_rng(0)
    flowers = [Image.fromarray(synthetic_flower(0, i, 128)) for i in range(256)]
    total = 0
    for i in range(n):
        w, h = (500, 600) if i % 2 else (600, 500)
        arr = np.asarray(flowers[i % 256].resize((w, h), Image.Resampling.BILINEAR))
        noise = rng.standard_normal(arr.shape, dtype=np.float32) * 4
        arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
        path = folder / f"image_{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        total += path.stat().st_size
    return total / n / 1024


def torchvision_loop(folder: Path, out_file: Path, size: int) -> None:
    """What one writes without this package: list the folder, load each image as
    torchvision's ImageFolder does, Resize + CenterCrop + PILToTensor, stack, save. Same input
    and the same N x 3 x S x S uint8 result as ours."""
    import torch
    from torchvision import transforms

    tf = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    tensors = []
    for path in sorted(folder.rglob("*.jpg")):
        with Image.open(path) as img:
            tensors.append(tf(img.convert("RGB")))
    np.save(out_file, torch.stack(tensors).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8189, help="Flowers-102 has 8,189")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpg"
        folder.mkdir()
        file_kb = make_jpegs(folder, args.images)
        os.sync()  # let the kernel write the new files back before anything is timed
        cfg = config_from_dict(
            {"data": {"source": "folder", "folder": str(folder), "image_size": args.size}}
        ).data
        ours = repeat(lambda: preprocess(cfg, Path(tmp) / "out.npy", bars=False), args.repeats)
        peer = repeat(
            lambda: torchvision_loop(folder, Path(tmp) / "peer.npy", args.size), args.repeats
        )
        a, b = (np.load(Path(tmp) / name).astype(np.int16) for name in ("out.npy", "peer.npy"))
        assert a.shape == b.shape, (a.shape, b.shape)
        difference = float(np.abs(a - b).mean())

    ours_rate, peer_rate = rate(ours, args.images), rate(peer, args.images)
    speedup = peer["median_s"] / ours["median_s"]
    rows = [
        [
            "ddpm preprocess (reduced-scale decode + box resize, all cores)",
            f"{ours_rate['per_s']:.0f}",
            f"{ours_rate['per_s_min']:.0f}-{ours_rate['per_s_max']:.0f}",
            f"{8189 / ours_rate['per_s']:.1f}",
        ],
        [
            "torchvision Resize + CenterCrop loop",
            f"{peer_rate['per_s']:.0f}",
            f"{peer_rate['per_s_min']:.0f}-{peer_rate['per_s_max']:.0f}",
            f"{8189 / peer_rate['per_s']:.1f}",
        ],
    ]
    print(f"{args.images} JPEGs of ~500 x 600, {file_kb:.0f} KB on average")
    print(table(rows, ["method", "images/s (median)", "range", "8,189 images (s)"]))
    print(f"speed-up: {speedup:.1f}x; mean |ours - torchvision| = {difference:.2f} of 255")
    path = save(
        "preprocess",
        {
            "images": args.images,
            "mean_file_kb": file_kb,
            "size": args.size,
            "ours": ours_rate,
            "torchvision": peer_rate,
            "speedup": speedup,
            "mean_abs_difference": difference,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
