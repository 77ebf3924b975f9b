"""The built-in synthetic flowers: each image drawn from known attributes, determined by (seed,
index) alone, for the offline demo and tests (and for training the demo's feature network)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

PETAL_COLOURS = np.array(
    [
        [0.93, 0.35, 0.55],
        [0.85, 0.10, 0.15],
        [0.98, 0.82, 0.15],
        [0.55, 0.25, 0.75],
        [0.97, 0.95, 0.92],
        [0.98, 0.55, 0.10],
        [0.35, 0.45, 0.90],
        [0.95, 0.60, 0.75],
    ]
)


CENTRE_COLOURS = np.array(
    [[0.95, 0.80, 0.10], [0.35, 0.20, 0.08], [0.10, 0.08, 0.05], [0.90, 0.50, 0.10]]
)


def synthetic_flower(
    seed: int, index: int, size: int, attributes: dict | None = None
) -> np.ndarray:
    """One procedurally drawn flower, uint8 [S x S x 3], determined by (seed, index) alone.

    A rose-curve corolla (5-9 petals, random colour, size, rotation and position) with a centre
    disc and a stem, on a two-colour gradient background; drawn at 2x and box-filtered. The
    values it was drawn from go into `attributes`, if given (what the demo's feature network,
    `ddpm.evaluation.features`, learns).
    """
    rng = np.random.default_rng([seed, index])
    r = 2 * size
    yy, xx = (np.mgrid[0:r, 0:r] + 0.5) / r  # (R, R) in [0, 1]
    top, bottom = rng.uniform(0.05, 0.6, 3), rng.uniform(0.05, 0.6, 3)
    bottom[1] = max(bottom[1], rng.uniform(0.3, 0.6))  # greenish ground
    img = top + (bottom - top) * yy[..., None]  # (R, R, 3)

    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)
    radius = rng.uniform(0.18, 0.34)
    stem_w = rng.uniform(0.012, 0.025)
    stem = (np.abs(xx - cx - 0.08 * (yy - cy) ** 2) < stem_w) & (yy > cy)
    img[stem] = [0.15, 0.5 + 0.2 * rng.random(), 0.15]

    k = int(rng.integers(5, 10))
    phase = rng.uniform(0, 2 * np.pi)
    sharp = rng.uniform(0.6, 2.0)
    dx, dy = xx - cx, yy - cy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    edge = radius * (0.35 + 0.65 * np.abs(np.cos(k * (theta - phase) / 2)) ** sharp)
    petal = rho < edge
    colour_index = int(rng.integers(len(PETAL_COLOURS)))
    colour = np.clip(PETAL_COLOURS[colour_index] + rng.normal(0, 0.06, 3), 0, 1)
    shade = 0.65 + 0.35 * np.clip(rho / radius, 0, 1)  # darker towards the centre
    img[petal] = colour * shade[petal][:, None]
    centre_radius = rng.uniform(0.18, 0.3)
    centre = rho < radius * centre_radius
    centre_colour = np.clip(
        CENTRE_COLOURS[rng.integers(len(CENTRE_COLOURS))] + rng.normal(0, 0.04, 3), 0, 1
    )
    img[centre] = centre_colour

    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))  # 2x2 box filter
    if attributes is not None:
        attributes.update(
            petals=k,
            colour_index=colour_index,
            petal_colour=colour,
            centre_colour=centre_colour,
            top=top,
            bottom=bottom,
            position=np.array([cx, cy]),
            radius=radius,
            sharpness=sharp,
            centre_radius=centre_radius,
        )
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def synthetic_dataset(count: int, size: int, seed: int, bars: bool = False) -> np.ndarray:
    """uint8 [N x 3 x S x S]; image i depends only on (seed, i)."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    # A context manager closes the bar however the loop ends (Ctrl-C too), so the error
    # message that follows starts on its own line.
    with tqdm(total=count, desc="synthetic", unit="img", disable=not bars) as bar:
        for i in range(count):
            images[i] = synthetic_flower(seed, i, size).transpose(2, 0, 1)
            bar.update(1)
    return images
