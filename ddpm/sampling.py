"""Samplers as plain functions: DDPM ancestral sampling and DDIM.

Every random number that sample i uses comes from its own generator seeded by (seed, i), and
noise is drawn on the CPU, so image i is the same at any batch size and on any device (up to
the device's arithmetic).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.devices import autocast, select_device
from ddpm.diffusion import GaussianDiffusion, Model, Variance, build_diffusion, extract
from ddpm.errors import PipelineError
from ddpm.files import atomic_write_bytes, atomic_write_json, load_torch
from ddpm.images import save_grid
from ddpm.unet import build_unet


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of sample `index` under `seed`, independent of every other sample."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _randn(gens: Sequence[torch.Generator], shape, device) -> torch.Tensor:
    """One draw of N(0, I) of `shape` per generator, stacked: [len(gens) x *shape]."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


@dataclass
class SampleResult:
    images: torch.Tensor  # [N x C x H x W] in [-1, 1], float32, on the sampling device
    nfe: int  # network evaluations per image
    trajectory: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (t, x_t on CPU)


Step = Callable[[torch.Tensor, int, int], torch.Tensor]  # (x_t, t, t_prev) -> x_{t_prev}


def _run_chain(
    timesteps: list[int],
    step: Step,
    gens: list[torch.Generator],
    shape: tuple[int, int, int],
    device: torch.device,
    record: Sequence[int],
    progress: bool,
    desc: str,
) -> SampleResult:
    """Start from x_T ~ N(0, I) and apply `step(x, t, t_prev)` for each t (descending)."""
    x = _randn(gens, shape, device)
    record = set(record)
    trajectory = []
    prevs = timesteps[1:] + [-1]
    for t, t_prev in tqdm(
        list(zip(timesteps, prevs, strict=True)), desc=desc, disable=not progress, leave=False
    ):
        if t in record:
            trajectory.append((t, x.detach().float().cpu()))
        x = step(x, t, t_prev)
    trajectory.append((-1, x.detach().float().cpu()))  # t = -1: the final sample x_0
    return SampleResult(images=x, nfe=len(timesteps), trajectory=trajectory)


@torch.no_grad()
def ddpm_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    seed: int,
    indices: Sequence[int],
    shape: tuple[int, int, int],
    *,
    device: torch.device | str = "cpu",
    variance: Variance = "beta_tilde",
    clip_denoised: bool = True,
    record: Sequence[int] = (),
    progress: bool = False,
) -> SampleResult:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    Sample j of the batch uses the generator of (seed, indices[j]).
    `record` lists timesteps whose x_t goes into the trajectory.
    x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), with no noise at the last step.
    """
    device = torch.device(device)
    gens = [sample_generator(seed, i) for i in indices]

    def step(x, t, t_prev):
        t_vec = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        out = diffusion.p_mean_variance(model, x, t_vec, clip_denoised, variance)
        if t == 0:
            return out["mean"]
        return out["mean"] + (0.5 * out["log_variance"]).exp() * _randn(gens, shape, device)

    return _run_chain(
        list(range(diffusion.T - 1, -1, -1)), step, gens, shape, device, record, progress, "ddpm"
    )


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` timesteps spread evenly over 0..T-1, descending, always including T-1 and 0."""
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be in 1..{T}, got {steps}")
    ts = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(int))
    return [int(t) for t in ts[::-1]]


@torch.no_grad()
def ddim_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    seed: int,
    indices: Sequence[int],
    shape: tuple[int, int, int],
    *,
    steps: int,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    clip_denoised: bool = True,
    record: Sequence[int] = (),
    progress: bool = False,
) -> SampleResult:
    """DDIM (Song et al. 2021, eq. 12) on `steps` of the T timesteps.

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); eta = 0 is deterministic.
    """
    device = torch.device(device)
    gens = [sample_generator(seed, i) for i in indices]
    ab = diffusion.alphas_cumprod

    def step(x, t, t_prev):
        t_vec = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        eps, x0 = diffusion.model_predictions(model, x, t_vec, clip_denoised)
        ab_t = extract(ab, t_vec, x)
        if t_prev < 0:
            return x0
        ab_prev = extract(ab, torch.full_like(t_vec, t_prev), x)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * _randn(gens, shape, device)
        return x_prev

    return _run_chain(
        ddim_timesteps(diffusion.T, steps), step, gens, shape, device, record, progress, "ddim"
    )


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], clamped and rounded (never wrapped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# -- the sample stage ----------------------------------------------------------------------------


GRID_IMAGES = 64  # samples in grid.png (the report draws its own grids from samples.npz)


def load_final(path: str | Path) -> dict:
    """A network's final.pt (EMA weights and the training settings), checked."""
    state = load_torch(
        path,
        PipelineError,
        missing="train the network first",
        damaged="Train the network again (or restore final.pt, e.g. `dvc pull`).",
    )
    if not isinstance(state, dict) or not {"ema", "settings", "image_size", "step"} <= set(state):
        raise PipelineError(
            f"{path} is not a final.pt written by `python -m ddpm train` of this version; "
            "train the network again"
        )
    return state


def load_network(ckpt_path: str | Path, device: torch.device):
    """The EMA network of `final.pt`, built from the training settings stored in it, and its
    diffusion: (model, diffusion, state). Sampling needs no training settings of its own."""
    from ddpm.stages import get_stage, job_config

    state = load_final(ckpt_path)
    train_cfg = job_config(get_stage("train"), state["settings"])
    model = build_unet(train_cfg.model, state["image_size"])
    model.load_state_dict(state["ema"])
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, build_diffusion(train_cfg.diffusion).to(device), state


def generate(cfg, variant: str, ckpt_path, out_dir, progress: bool = True) -> dict:
    """The `sample` stage: EMA weights from `final.pt` -> samples.npz, grid.png, trajectory.png
    and sample_summary.json in `out_dir`, with the `sample.*` settings of `cfg`. Returns the
    summary."""
    out_dir = Path(out_dir)
    sc = cfg.sample
    device = select_device(sc.device, exclusive=True)
    model, diffusion, state = load_network(ckpt_path, device)
    size = state["image_size"]
    shape = (3, size, size)
    T = diffusion.T
    if sc.steps is not None and sc.steps > T:
        raise PipelineError(
            f"sample.steps: {sc.steps} exceeds the network's T ({T}) in {ckpt_path}"
        )
    steps = sc.steps or T
    # Trajectory: evenly spaced timesteps of the chain that this sampler visits.
    visited = list(range(T - 1, -1, -1)) if sc.method == "ddpm" else ddim_timesteps(T, steps)
    picks = np.unique(np.linspace(0, len(visited) - 1, sc.trajectory_points - 1).round())
    record = [visited[int(i)] for i in picks]

    def run(indices, record=()):
        with autocast(device, sc.precision), torch.inference_mode():
            if sc.method == "ddpm":
                return ddpm_sample(
                    model,
                    diffusion,
                    sc.seed,
                    indices,
                    shape,
                    device=device,
                    variance=sc.variance,
                    clip_denoised=sc.clip_denoised,
                    record=record,
                )
            return ddim_sample(
                model,
                diffusion,
                sc.seed,
                indices,
                shape,
                steps=steps,
                eta=sc.eta,
                device=device,
                clip_denoised=sc.clip_denoised,
                record=record,
            )

    images = torch.empty((sc.num_images, *shape), dtype=torch.uint8)
    start = time.perf_counter()
    nfe = 0
    with tqdm(
        total=sc.num_images, unit="img", desc=f"sample {variant}", disable=not progress
    ) as bar:
        for lo in range(0, sc.num_images, sc.batch_size):
            hi = min(lo + sc.batch_size, sc.num_images)
            result = run(range(lo, hi))
            images[lo:hi] = to_uint8(result.images).cpu()
            nfe = result.nfe
            bar.update(hi - lo)
    elapsed = time.perf_counter() - start
    traj = run(range(min(sc.trajectory_images, sc.num_images)), record=record).trajectory
    # trajectory.png: one row per sample, columns from pure noise (left) to the sample (right).
    strip = torch.stack([to_uint8(x) for _, x in traj], dim=1)  # (n, points, 3, S, S)

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.numpy(), seed=sc.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "samples.npz", buf.getvalue())
    save_grid(images[:GRID_IMAGES], out_dir / "grid.png")
    save_grid(strip.flatten(0, 1), out_dir / "trajectory.png", nrow=strip.shape[1])
    summary = {
        "variant": variant,
        "network": state["network"],
        "method": sc.method,
        "steps": nfe,
        "nfe_per_image": nfe,
        "eta": sc.eta if sc.method == "ddim" else None,
        "variance": sc.variance if sc.method == "ddpm" else None,
        "num_images": sc.num_images,
        "seed": sc.seed,
        "elapsed_s": elapsed,
        "images_per_s": sc.num_images / elapsed,
        "device": str(device),
        "trajectory_t": [t for t, _ in traj],
        "train_step": state["step"],
    }
    atomic_write_json(out_dir / "sample_summary.json", summary)
    return summary
