"""The `reference_stats` stage: the real images' features of a dataset and FID's real-side metric
state (torchmetrics'), once per dataset and weights, with the real-vs-real floor (FID and KID
between two random halves)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm.data.dataset import load_dataset, read_manifest
from ddpm.diffusion.devices import select_device
from ddpm.evaluation.fidelity import knn_radii
from ddpm.evaluation.inception import MetricsError, check_weights, extract_features, load_inception
from ddpm.evaluation.reference import _load_reference
from ddpm.evaluation.scores import RealFID, fid, kid
from ddpm.plumbing.files import check_output_file, save_torch


def reference_stats(
    eval_cfg, data_path: str | Path, weights: str | Path, out: str | Path, bars: bool = True
) -> dict:
    """Real-image features of a dataset, once: skipped when `out` already matches the dataset
    and weights. Also stores the real-vs-real floor (FID and KID between two random halves)."""
    out = check_output_file(out)
    info = check_weights(weights, eval_cfg.weights_sha256_prefix)
    manifest = read_manifest(data_path)
    if out.exists():
        cached = _load_reference(out)
        if (
            cached.get("dataset_sha256") == manifest["sha256"]
            and cached.get("weights_sha256") == info["sha256"]
            and cached.get("max_images") == eval_cfg.reference_max_images
            and "image_size" in cached
        ):
            print(f"{out} is up to date for this dataset and weights; nothing to do")
            return cached["meta"]
    images, _ = load_dataset(data_path)
    if eval_cfg.reference_max_images and len(images) > eval_cfg.reference_max_images:
        g = torch.Generator().manual_seed(eval_cfg.seed)
        images = images[torch.randperm(len(images), generator=g)[: eval_cfg.reference_max_images]]
    if len(images) < 4:
        raise MetricsError(
            f"{data_path} holds {len(images)} images; reference statistics need at least 4 (FID's "
            "floor compares two halves of them, and a covariance needs 2 images)"
        )
    device = select_device(eval_cfg.device, exclusive=True)
    start = time.perf_counter()
    net = load_inception(weights, device)
    feats = extract_features(net, images, eval_cfg.batch_size, device, "reference", bars)
    elapsed = time.perf_counter() - start
    meta = {
        "n_real": len(images),
        "dataset_sha256": manifest["sha256"],
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "floor": _floor(feats["pool"], eval_cfg),
        "elapsed_s": elapsed,
        "images_per_s": len(images) / elapsed,
    }
    save_torch(
        out,
        {
            "pool": feats["pool"],
            # FID's real side as torchmetrics keeps it: every FID of the samples starts from it
            "fid_state": RealFID.of(feats["pool"], device).state(),
            # each real point's ball for precision, recall, density and coverage
            "real_radii": knn_radii(feats["pool"].to(device)).cpu(),
            # the record that `evaluate` checks the samples against
            "dataset_sha256": manifest["sha256"],
            "image_size": int(images.shape[-1]),
            "weights_sha256": info["sha256"],
            "features": info["kind"],
            "max_images": eval_cfg.reference_max_images,
            "meta": meta,
        },
    )
    return meta


def _floor(pool: torch.Tensor, eval_cfg) -> dict:
    """What two independent draws of the real distribution score against each other: FID and
    KID between two random halves of the real features."""
    g = torch.Generator().manual_seed(eval_cfg.seed)
    perm = torch.randperm(len(pool), generator=g)
    a, b = pool[perm[: len(perm) // 2]], pool[perm[len(perm) // 2 :]]
    kid_mean, kid_std, _ = kid(a, b, eval_cfg.kid_subset_size, eval_cfg.kid_subsets, eval_cfg.seed)
    return {"n_per_half": len(a), "fid": fid(a, b), "kid_mean": kid_mean, "kid_std": kid_std}
