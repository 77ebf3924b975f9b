"""Preprocessing: ours (JPEG draft decode + one resize of the centre box, all cores) against a
plain torchvision Resize + CenterCrop PIL loop, on generated Flowers-sized JPEGs (~500 x 600).

    python benchmarks/bench_preprocess.py [--images 2000] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rate, repeat, save, table  # noqa: E402

from ddpm.config import config_from_dict  # noqa: E402
from ddpm.data import preprocess, synthetic_flower  # noqa: E402


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """Flowers-sized photos: a synthetic flower upscaled to 500 x 600 (random orientation) plus
    sensor-like noise, saved at JPEG quality 90: about 47 KB a file, near the 42 KB average of
    the real 102flowers.tgz (345 MB for 8,189 images)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = Image.fromarray(synthetic_flower(0, i % 256, 128))
        w, h = (500, 600) if i % 2 else (600, 500)
        arr = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)).astype(np.int16)
        arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
        path = folder / f"image_{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def torchvision_loop(paths: list[Path], size: int) -> np.ndarray:
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            out[i] = np.asarray(tf(img.convert("RGB")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpg"
        folder.mkdir()
        paths = make_jpegs(folder, args.images)
        cfg = config_from_dict(
            {"data": {"source": "folder", "folder": str(folder), "image_size": args.size}}
        ).data
        ours = repeat(lambda: preprocess(cfg, Path(tmp) / "out.npy", progress=False), args.repeats)
        peer = repeat(lambda: torchvision_loop(paths, args.size), args.repeats)

    ours_rate, peer_rate = rate(ours, args.images), rate(peer, args.images)
    speedup = peer["median_s"] / ours["median_s"]
    rows = [
        [
            "ddpm preprocess (draft + box resize, all cores)",
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
    print(table(rows, ["method", "images/s (median)", "range", "8,189 images (s)"]))
    print(f"speed-up: {speedup:.1f}x")
    path = save(
        "preprocess",
        {
            "images": args.images,
            "size": args.size,
            "ours": ours_rate,
            "torchvision": peer_rate,
            "speedup": speedup,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
