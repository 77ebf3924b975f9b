"""The reference file (the real images' features, computed once per dataset and weights by the
`reference_stats` stage) as the scoring stages read it, and the checks that samples can be
compared with it."""

from __future__ import annotations

from pathlib import Path

from ddpm.evaluation.inception import MetricsError, check_weights
from ddpm.plumbing.files import load_torch


def _load_reference(path: str | Path) -> dict:
    again = "run `python -m ddpm reference-stats` again"
    ref = load_torch(
        path, MetricsError, missing="run `python -m ddpm reference-stats` first", damaged=again
    )
    needed = {"pool", "fid_state", "real_radii", "dataset_sha256", "weights_sha256", "meta"}
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
