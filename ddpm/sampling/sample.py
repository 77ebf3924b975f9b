"""The `sample` stage: a network's EMA weights from `final.pt` -> one sampler variant's
samples.npz, grid.png, trajectory.png and sample_summary.json."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ddpm.data.artefacts import write_samples
from ddpm.diffusion.devices import select_device
from ddpm.diffusion.model import compile_, wants_compile
from ddpm.pipeline.layout import VariantFiles
from ddpm.plumbing.errors import PipelineError
from ddpm.plumbing.files import atomic_write_json, check_output_dir
from ddpm.sampling.images import save_grid
from ddpm.sampling.samplers import (
    chain_timesteps,
    load_network,
    run_chain,
    sample_batches,
    to_uint8,
)

GRID_IMAGES = 64  # samples in grid.png (the report draws its own grids from samples.npz)


def generate(
    cfg,
    variant: str,
    ckpt_path,
    out_dir,
    network: dict | None = None,
    bars: bool = True,
) -> dict:
    """The `sample` stage: EMA weights from `final.pt` -> samples.npz, grid.png, trajectory.png
    and sample_summary.json in `out_dir`, with the `sample.*` settings of `cfg`. `network` (the
    settings document's `id` and `settings_digest`) is what `final.pt` must be. Returns the
    summary."""
    files = VariantFiles(check_output_dir(out_dir))
    sc = cfg.sample
    expected = network and {"network": network["id"], "settings_digest": network["settings_digest"]}
    device = select_device(sc.device, exclusive=True)
    nets, state = load_network(ckpt_path, device, expected)
    if wants_compile(sc.compile, device):
        nets = compile_(nets, min(sc.batch_size, sc.num_images), sc.precision, train=False)
    size = state["image_size"]
    shape = (3, size, size)
    T = nets.diffusion.T
    if sc.steps is not None and sc.steps > T:
        raise PipelineError(
            f"sample.steps: {sc.steps} exceeds the network's T ({T}) in {ckpt_path}"
        )
    record = _trajectory_steps(sc, T)

    start = time.perf_counter()
    images, nfe = sample_batches(nets, sc, size, device, f"sample {variant}", bars)
    elapsed = time.perf_counter() - start
    first = range(min(sc.trajectory_images, sc.num_images))
    # The trajectory's few images run on the plain network: the compiled one would compile
    # again for their batch size.
    plain = replace(nets, net=nets.model)
    traj = run_chain(plain, sc, first, shape, device, record=record).trajectory
    # trajectory.png: one row per sample, columns from pure noise (left) to the sample (right).
    strip = torch.stack([to_uint8(x) for _, x in traj], dim=1)  # (n, points, 3, S, S)

    record = {
        "network": state["network"],
        "run": variant,  # network/variant
        "dataset_sha256": state["dataset_sha256"],
        "image_size": size,
        "seed": sc.seed,
        "train_step": state["step"],
    }
    write_samples(files.samples, images.numpy(), record)
    save_grid(images[:GRID_IMAGES], files.grid)
    save_grid(strip.flatten(0, 1), files.trajectory, nrow=strip.shape[1])
    summary = _summary(sc, variant, state, nfe, elapsed, device, nets, traj)
    atomic_write_json(files.summary, summary)
    return summary


def _trajectory_steps(sc, T: int) -> list[int]:
    """`sc.trajectory_points - 1` evenly spaced timesteps of the chain this sampler visits."""
    if sc.method == "ddpm":
        visited = list(range(T - 1, -1, -1))
    else:
        visited = chain_timesteps(T, sc.steps or T, sc.spacing, sc.call_at_zero)
    picks = np.unique(np.linspace(0, len(visited) - 1, sc.trajectory_points - 1).round())
    return [visited[int(i)] for i in picks]


def _summary(sc, variant: str, state: dict, nfe: int, elapsed: float, device, nets, traj) -> dict:
    """sample_summary.json: the sampler's settings as it ran them, and what it cost."""
    ddpm = sc.method == "ddpm"
    return {
        "variant": variant,
        "network": state["network"],
        "method": sc.method,
        "steps": nfe,
        "nfe_per_image": nfe,
        "eta": sc.eta if sc.method == "ddim" else None,
        "spacing": None if ddpm else sc.spacing,
        "call_at_zero": None if ddpm else sc.call_at_zero,
        "ddim_target": sc.ddim_target if sc.method == "ddim" else None,
        "variance": sc.variance if ddpm else None,
        "num_images": sc.num_images,
        "seed": sc.seed,
        "elapsed_s": elapsed,
        "images_per_s": sc.num_images / elapsed,
        "device": str(device),
        "compiled": nets.compiled,
        "compile_s": nets.compile_s,
        "compile_error": nets.compile_error,
        "trajectory_t": [t for t, _ in traj],
        "train_step": state["step"],
    }
