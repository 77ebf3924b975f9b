"""Fidelity and diversity apart, on the same features as FID: improved precision and recall
(Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020).

Each feature set stands for its distribution as the union of balls around its points, each
ball's radius the distance to the point's k-th nearest neighbour in its own set (k = 3, as both
papers use). Then, with distances in float64:
- precision: the share of generated points inside some real ball (are samples like real ones?);
- recall: the share of real points inside some generated ball (do samples cover the real ones?);
- density: how many real balls a generated point lies in, over k, averaged (1 when samples are
  distributed like the real points; it rewards samples where real points are dense);
- coverage: the share of real points whose own ball holds a generated point (robust to outliers
  among the samples, which recall is not).

FID mixes the first two: a model that draws only good flowers of a few kinds and one that draws
every kind badly can score alike. The real balls depend on the dataset alone, so their radii
are computed once, with the reference statistics (`real_radii`).
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.data.artefacts import FIDELITY_SCORES

K = 3  # neighbours: the k of both papers
NAMES = FIDELITY_SCORES
_CHUNK = 2048  # rows of a distance matrix computed at once (2048 x 10,000 in float64: 160 MB)


def _distances(a: torch.Tensor, b: torch.Tensor):
    """Euclidean distances between the rows of `a` and of `b` (float64), in chunks of rows of
    `a`: yields (first row, block)."""
    b = b.double()
    for lo in range(0, len(a), _CHUNK):
        yield lo, torch.cdist(a[lo : lo + _CHUNK].double(), b)


def knn_radii(x: torch.Tensor, k: int = K) -> torch.Tensor:
    """Each row's distance to its k-th nearest other row (float64 [N])."""
    if len(x) <= k:
        raise ValueError(f"{len(x)} points cannot have {k} nearest neighbours each")
    radii = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for lo, block in _distances(x, x):
        # The k+1 smallest include the point itself, at distance 0.
        radii[lo : lo + len(block)] = block.topk(k + 1, dim=1, largest=False).values[:, -1]
    return radii


def prdc(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = K,
    real_radii: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Precision, recall, density and coverage of `fake` against `real` (feature rows), on
    `fake`'s device; None each when a set has too few points for k neighbours."""
    if min(len(real), len(fake)) <= k:
        return dict.fromkeys(NAMES)
    device = fake.device
    real = real.to(device)
    real_radii = knn_radii(real, k) if real_radii is None else real_radii.to(device).double()
    fake_radii = knn_radii(fake, k)
    in_real_balls = torch.zeros(len(fake), dtype=torch.float64, device=device)  # per fake
    covered = torch.zeros(len(real), dtype=torch.bool, device=device)  # a fake in its own ball
    recalled = torch.zeros(len(real), dtype=torch.bool, device=device)  # inside some fake ball
    for lo, block in _distances(real, fake):  # real rows x fake columns
        inside = block < real_radii[lo : lo + len(block), None]
        in_real_balls += inside.sum(0)
        covered[lo : lo + len(block)] = inside.any(1)
        recalled[lo : lo + len(block)] = (block < fake_radii[None, :]).any(1)
    return {
        "precision": float((in_real_balls > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float(covered.double().mean()),
    }


def prdc_spread(
    real: torch.Tensor,
    fake: torch.Tensor,
    halves: list[torch.Tensor],
    k: int = K,
    real_radii: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Each score's sampling noise, as FID's: its standard deviation over random halves of the
    generated images (`halves`: index tensors), the real balls held fixed. None without two
    halves of more than k images."""
    if len(halves) < 2 or min((len(h) for h in halves), default=0) <= k:
        return dict.fromkeys(NAMES)
    values = [prdc(real, fake[h.to(fake.device)], k, real_radii) for h in halves]
    return {name: float(np.std([v[name] for v in values], ddof=1)) for name in NAMES}
