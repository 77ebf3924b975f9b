"""The `inception_weights` stage: the feature network's weights file, from the source the config
names: torch-fidelity's FID Inception weights (downloaded and checksummed), random test weights
with the same architecture (offline tests), the synthetic flowers' feature network trained here
(the demo), or that network with random weights (plumbing tests)."""

from __future__ import annotations

import hashlib
import http.client
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm.data.synthetic import PETAL_COLOURS, synthetic_flower
from ddpm.evaluation.features import KIND, RANDOM_KIND, SIZE, FlowerFeatures
from ddpm.evaluation.inception import FEATURES, MetricsError, _inception_v3, weights_info
from ddpm.pipeline.layout import weights_sidecar
from ddpm.plumbing.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_file,
    file_digest,
    save_torch,
)

# What the flower features learn: petal colour x petal count as classes, the rest as values.
PETAL_COUNTS = range(5, 10)
CLASSES = len(PETAL_COLOURS) * len(PETAL_COUNTS)
TARGETS = ("petal_colour", "centre_colour", "top", "bottom", "position")
SCALARS = ("radius", "sharpness", "centre_radius")
REGRESSION = 3 * 4 + 2 + len(SCALARS)  # the continuous attributes, flattened


def fetch_weights(url: str, out: str | Path, sha256_prefix: str) -> dict:
    """Download the FID Inception weights once, verify the sha256 prefix, write atomically,
    with a sidecar `OUT.json` saying where they came from (the pipeline tracks both files)."""
    out = check_output_file(out)
    if not (out.exists() and file_digest(out).startswith(sha256_prefix)):
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
        except (OSError, http.client.HTTPException) as e:  # IncompleteRead: cut off mid-file
            raise MetricsError(f"could not download {url}: {e!r}; try again") from None
        digest = hashlib.sha256(data).hexdigest()
        if not digest.startswith(sha256_prefix):
            raise MetricsError(
                f"{url}: sha256 {digest[:16]}... does not start with {sha256_prefix}"
            )
        atomic_write_bytes(out, data)
    atomic_write_json(weights_sidecar(out), {"kind": "torch-fidelity", "url": url})
    return weights_info(out)


def make_test_inception(out: str | Path, seed: int = 0, calibration_images: int = 16) -> dict:
    """Seeded random weights with the real InceptionV3 architecture, saved like the real file.

    Default init gives nearly constant features; He init plus one BatchNorm statistics pass over
    smooth random images gives features that vary across images, so FID / KID / IS respond to
    the images. A sidecar `OUT.json` marks the file as test weights.
    """
    out = check_output_file(out)

    class _Blank(_inception_v3()):
        def load_state_dict(self, *args, **kwargs):  # keep the fresh initialisation
            return None

    torch.manual_seed(seed)
    with tempfile.NamedTemporaryFile(suffix=".pth") as empty:
        torch.save({}, empty.name)
        net = _Blank("inception-v3-compat", FEATURES, feature_extractor_weights_path=empty.name)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # BatchNorm statistics from smooth random images (low-frequency noise, upsampled).
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(calibration_images, 3, 4, 4, generator=g)
    images = (nn.functional.interpolate(low, size=64, mode="bicubic").clamp(0, 1) * 255).round()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
            m.train()
    with torch.no_grad():
        net.to(memory_format=torch.channels_last)(images.to(torch.uint8))
    net.eval()
    save_torch(out, net.state_dict())
    atomic_write_json(
        weights_sidecar(out),
        {
            "kind": "random-test",
            "seed": seed,
            "note": "random weights: FID values are not comparable with published ones",
        },
    )
    return weights_info(out)


def make_test_features(out: str | Path, seed: int = 0, width: int = 16) -> dict:
    """The tiny feature network of plumbing tests: `FlowerFeatures` (4 x `width` features, 32
    px, 40 classes for IS) with seeded random weights, saved like the trained one and marked by
    its sidecar as test weights. Its FIDs cost little and mean nothing."""
    out = check_output_file(out)
    torch.manual_seed(seed)
    net = FlowerFeatures(width, CLASSES, REGRESSION)
    with torch.no_grad():  # random features vary little: a 10x steeper head lets IS move (~1.05)
        net.classes.weight.mul_(10)
    save_torch(out, {"kind": RANDOM_KIND, "width": width, "state_dict": net.state_dict()})
    note = "random weights of a small CNN: plumbing tests only; its FIDs rank nothing"
    atomic_write_json(weights_sidecar(out), {"kind": RANDOM_KIND, "seed": seed, "note": note})
    return weights_info(out)


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


def train_flower_features(
    out: str | Path,
    seed: int = 0,
    count: int = 4096,
    steps: int = 1500,
    batch_size: int = 64,
    width: int = 16,
    bars: bool = True,
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
    net = FlowerFeatures(width, CLASSES, REGRESSION)
    net.mean.copy_(values[:count].mean(0))
    net.std.copy_(values[:count].std(0).clamp(min=1e-6))
    targets = (values - net.mean) / net.std
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in tqdm(range(steps), desc="flower features", unit="step", disable=not bars):
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


def make_weights(eval_cfg, out: str | Path) -> str:
    """The stage: the weights file from `evaluate.inception_source`; returns what was made, as
    a line to print."""
    if eval_cfg.inception_source == "synthetic":
        info = train_flower_features(out)
        return (
            f"{out}: flower features, {info['held_out_class_accuracy']:.1%} of held-out "
            f"flowers' petal colour and count right, trained in {info['seconds']:.0f} s; FIDs "
            "computed with them rank runs on the synthetic flowers, not comparable with published"
        )
    if eval_cfg.inception_source == "test":
        info = make_test_inception(out)
        return (
            f"{out}: random-weight InceptionV3, sha256 {info['sha256']}; FIDs computed with it "
            "are not comparable with published numbers"
        )
    if eval_cfg.inception_source == "test-small":
        info = make_test_features(out)
        return f"{out}: a small random-weight feature network (plumbing tests; ranks nothing)"
    info = fetch_weights(eval_cfg.weights_url, out, eval_cfg.weights_sha256_prefix)
    return f"{out}: sha256 {info['sha256']}"
