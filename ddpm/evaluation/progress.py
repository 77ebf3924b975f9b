"""FID over training: the `progress` stage scores each EMA snapshot that training left behind.

Training never pauses for this: it writes a snapshot every `train.snapshot_every` steps
(`ddpm.training.train`), and this job, run after it like sampling, draws `progress.num_images`
samples from each snapshot and from the final weights with deterministic DDIM
(`progress.steps`), and measures their FID against the reference with its half-sampling spread.
Every point of a network uses the same images' seeds and the same budget, so the curve moves
only with training. The budget is small next to training's (README, "FID over training"); the
numbers are comparable with each other, not with the evaluate stage's (other N, other sampler).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm.data.artefacts import POINT_KEYS, read_json
from ddpm.diffusion.devices import select_device
from ddpm.evaluation.inception import extract_features, load_inception
from ddpm.evaluation.reference import check_compatible, load_reference
from ddpm.evaluation.scores import RealFID, random_halves
from ddpm.pipeline.config import SampleConfig
from ddpm.pipeline.layout import NetworkFiles
from ddpm.plumbing.errors import ArtefactError
from ddpm.plumbing.files import atomic_write_json, check_output_file
from ddpm.sampling.samplers import load_network, sample_batches


def snapshot_files(index_path: str | Path, network: str | None = None) -> list[tuple[dict, Path]]:
    """The snapshots a training listed in its snapshots.json (`SNAPSHOT_KEYS`), with their
    files."""
    index = read_json(index_path)
    if network is not None and index.get("network") != network:
        raise ArtefactError(
            f"{index_path} lists the snapshots of {index.get('network')!r}, not of {network}"
        )
    files = NetworkFiles(Path(index_path).parent)
    return [(entry, files.snapshots / entry["file"]) for entry in index.get("snapshots", [])]


def measure(
    cfg,
    index_path: str | Path,
    final_path: str | Path,
    reference: str | Path,
    weights: str | Path,
    out: str | Path,
    network: dict | None = None,
    bars: bool = True,
) -> dict:
    """Score every snapshot of a network and its final weights; writes `progress.json`.
    `network` (the settings document's `id` and `settings_digest`) is what each file must be."""
    out = check_output_file(out)
    pc = cfg.progress
    expected = network and {"network": network["id"], "settings_digest": network["settings_digest"]}
    points = snapshot_files(index_path, network and network["id"])
    info, ref = load_reference(reference, weights, cfg.evaluate.weights_sha256_prefix)
    sc = _sampler(pc)
    device = select_device(pc.device, exclusive=True)
    start = time.perf_counter()
    rows = []
    if points:  # with no snapshot there is no curve: the final weights alone say nothing here
        inception = load_inception(weights, device)
        fid = RealFID.from_state(ref["fid_state"], device)
        for path in [*(p for _, p in points), Path(final_path)]:
            scoring = (inception, fid, pc.fid_halves)
            rows.append(_point(path, expected, sc, scoring, (reference, ref), device, bars))
    assert all(set(r) == set(POINT_KEYS) for r in rows), "a point's keys are declared in layout"
    document = {
        "network": network["id"] if network else None,
        "points": rows,
        "sampler": f"DDIM, {pc.steps} steps, eta 0",
        "num_images": pc.num_images,
        "features": info["kind"],
        "test_weights": info["test_weights"],
        "elapsed_s": time.perf_counter() - start,
        "device": str(device),
    }
    atomic_write_json(out, document)
    return document


def _point(path: Path, expected, sc, scoring, reference, device, bars: bool) -> dict:
    """One point of the curve: the FID of `sc`'s samples of the weights in `path`. `scoring`
    is (the feature network, FID with the real side set, FID's halves); `reference` is (its path,
    its contents)."""
    inception, fid, halves = scoring
    nets, state = load_network(path, device, expected)
    size = state["image_size"]
    # Before the work: the weights' image size and dataset against the reference's.
    shape_only = torch.empty((0, 3, size, size), dtype=torch.uint8)
    check_compatible(path, state, shape_only, *reference, None)
    images, _ = sample_batches(nets, sc, size, device, f"progress {state['step']}", bars)
    feats = extract_features(inception, images, sc.batch_size, device, "features", bars)
    pool = feats["pool"].to(device)
    return {
        "step": state["step"],
        "images_seen": state["images_seen"],
        "fid": fid(pool),
        "fid_std": fid.spread(pool, random_halves(len(pool), halves, sc.seed)),
        "n_images": len(images),
    }


def _sampler(pc) -> SampleConfig:
    """The sampler of every point: deterministic DDIM at `progress.steps`, the same seeds, a
    fixed number of images. Every setting it samples with is spelled out here, so that it is
    this stage's code: a changed default of the `sample` section does not move it unseen."""
    return SampleConfig(
        method="ddim",
        steps=pc.steps,
        eta=0.0,
        spacing="linspace",
        call_at_zero=True,
        ddim_target="next",
        clip_denoised=True,
        num_images=pc.num_images,
        batch_size=pc.batch_size,
        seed=pc.seed,
        precision=pc.precision,
    )
