"""The `dinov2_reference` stage: FD_DINOv2's real side, once per dataset and DINOv2 weights: the
real images' DINOv2 features as torchmetrics' FID state, and the real-vs-real floor (FD_DINOv2
between two random halves of them).

It is a stage of its own, beside the Inception reference, so that switching FD_DINOv2 on or off
reruns neither that reference nor the FID over training that depends on it. It takes the same
real images as the Inception reference (`evaluate.reference_max_images`, `evaluate.seed`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm.data.dataset import load_dataset, read_manifest
from ddpm.diffusion.devices import select_device
from ddpm.evaluation.dinov2 import DinoV2Error, check_weights, extract, load_dinov2
from ddpm.evaluation.scores import RealFID, fid
from ddpm.plumbing.files import check_output_file, save_torch


def dinov2_reference(
    eval_cfg, data_path: str | Path, weights: str | Path, out: str | Path, bars: bool = True
) -> dict:
    """Write the DINOv2 reference file `out`; returns what it records besides the state."""
    out = check_output_file(out)
    info = check_weights(weights)
    manifest = read_manifest(data_path)
    images, _ = load_dataset(data_path)
    # The Inception reference's draw (reference_stats.py), kept as indices: a test holds the
    # two to the same images.
    chosen = torch.arange(len(images))
    if eval_cfg.reference_max_images and len(images) > eval_cfg.reference_max_images:
        g = torch.Generator().manual_seed(eval_cfg.seed)
        chosen = torch.randperm(len(images), generator=g)[: eval_cfg.reference_max_images]
    images = images[chosen]
    if len(images) < 4:
        raise DinoV2Error(
            f"{data_path} holds {len(images)} images; FD_DINOv2's reference needs at least 4"
        )
    device = select_device(eval_cfg.device, exclusive=True)
    start = time.perf_counter()
    net = load_dinov2(weights, device)
    feats = extract(net, images, eval_cfg.batch_size, device, "dinov2 reference", bars)
    elapsed = time.perf_counter() - start
    g = torch.Generator().manual_seed(eval_cfg.seed)
    perm = torch.randperm(len(feats), generator=g)
    half = len(perm) // 2
    record = {
        "n_real": len(images),
        "dataset_sha256": manifest["sha256"],
        "image_size": int(images.shape[-1]),
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "floor": {"n_per_half": half, "fd": fid(feats[perm[:half]], feats[perm[half:]])},
        "elapsed_s": elapsed,
        "images_per_s": len(images) / elapsed,
    }
    state = RealFID.of(feats, device).state()
    save_torch(out, {**record, "fid_state": state, "images": chosen})
    return record
