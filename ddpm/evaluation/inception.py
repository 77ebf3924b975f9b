"""The feature network of the scores, and one forward pass per image through it.

The Inception network is torch-fidelity's `FeatureExtractorInceptionV3` with an explicit,
checksummed weights file and its TF-compatible resize, so numbers match torch-fidelity and the
original TF code (tests/evaluation/test_metrics.py compares them). Each image goes through the
network once; its pool features (2048) feed FID, KID, precision and co, and its unbiased logits
feed IS (`scores.py`: torchmetrics' classes; `fidelity.py`). Real-image features are computed
once per preprocessed dataset and cached in a reference file keyed by the dataset's and the weights'
sha256. A weights file's sidecar may instead name the flower features (`features.py`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm.evaluation import features
from ddpm.pipeline.layout import weights_sidecar
from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import (
    file_digest,
)

FEATURES = ["2048", "logits_unbiased"]
EXTRACTOR = "torch-fidelity FeatureExtractorInceptionV3 (inception-v3-compat)"
RESIZE = "bilinear like TF1 (torch-fidelity's)"


class MetricsError(PipelineError):
    pass


# -- weights -------------------------------------------------------------------------------------


def weights_info(path: str | Path) -> dict:
    """sha256 of a weights file and, from its sidecar `PATH.json`, what kind it is: `inception`
    (the real FID weights), `random-test` (random Inception weights: tests only),
    `synthetic-features` (ddpm.evaluation.features, for the synthetic flowers) or
    `random-test-features` (that network with random weights: plumbing tests only)."""
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
        "test_weights": kind in ("random-test", features.RANDOM_KIND),
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
    or `FlowerFeatures` when the sidecar says so (then torch-fidelity is not even loaded)."""
    if _sidecar(Path(weights)).get("kind") in features.KINDS:  # the kind only: no second hash
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
    bars: bool = True,
) -> dict[str, torch.Tensor]:
    """Features (Inception: float32 [N x 2048] pool features) and logits (float64; Inception:
    [N x 1008] unbiased) of uint8 images [N x 3 x H x W], one forward pass per image."""
    if images.dtype != torch.uint8:
        raise MetricsError("images for evaluation must be uint8 (clamped and rounded)")
    pools, logits = [], []
    with tqdm(total=len(images), unit="img", desc=desc, disable=not bars) as bar:
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
