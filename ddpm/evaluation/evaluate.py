"""The `evaluate` stage: the scores `evaluate.metrics` lists of one variant's samples against the
cached references: FID, IS and KID (torchmetrics' classes), precision, recall, density and
coverage, from one forward pass of the Inception network per image; and FD_DINOv2, from one
pass of DINOv2 ViT-L/14 per image (`dinov2.py`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm.data.artefacts import METRIC_KEYS, read_samples
from ddpm.diffusion.devices import select_device
from ddpm.evaluation import dinov2, features
from ddpm.evaluation.dinov2 import check_weights as check_dinov2
from ddpm.evaluation.fidelity import NAMES, K, prdc, prdc_spread
from ddpm.evaluation.inception import (
    EXTRACTOR,
    RESIZE,
    MetricsError,
    extract_features,
    load_inception,
)
from ddpm.evaluation.names import DINOV2_KEYS
from ddpm.evaluation.reference import check_compatible, load_reference
from ddpm.evaluation.scores import RealFID, inception_score, kid, random_halves
from ddpm.pipeline.layout import VariantFiles
from ddpm.plumbing.files import atomic_write_json, check_output_dir


def evaluate(
    eval_cfg,
    samples: str | Path,
    reference: str | Path,
    weights: str | Path,
    out_dir: str | Path,
    variant: str | None = None,
    bars: bool = True,
    dinov2: tuple[str | Path, str | Path] | None = None,
) -> dict:
    """The scores `evaluate.metrics` lists of `samples` against the cached `reference`. Writes
    `metrics.json` (the numbers; the summary gathers them for DVC) and `evaluation.json` (how
    they were computed) into `out_dir`; returns both merged. `variant` (network/variant) is the
    run the samples must be of, where their record says. `dinov2` is (weights, reference) of
    FD_DINOv2, which the metrics must then list."""
    files = VariantFiles(check_output_dir(out_dir))
    listed = set(eval_cfg.metrics)
    if ("fd_dinov2" in listed) != (dinov2 is not None):
        raise MetricsError(
            "evaluate.metrics lists fd_dinov2: give the DINOv2 weights and reference "
            "(--dinov2-weights, --dinov2-reference)"
            if dinov2 is None
            else "DINOv2 files were given, but evaluate.metrics does not list fd_dinov2"
        )
    info, ref = load_reference(reference, weights, eval_cfg.weights_sha256_prefix)
    images, record = read_samples(samples)
    images = torch.from_numpy(images)
    check_compatible(samples, record, images, reference, ref, variant)
    device = select_device(eval_cfg.device, exclusive=True)
    start = time.perf_counter()
    net = load_inception(weights, device)
    feats = extract_features(net, images, eval_cfg.batch_size, device, "evaluate", bars)
    extract_s = time.perf_counter() - start
    halves = random_halves(len(images), eval_cfg.fid_halves, eval_cfg.seed)  # every spread's
    metrics, kid_size = _inception_scores(eval_cfg, feats, ref, halves, device)
    n, real = len(images), ref["pool"]
    how = _how(eval_cfg, n, len(real), real.shape[1], kid_size, ref["meta"]["floor"], info, device)
    if dinov2 is not None:
        scored = _fd_dinov2(eval_cfg, images, halves, *dinov2, ref["dataset_sha256"], device, bars)
        metrics |= scored.pop("metrics")
        how["dinov2"] = scored
    timing = {"elapsed_s": time.perf_counter() - start, "images_per_s": n / extract_s}
    declared = (*METRIC_KEYS, *DINOV2_KEYS)  # in this order; those not computed left out
    assert set(metrics) <= set(declared), "metrics.json's keys: artefacts, names"
    atomic_write_json(files.evaluation, how | timing)
    atomic_write_json(files.metrics, {k: metrics[k] for k in declared if k in metrics})
    return {**metrics, **how, **timing}


def _inception_scores(eval_cfg, feats: dict, ref: dict, halves, device) -> tuple[dict, int | None]:
    """The scores of the Inception features that evaluate.metrics lists (FID always), and KID's
    subset size (None without KID)."""
    listed = eval_cfg.metrics
    real = ref["pool"]
    fid = RealFID.from_state(ref["fid_state"], device)  # the real side, as the reference keeps it
    fake, radii = feats["pool"].to(device), ref["real_radii"]  # on the GPU when there is one
    floor = ref["meta"]["floor"]
    metrics = {
        "fid": fid(fake),
        "fid_std": fid.spread(fake, halves),
        "n_generated": len(fake),
        "n_real": len(real),
        "floor_fid": floor["fid"],
    }
    kid_size = None
    if "is" in listed:
        metrics["is_mean"], metrics["is_std"] = inception_score(
            feats["logits"], eval_cfg.is_splits, eval_cfg.seed
        )
    if "kid" in listed:
        metrics["kid_mean"], metrics["kid_std"], kid_size = kid(
            real.to(device), fake, eval_cfg.kid_subset_size, eval_cfg.kid_subsets, eval_cfg.seed
        )
        metrics["floor_kid_mean"] = floor["kid_mean"]
    if "prdc" in listed:  # fidelity and diversity apart, each with its spread over the halves
        fidelity = prdc(real, fake, real_radii=radii)
        spread = prdc_spread(real, fake, halves, real_radii=radii)
        for name in NAMES:
            metrics[name], metrics[f"{name}_std"] = fidelity[name], spread[name]
    return metrics, kid_size


def _fd_dinov2(eval_cfg, images, halves, weights, reference, dataset, device, bars) -> dict:
    """FD_DINOv2 of the samples, its spread over the same halves as FID's, and how. `dataset`:
    the sha256 of the dataset that the Inception reference (and so the samples) describe."""
    info = check_dinov2(weights)
    ref = dinov2.load_reference(reference, info)
    if ref["dataset_sha256"] != dataset:
        raise MetricsError(
            f"{reference} describes another dataset (sha256 {ref['dataset_sha256'][:12]}...) than "
            f"the Inception reference ({dataset[:12]}...); run `python -m ddpm dinov2-reference` "
            "on the samples' dataset"
        )
    if ref["image_size"] != images.shape[-1]:
        raise MetricsError(
            f"{reference} describes {ref['image_size']} px images, the samples are "
            f"{images.shape[-1]} px; compute it for the samples' dataset"
        )
    net = dinov2.load_dinov2(weights, device)
    feats = dinov2.extract(net, images, eval_cfg.batch_size, device, "dinov2", bars).to(device)
    fd = RealFID.from_state(ref["fid_state"], device)
    return {
        "metrics": {
            "fd_dinov2": fd(feats),
            "fd_dinov2_std": fd.spread(feats, halves),
            "floor_fd_dinov2": ref["floor"]["fd"],
        },
        "feature_extractor": dinov2.EXTRACTOR,
        "resize": dinov2.RESIZE,
        "weights_sha256": info["sha256"],
        "weights_pinned": info["pinned"],
        "test_weights": info["test_weights"],
        "n_real": ref["n_real"],
        "floor": ref["floor"],
    }


def _how(eval_cfg, n: int, n_real: int, dims: int, kid_size, floor: dict, info: dict, device):
    """evaluation.json but the timings: how the numbers were computed, and how far to trust
    them."""
    reliable = n > dims and n_real > dims
    return {
        "fid_reliable": reliable,
        "fid_note": None
        if reliable
        else (
            f"N = {n} generated and {n_real} real images: FID needs more than {dims} (the "
            "feature dimensions) of each for a full-rank covariance and is biased upward ~1/N; "
            "compare only at equal N, and prefer KID here"
        ),
        "fid_std_method": (
            f"standard deviation of FID over {eval_cfg.fid_halves} random halves of the "
            "generated images (half-sampling; real statistics fixed)"
            if eval_cfg.fid_halves > 1
            else None
        ),
        "metrics": list(eval_cfg.metrics),
        "is_splits": min(eval_cfg.is_splits, n) if "is" in eval_cfg.metrics else None,
        "kid_subset_size": kid_size,
        "kid_subsets": eval_cfg.kid_subsets if kid_size else None,
        "prdc_k": K if "prdc" in eval_cfg.metrics else None,
        "floor": floor,
        "features": info["kind"],
        "feature_extractor": features.EXTRACTOR.get(info["kind"], EXTRACTOR),
        "resize": features.RESIZE if info["kind"] in features.KINDS else RESIZE,
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "device": str(device),
    }
