"""Image features for FID / KID / IS on the synthetic flowers, whose distances mean something.

Random Inception weights make the metrics run offline, but their features do not rank sample
quality: on the demo they scored the visibly grainiest run best. The synthetic flowers are drawn
from known attributes (petal count and colour, centre colour and size, position, radius, petal
shape, background colours), so a small CNN trained inside the pipeline to recover them from the
image gives features that describe what a flower looks like: a run whose samples get the
attributes wrong, or are grainy or blurred, lands far from the data. Its class head (petal
colour x petal count, 40 classes) gives the Inception Score's logits.

These numbers rank runs on the synthetic flowers; they are not comparable with published FIDs,
which use the Inception network. Real data keeps torch-fidelity's Inception weights.

The same network with seeded random weights is the tiny feature network of plumbing tests: 64
features at 32 px, where random Inception weights give 2,048 at 299 px (each FID then solves a
2,048 x 2,048 eigenproblem in torchmetrics, 4 s on one core). Its numbers rank nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddpm.plumbing.files import load_torch

KIND = "synthetic-features"
RANDOM_KIND = "random-test-features"  # seeded random weights: plumbing tests only
KINDS = (KIND, RANDOM_KIND)
EXTRACTOR = {
    KIND: "ddpm.evaluation.features.FlowerFeatures (trained on the synthetic flowers' attributes)",
    RANDOM_KIND: "ddpm.evaluation.features.FlowerFeatures (seeded random weights: plumbing tests)",
}
RESIZE = "bilinear with antialiasing to 32 x 32 (none at 32 px)"
SIZE = 32  # the network sees every image at 32 x 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class FlowerFeatures(nn.Module):
    """A small CNN: uint8 images of any size in, (features [N x 4w], logits of `classes`
    classes, `values` standardised continuous attributes)."""

    def __init__(self, width: int, classes: int, values: int):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            _block(3, width),
            nn.AvgPool2d(2),  # 16 x 16
            _block(width, 2 * width),
            nn.AvgPool2d(2),  # 8 x 8
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classes = nn.Linear(4 * width, classes)
        self.values = nn.Linear(4 * width, values)
        # Standardisation of the continuous targets, learnt from the training set.
        self.register_buffer("mean", torch.zeros(values))
        self.register_buffer("std", torch.ones(values))

    @property
    def num_features(self) -> int:
        return 4 * self.width

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
            x = nn.functional.interpolate(x, size=SIZE, mode="bilinear", antialias=True)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Features, class logits and standardised continuous attributes of uint8 images."""
        h = self.body(self._input(images))
        return h, self.classes(h), self.values(h)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, logits, _ = self(images)
        return h, logits


def load_flower_features(path: str | Path, device: torch.device, error: type) -> FlowerFeatures:
    saved = load_torch(
        path,
        error,
        missing=f"{path} not found",
        damaged=f"{path} is damaged; build it again with `python -m ddpm inception-weights`",
    )
    if not isinstance(saved, dict) or saved.get("kind") not in KINDS:
        raise error(f"{path} does not hold flower feature weights")
    state = saved["state_dict"]
    net = FlowerFeatures(saved["width"], len(state["classes.bias"]), len(state["values.bias"]))
    net.load_state_dict(state)
    return net.eval().to(device)
