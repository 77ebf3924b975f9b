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
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm.data import _PETAL_COLOURS, synthetic_flower
from ddpm.files import atomic_write_json, check_output_file, load_torch, save_torch
from ddpm.layout import weights_sidecar

KIND = "synthetic-features"
EXTRACTOR = "ddpm.features.FlowerFeatures (trained on the synthetic flowers' attributes)"
RESIZE = "bilinear with antialiasing to 32 x 32 (none at 32 px)"
SIZE = 32  # the network sees every image at 32 x 32
PETAL_COUNTS = range(5, 10)
CLASSES = len(_PETAL_COLOURS) * len(PETAL_COUNTS)
TARGETS = ("petal_colour", "centre_colour", "top", "bottom", "position")
SCALARS = ("radius", "sharpness", "centre_radius")
REGRESSION = 3 * 4 + 2 + len(SCALARS)  # the continuous attributes, flattened


def flower_targets(seed: int, count: int, size: int = SIZE) -> tuple[np.ndarray, ...]:
    """`count` synthetic flowers with their attributes: images uint8 [N x 3 x S x S], classes
    int64 [N] (petal colour x petal count), continuous attributes float32 [N x REGRESSION]."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    classes = np.empty(count, dtype=np.int64)
    values = np.empty((count, REGRESSION), dtype=np.float32)
    for i in range(count):
        a: dict = {}
        images[i] = synthetic_flower(seed, i, size, a).transpose(2, 0, 1)
        classes[i] = a["colour_index"] * len(PETAL_COUNTS) + a["petals"] - PETAL_COUNTS.start
        values[i] = np.concatenate([np.ravel(a[k]) for k in TARGETS] + [[a[k] for k in SCALARS]])
    return images, classes, values


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
    """A small CNN: uint8 images of any size in, (features [N x 4w], class logits [N x 40])."""

    def __init__(self, width: int = 16):
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
        self.classes = nn.Linear(4 * width, CLASSES)
        self.values = nn.Linear(4 * width, REGRESSION)
        # Standardisation of the continuous targets, learnt from the training set.
        self.register_buffer("mean", torch.zeros(REGRESSION))
        self.register_buffer("std", torch.ones(REGRESSION))

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


def train_flower_features(
    out: str | Path,
    seed: int = 0,
    count: int = 4096,
    steps: int = 1500,
    batch_size: int = 64,
    width: int = 16,
    progress: bool = True,
) -> dict:
    """Train `FlowerFeatures` on `count` freshly drawn flowers (generator seed `seed` + 1000, so
    not the demo dataset's images) and save it like a weights file, with a sidecar `OUT.json`
    saying what it is. Returns the sidecar's contents plus the held-out accuracy."""
    out = check_output_file(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    images, classes, values = flower_targets(seed + 1000, count + 512)
    images, classes = torch.from_numpy(images), torch.from_numpy(classes)
    values = torch.from_numpy(values)
    held = slice(count, None)  # the last 512 judge the network, never train it
    net = FlowerFeatures(width)
    net.mean.copy_(values[:count].mean(0))
    net.std.copy_(values[:count].std(0).clamp(min=1e-6))
    targets = (values - net.mean) / net.std
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="flower features", unit="step", disable=not progress):
        idx = torch.randint(0, count, (batch_size,), generator=g)
        _, logits, predicted = net(images[idx])
        loss = nn.functional.cross_entropy(logits, classes[idx])
        loss = loss + nn.functional.mse_loss(predicted, targets[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    net.eval()
    with torch.inference_mode():
        _, logits, predicted = net(images[held])
        accuracy = float((logits.argmax(1) == classes[held]).float().mean())
        error = float((predicted - targets[held]).square().mean())
    save_torch(out, {"kind": KIND, "width": width, "state_dict": net.state_dict()})
    sidecar = {
        "kind": KIND,
        "seed": seed,
        "training_images": count,
        "steps": steps,
        "held_out_class_accuracy": accuracy,
        "held_out_attribute_mse": error,  # of standardised attributes: 1.0 is guessing the mean
        "seconds": time.perf_counter() - start,
        "note": "features of a small CNN trained on the synthetic flowers' generating attributes: "
        "they rank runs on the synthetic flowers; not comparable with published FIDs",
    }
    atomic_write_json(weights_sidecar(out), sidecar)
    return sidecar


def load_flower_features(path: str | Path, device: torch.device, error: type) -> FlowerFeatures:
    saved = load_torch(
        path,
        error,
        missing=f"{path} not found",
        damaged=f"{path} is damaged; build it again with `python -m ddpm inception-weights`",
    )
    if not isinstance(saved, dict) or saved.get("kind") != KIND:
        raise error(f"{path} does not hold flower feature weights")
    net = FlowerFeatures(saved["width"])
    net.load_state_dict(saved["state_dict"])
    return net.eval().to(device)
