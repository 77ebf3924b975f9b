"""FID, KID and IS through torchmetrics' metric classes, on features the caller extracted once.

Every image goes through the feature network once (`inception.extract_features`), and its
features and logits feed all the scores: the metrics get a pass-through feature module, so
torchmetrics' own states and formulas do the statistics. FID's real side is a persisted metric
state, computed once per dataset and weights by the `reference_stats` stage; FID's spread is
torchmetrics' FID of random halves of the generated features against that same state.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

# FID's real side as torchmetrics keeps it: what the reference file persists.
REAL_STATE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class Given(nn.Module):
    """torchmetrics' feature module for features already extracted: float64 rows through."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def _quiet(make):
    """Build a metric that keeps every vector given (KID, IS): what it is for here, so its
    warning about memory is not shown in every job's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metric .* will save all extracted features")
        return make()


class RealFID:
    """torchmetrics' `FrechetInceptionDistance` with its real side fixed, for many FIDs of
    generated feature sets against it (the value, and each random half for the spread)."""

    def __init__(self, dims: int, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        metric = FrechetInceptionDistance(feature=Given(dims), reset_real_features=False)
        self.metric = metric.to(self.device)

    @classmethod
    def of(cls, real: torch.Tensor, device: torch.device | None = None) -> RealFID:
        """From the real features themselves."""
        fid = cls(real.shape[1], device)
        fid.metric.update(real.to(fid.device), real=True)
        return fid

    @classmethod
    def from_state(cls, state: dict, device: torch.device | None = None) -> RealFID:
        """From a real side that `state()` returned (the reference file keeps it)."""
        fid = cls(len(state["real_features_sum"]), device)
        for name in REAL_STATE:
            setattr(fid.metric, name, state[name].to(fid.device))
        return fid

    def state(self) -> dict[str, torch.Tensor]:
        """The real side's metric state (sums of features and of their outer products, count)."""
        return {name: getattr(self.metric, name).cpu().clone() for name in REAL_STATE}

    def __call__(self, fake: torch.Tensor) -> float:
        """The FID of a generated feature set [N x d] against the real side."""
        self.metric.reset()  # the generated side only: reset_real_features=False
        self.metric.update(fake.to(self.device), real=False)
        return float(self.metric.compute())

    def spread(self, fake: torch.Tensor, halves: list[torch.Tensor]) -> float | None:
        """FID's sampling noise: the standard deviation of FID over random `halves` of the
        generated features (half-sampling), the real side held fixed. None for fewer than two
        halves or four images.

        For a smooth statistic, the variance over random halves of N values approximates the
        variance of the statistic at N itself (for a mean: s^2/(N/2) * (1 - 1/2) = s^2/N).
        Measured against independent draws (tests/evaluation/test_metrics.py), it is close where
        generated and real features differ, and errs high (up to ~1.5x) when N is below the feature
        dimension; the with-replacement bootstrap erred high by 1.6-4x in the same cases."""
        if len(halves) < 2 or len(fake) < 4:
            return None
        fake = fake.to(self.device)
        return float(np.std([self(fake[idx.to(self.device)]) for idx in halves], ddof=1))


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets [N x d]."""
    return RealFID.of(real)(fake)


def random_halves(n: int, draws: int, seed: int) -> list[torch.Tensor]:
    """`draws` random halves of range(n), seeded: the draws behind every score's spread."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[: n // 2] for _ in range(draws)]


def _seeded(metric, seed: int):
    """`metric.compute()` with the global CPU generator seeded (torchmetrics draws KID's
    subsets and IS's order from it), leaving the caller's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return metric.compute()


def kid(
    real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int
) -> tuple[float, float, int]:
    """KID by torchmetrics' `KernelInceptionDistance`: the unbiased squared MMD under the kernel
    (x.y/d + 1)^3, over `subsets` pairs of random subsets of `subset_size` (fewer if a side has
    fewer), seeded; returns its mean, its standard deviation over the subsets, the size."""
    size = min(subset_size, len(real), len(fake))
    dims = real.shape[1]
    metric = _quiet(lambda: KernelInceptionDistance(Given(dims), subsets, size))
    metric.update(real, real=True)
    metric.update(fake.to(real.device), real=False)
    mean, std = _seeded(metric, seed)
    return float(mean), float(std), size


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float | None]:
    """IS by torchmetrics' `InceptionScore`: exp E_x[KL(p(y|x) || p(y))], p(y) the mean over a
    split, from float64 logits; the images are shuffled (seeded) and cut into `splits` parts.
    Returns the mean over the splits and their spread: None with one split, where no spread
    exists."""
    splits = min(splits, len(logits))
    metric = _quiet(lambda: InceptionScore(Given(logits.shape[1]), splits))
    metric.update(logits)
    with warnings.catch_warnings():  # one split: torchmetrics' std of one value, NaN
        warnings.filterwarnings("ignore", message=r"std\(\)")
        mean, std = _seeded(metric, seed)
    return float(mean), float(std) if splits > 1 else None
