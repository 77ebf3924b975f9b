"""Image grids as PNG files: sample grids, preview grids and denoising trajectories."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm.plumbing.files import atomic_write_bytes


def grid(images, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N x 3 x H x W] (an array, or a tensor on any device) -> one uint8
    [rows*(H+pad)+pad x cols*(W+pad)+pad x 3] image."""
    if hasattr(images, "cpu"):  # a torch tensor, perhaps on a GPU
        images = images.cpu()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError("grid expects uint8 images")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    return canvas


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def save_grid(images, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    atomic_write_bytes(path, png_bytes(grid(images, nrow), scale))
