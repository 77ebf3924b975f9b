"""The preprocessed dataset file: its manifest, and loading it back checked against it.

Kept apart from the preprocess stage (which makes the file) because training, evaluation and
the report only read it: a change to the downloader or the decoders must not count as a change
to them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ddpm.pipeline.layout import manifest_path
from ddpm.plumbing.errors import DataError


def read_manifest(tensor_path: str | Path) -> dict:
    path = manifest_path(tensor_path)
    if not path.exists():
        raise DataError(f"{path} is missing: {tensor_path} is incomplete; run preprocess again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable manifest ({e}); run preprocess again") from None
    if not isinstance(manifest, dict) or "sha256" not in manifest:
        raise DataError(f"{path} is not a dataset manifest (no sha256); run preprocess again")
    return manifest


def read_dataset(path: str | Path, verify: bool = True) -> tuple[np.ndarray, dict]:
    """The uint8 dataset [N x 3 x S x S] as a numpy array, checked against its manifest's
    sha256. Returns (images, manifest)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist; run `python -m ddpm preprocess`")
    manifest = read_manifest(path)
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise DataError(
            f"{path} does not match the sha256 in {manifest_path(path)}: the file was changed or "
            "truncated after preprocessing; run `python -m ddpm preprocess` again"
        )
    images = np.load(io.BytesIO(data))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(
            f"{path}: expected uint8 [N x 3 x S x S], got {images.dtype} {images.shape}"
        )
    return images, manifest


def load_dataset(path: str | Path, device="cpu", verify: bool = True):
    """`read_dataset` as a torch tensor on `device`."""
    import torch

    images, manifest = read_dataset(path, verify)
    return torch.from_numpy(images).to(device), manifest
