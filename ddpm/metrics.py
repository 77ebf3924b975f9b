"""FID, IS and KID from one Inception forward pass per image.

The Inception network is torch-fidelity's `FeatureExtractorInceptionV3` with an explicit,
checksummed weights file and its TF-compatible resize, so numbers match torch-fidelity and the
original TF code (tests/test_metrics.py compares them). Each image goes through the network once;
its pool features (2048) feed FID and KID and its unbiased logits feed IS. The three statistics
are computed here, in float64, on those features: FID through the singular values of a product
of two small covariance factors (no d x d eigendecomposition when a side has fewer images than
features), KID as the unbiased MMD with the cubic polynomial kernel over random subsets, IS as
exp E[KL(p(y|x) || p(y))] over random splits. Real-image features are computed once per
preprocessed dataset and cached in a reference file keyed by the dataset's and the weights'
sha256.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm import features
from ddpm.dataset import load_dataset, read_manifest
from ddpm.devices import select_device
from ddpm.errors import PipelineError
from ddpm.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    file_digest,
    load_torch,
    save_torch,
)
from ddpm.layout import METRIC_KEYS, VariantFiles, read_samples, weights_sidecar

FEATURES = ["2048", "logits_unbiased"]
EXTRACTOR = "torch-fidelity FeatureExtractorInceptionV3 (inception-v3-compat)"
RESIZE = "bilinear like TF1 (torch-fidelity's)"


class MetricsError(PipelineError):
    pass


# -- weights -------------------------------------------------------------------------------------


def weights_info(path: str | Path) -> dict:
    """sha256 of a weights file and, from its sidecar `PATH.json`, what kind it is: `inception`
    (the real FID weights), `random-test` (random Inception weights: plumbing tests only) or
    `synthetic-features` (ddpm.features, for the synthetic flowers)."""
    path = Path(path)
    if not path.exists():
        raise MetricsError(
            f"Inception weights {path} not found. Fetch the real ones with `python -m ddpm "
            f"inception-weights --config CONFIG --out {path}`, or for offline tests and demos "
            f"build random ones with `python -m ddpm make-test-inception --out {path}` "
            f"(their FIDs are not comparable with published numbers)."
        )
    meta = _sidecar(path)
    kind = meta.get("kind", "inception")
    return {
        "sha256": file_digest(path),
        "kind": kind,
        "test_weights": kind == "random-test",
        **({"seed": meta["seed"]} if "seed" in meta else {}),
    }


def _sidecar(path: Path) -> dict:
    sidecar = weights_sidecar(path)
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def check_weights(path: str | Path, sha256_prefix: str) -> dict:
    """Refuse Inception weights whose checksum does not match; weights built here (random test
    ones, flower features) have no published checksum."""
    info = weights_info(path)
    if info["kind"] == "inception" and not info["sha256"].startswith(sha256_prefix):
        raise MetricsError(
            f"{path} has sha256 {info['sha256'][:16]}..., expected it to start with "
            f"{sha256_prefix} (torch-fidelity's FID Inception weights). Fetch them again with "
            f"`python -m ddpm inception-weights`."
        )
    return info


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


def _inception_v3() -> type[nn.Module]:
    """torch-fidelity's `FeatureExtractorInceptionV3` class, imported without running the
    package's `__init__`. That imports every extractor torch-fidelity has (CLIP, VGG16, DINOv2,
    LPIPS) and torchvision with them: 2.6 s of CPU in every job that scores images (2-core VM,
    2026-12-03), for a class whose module needs only torch and four small modules beside it.
    Should that module ever need more of its package, the whole package is imported instead."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    # Imported whole already (nothing to spare), or not installed: the plain import below.
    if "torch_fidelity" not in sys.modules and (spec := importlib.util.find_spec("torch_fidelity")):
        # An unexecuted package module: Python finds the submodules through its __path__.
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
        try:
            return importlib.import_module(name).FeatureExtractorInceptionV3
        except ImportError:  # it wants the package itself: import everything properly below
            for loaded in [m for m in sys.modules if m.startswith("torch_fidelity.")]:
                del sys.modules[loaded]
        finally:
            del sys.modules["torch_fidelity"]  # a later `import torch_fidelity` runs it whole
    return importlib.import_module(name).FeatureExtractorInceptionV3


def load_inception(weights: str | Path, device: torch.device) -> nn.Module:
    """The feature network of a weights file: torch-fidelity's `FeatureExtractorInceptionV3`,
    or the synthetic flowers' `FlowerFeatures` when the sidecar says so (then torch-fidelity is
    not even loaded)."""
    if _sidecar(Path(weights)).get("kind") == features.KIND:  # the kind only: no second hash
        return features.load_flower_features(weights, device, MetricsError)
    try:
        net = _inception_v3()("inception-v3-compat", FEATURES, str(weights))
    except Exception as e:  # noqa: BLE001 - torch.load and load_state_dict raise many kinds
        raise MetricsError(
            f"{weights} does not hold torch-fidelity's InceptionV3 weights ({str(e)[:200]}); "
            "use `python -m ddpm inception-weights` or `python -m ddpm make-test-inception`"
        ) from None
    net = net.to(device)
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)  # ~1.5x faster convolutions on CPU
    return net


@torch.inference_mode()
def extract_features(
    net: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "inception",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Features (Inception: float32 [N x 2048] pool features) and logits (float64; Inception:
    [N x 1008] unbiased) of uint8 images [N x 3 x H x W], one forward pass per image."""
    if images.dtype != torch.uint8:
        raise MetricsError("images for evaluation must be uint8 (clamped and rounded)")
    pools, logits = [], []
    with tqdm(total=len(images), unit="img", desc=desc, disable=not progress) as bar:
        for lo in range(0, len(images), batch_size):
            batch = images[lo : lo + batch_size].to(device)
            if isinstance(net, features.FlowerFeatures):
                pool, logit = net.features_and_logits(batch)
            else:
                pool, logit = net(batch)
            pools.append(pool.float().cpu())
            logits.append(logit.double().cpu())
            bar.update(len(batch))
    return {"pool": torch.cat(pools), "logits": torch.cat(logits)}


# -- the metrics ---------------------------------------------------------------------------------


def _factor(x: torch.Tensor) -> torch.Tensor:
    """A matrix F with F^T F = cov(x) (float64) and at most min(N, d) rows: the centred rows
    scaled by 1/sqrt(N-1), or their QR factor R when there are more rows than columns."""
    centred = (x - x.mean(0)) / (len(x) - 1) ** 0.5
    return centred if len(x) <= x.shape[1] else torch.linalg.qr(centred, mode="r")[1]


class RealStats:
    """The real features' mean, covariance factor and trace, for many FIDs against them.

    FID = |m_r - m_x|^2 + tr S_r + tr S_x - 2 tr sqrt(S_r S_x). With S_r = A^T A and
    S_x = B^T B, the eigenvalues of S_r S_x are the squared singular values of A B^T, so the
    last trace is the sum of those singular values: a min(N_r, d) x min(N_x, d) problem instead
    of a d x d non-symmetric eigendecomposition (3 s at d = 2048 on one core, per FID)."""

    def __init__(self, real: torch.Tensor):
        real = real.double()
        self.mean = real.mean(0)
        self.factor = _factor(real)
        self.trace = self.factor.square().sum()

    def fid(self, fake: torch.Tensor) -> float:
        x = fake.double()
        factor = _factor(x)
        cross = torch.linalg.svdvals(self.factor @ factor.T).sum()
        spread = factor.square().sum()
        return float((self.mean - x.mean(0)).square().sum() + self.trace + spread - 2 * cross)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets [N x d]."""
    return RealStats(real).fid(fake)


def fid_spread(
    real: torch.Tensor | RealStats,
    fake: torch.Tensor,
    draws: int,
    seed: int,
    device: torch.device | None = None,
) -> float | None:
    """FID's sampling noise: the standard deviation of FID over `draws` random halves of the
    generated images' features (half-sampling), the real statistics held fixed. None for fewer
    than two draws or four images.

    For a smooth statistic, the variance over random halves of N values approximates the
    variance of the statistic at N itself (for a mean: s^2/(N/2) * (1 - 1/2) = s^2/N). Measured
    against independent draws (tests/test_metrics.py), it is close where generated and real
    features differ, and errs high (up to ~1.5x) when N is below the feature dimension; the
    with-replacement bootstrap erred high by 1.6-4x in the same cases. `real` may be the
    `RealStats` the caller already holds (on `device`)."""
    n = len(fake)
    if draws < 2 or n < 4:
        return None
    stats = real if isinstance(real, RealStats) else RealStats(real.to(device))
    fake = fake.to(device)
    g = torch.Generator().manual_seed(seed)
    halves = [torch.randperm(n, generator=g)[: n // 2].to(device) for _ in range(draws)]
    values = [stats.fid(fake[idx]) for idx in halves]
    return float(np.std(values, ddof=1))


def kid(
    real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int
) -> tuple[float, float, int]:
    """KID: the unbiased squared MMD between the feature sets under the kernel (x.y/d + 1)^3,
    averaged over `subsets` pairs of random subsets of `subset_size` (fewer if a side has
    fewer); returns its mean, its standard deviation over the subsets and the subset size."""
    size = min(subset_size, len(real), len(fake))
    real, fake = real.double(), fake.double()
    dims = real.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:size]]
        y = fake[torch.randperm(len(fake), generator=g)[:size]]
        k_xx, k_yy, k_xy = ((a @ b.T / dims + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (
            size * (size - 1)
        )
        values.append(float(within - 2 * k_xy.sum() / size**2))
    return float(np.mean(values)), float(np.std(values, ddof=1)), size


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float | None]:
    """IS = exp E_x[KL(p(y|x) || p(y))], p(y) the mean over a split, from logits in float64
    (float32 gives NaN when a class has zero marginal probability); the images are shuffled
    (seeded) and cut into `splits` parts. Returns the mean over the splits and their spread:
    None with one split, where no spread exists."""
    splits = min(splits, len(logits))
    g = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(logits.double()[torch.randperm(len(logits), generator=g)], dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores, ddof=1)) if splits > 1 else None


# -- stages --------------------------------------------------------------------------------------


def reference_stats(
    eval_cfg, data_path: str | Path, weights: str | Path, out: str | Path, progress: bool = True
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
    feats = extract_features(net, images, eval_cfg.batch_size, device, "reference", progress)
    elapsed = time.perf_counter() - start
    # The floor: what two independent draws of the real distribution score against each other.
    g = torch.Generator().manual_seed(eval_cfg.seed)
    perm = torch.randperm(len(images), generator=g)
    a, b = feats["pool"][perm[: len(perm) // 2]], feats["pool"][perm[len(perm) // 2 :]]
    floor_kid = kid(a, b, eval_cfg.kid_subset_size, eval_cfg.kid_subsets, eval_cfg.seed)
    meta = {
        "n_real": len(images),
        "dataset_sha256": manifest["sha256"],
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "floor": {
            "n_per_half": len(a),
            "fid": fid(a, b),
            "kid_mean": floor_kid[0],
            "kid_std": floor_kid[1],
        },
        "elapsed_s": elapsed,
        "images_per_s": len(images) / elapsed,
    }
    save_torch(
        out,
        {
            "pool": feats["pool"],
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


def _load_reference(path: str | Path) -> dict:
    again = "run `python -m ddpm reference-stats` again"
    ref = load_torch(
        path, MetricsError, missing="run `python -m ddpm reference-stats` first", damaged=again
    )
    needed = {"pool", "dataset_sha256", "weights_sha256", "meta"}
    if not isinstance(ref, dict) or not needed <= set(ref):
        raise MetricsError(f"{path} is not a reference file of this version; {again}")
    return ref


def load_reference(
    reference: str | Path, weights: str | Path, sha256_prefix: str
) -> tuple[dict, dict]:
    """The checked weights' description and the reference computed with those very weights."""
    info = check_weights(weights, sha256_prefix)
    ref = _load_reference(reference)
    if ref["weights_sha256"] != info["sha256"]:
        raise MetricsError(
            f"{reference} was computed with other Inception weights than {weights}; "
            "run `python -m ddpm reference-stats` again with these weights"
        )
    return info, ref


def check_compatible(
    samples: str | Path,
    record: dict,
    images,
    reference: str | Path,
    ref: dict,
    expected_variant: str | None,
) -> None:
    """Refuse samples that cannot be compared with the reference: another image size or
    dataset, or (by their record) another run than the job's."""
    size, ref_size = images.shape[-1], ref.get("image_size")
    if ref_size is not None and size != ref_size:
        raise MetricsError(
            f"{samples} holds {size} px images but {reference} describes {ref_size} px ones; "
            "FID across image sizes is meaningless. Sample the network trained on this "
            "dataset, or compute the reference for the samples' dataset."
        )
    data = record.get("dataset_sha256")
    if data is not None and data != ref["dataset_sha256"]:
        raise MetricsError(
            f"{samples} comes from a network trained on another dataset (sha256 "
            f"{data[:12]}...) than {reference} describes ({ref['dataset_sha256'][:12]}...); "
            "compute the reference for that dataset, or sample a network trained on this one"
        )
    variant = record.get("run")
    if expected_variant and variant and variant != expected_variant:
        raise MetricsError(
            f"{samples} holds the samples of {variant}, not of {expected_variant}; give that "
            "variant's samples.npz"
        )


def evaluate(
    eval_cfg,
    samples: str | Path,
    reference: str | Path,
    weights: str | Path,
    out_dir: str | Path,
    variant: str | None = None,
    progress: bool = True,
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
    feats = extract_features(net, images, eval_cfg.batch_size, device, "evaluate", progress)
    extract_s = time.perf_counter() - start
    real = ref["pool"]
    stats = RealStats(real.to(device))  # once, for FID and its spread
    n = len(images)
    kid_mean, kid_std, kid_size = kid(
        real, feats["pool"], eval_cfg.kid_subset_size, eval_cfg.kid_subsets, eval_cfg.seed
    )
    is_mean, is_std = inception_score(feats["logits"], eval_cfg.is_splits, eval_cfg.seed)
    dims = real.shape[1]
    reliable = n > dims and len(real) > dims
    floor = ref["meta"]["floor"]
    metrics = {
        "fid": stats.fid(feats["pool"].to(device)),
        "fid_std": fid_spread(stats, feats["pool"], eval_cfg.fid_halves, eval_cfg.seed, device),
        "is_mean": is_mean,
        "is_std": is_std,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_generated": n,
        "n_real": len(real),
        "floor_fid": floor["fid"],
        "floor_kid_mean": floor["kid_mean"],
    }
    evaluation = {
        "fid_reliable": reliable,
        "fid_note": None
        if reliable
        else (
            f"N = {n} generated and {len(real)} real images: FID needs more than {dims} (the "
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
        "floor": floor,
        "features": info["kind"],
        "feature_extractor": EXTRACTOR if info["kind"] != features.KIND else features.EXTRACTOR,
        "resize": RESIZE if info["kind"] != features.KIND else features.RESIZE,
        "weights_sha256": info["sha256"],
        "test_weights": info["test_weights"],
        "elapsed_s": time.perf_counter() - start,
        "images_per_s": n / extract_s,
        "device": str(device),
    }
    assert set(metrics) == set(METRIC_KEYS), "metrics.json's keys are declared in ddpm.layout"
    atomic_write_json(files.evaluation, evaluation)
    atomic_write_json(files.metrics, metrics)
    return {**metrics, **evaluation}


# -- random-weight Inception for offline tests and demos -----------------------------------------


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
