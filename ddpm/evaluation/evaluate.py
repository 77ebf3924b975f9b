"""The `evaluate` stage: FID, IS and KID (torchmetrics' classes), precision, recall, density and
coverage of one variant's samples against the cached reference, from one forward pass of the
feature network per image."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm.data.artefacts import METRIC_KEYS, read_samples
from ddpm.diffusion.devices import select_device
from ddpm.evaluation import features
from ddpm.evaluation.fidelity import NAMES, K, prdc, prdc_spread
from ddpm.evaluation.inception import EXTRACTOR, RESIZE, extract_features, load_inception
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
) -> dict:
    """FID, IS and KID of `samples` against the cached `reference`. Writes `metrics.json` (the
    numbers; the summary gathers them for DVC) and `evaluation.json` (how they were computed)
    into `out_dir`; returns both merged. `variant` (network/variant) is the run the samples must
    be of, where their record says."""
    files = VariantFiles(check_output_dir(out_dir))
    info, ref = load_reference(reference, weights, eval_cfg.weights_sha256_prefix)
    images, record = read_samples(samples)
    images = torch.from_numpy(images)
    check_compatible(samples, record, images, reference, ref, variant)
    device = select_device(eval_cfg.device, exclusive=True)
    start = time.perf_counter()
    net = load_inception(weights, device)
    feats = extract_features(net, images, eval_cfg.batch_size, device, "evaluate", bars)
    extract_s = time.perf_counter() - start
    real = ref["pool"]
    fid = RealFID.from_state(ref["fid_state"], device)  # the real side, as the reference keeps it
    n = len(images)
    fake, radii = feats["pool"].to(device), ref["real_radii"]  # on the GPU when there is one
    kid_mean, kid_std, kid_size = kid(
        real.to(device), fake, eval_cfg.kid_subset_size, eval_cfg.kid_subsets, eval_cfg.seed
    )
    is_mean, is_std = inception_score(feats["logits"], eval_cfg.is_splits, eval_cfg.seed)
    halves = random_halves(n, eval_cfg.fid_halves, eval_cfg.seed)  # FID's, and the rest's
    fidelity = prdc(real, fake, real_radii=radii)
    spread = prdc_spread(real, fake, halves, real_radii=radii)
    dims = real.shape[1]
    floor = ref["meta"]["floor"]
    metrics = {
        "fid": fid(fake),
        "fid_std": fid.spread(fake, halves),
        "is_mean": is_mean,
        "is_std": is_std,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_generated": n,
        "n_real": len(real),
        "floor_fid": floor["fid"],
        "floor_kid_mean": floor["kid_mean"],
    }
    for name in NAMES:  # fidelity and diversity apart, each with its spread over the halves
        metrics[name], metrics[f"{name}_std"] = fidelity[name], spread[name]
    timing = {"elapsed_s": time.perf_counter() - start, "images_per_s": n / extract_s}
    evaluation = _how(eval_cfg, n, len(real), dims, kid_size, floor, info, device) | timing
    assert set(metrics) == set(METRIC_KEYS), (
        "metrics.json's keys are declared in ddpm.pipeline.layout"
    )
    atomic_write_json(files.evaluation, evaluation)
    atomic_write_json(files.metrics, metrics)
    return {**metrics, **evaluation}


def _how(eval_cfg, n: int, n_real: int, dims: int, kid_size: int, floor: dict, info: dict, device):
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
        "is_splits": min(eval_cfg.is_splits, n),
        "kid_subset_size": kid_size,
        "kid_subsets": eval_cfg.kid_subsets,
        "prdc_k": K,
        "floor": floor,
        "features": info["kind"],
        "feature_extractor": features.EXTRACTOR.get(info["kind"], EXTRACTOR),
        "resize": features.RESIZE if info["kind"] in features.KINDS else RESIZE,
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "device": str(device),
    }
