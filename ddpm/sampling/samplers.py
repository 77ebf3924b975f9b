"""Samplers as plain functions: DDPM ancestral sampling, DDIM and DPM-Solver++ (2M and 3M).

Every random number that sample i uses is a function of (seed, i) and its place in the chain
alone, computed on the sampling device by a counter-based generator (`SampleNoise`): image i is
the same at any batch size and on any device (up to the device's arithmetic), and no noise is
drawn on the host and copied over at each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm.data.artefacts import read_final
from ddpm.diffusion.devices import autocast
from ddpm.diffusion.model import Networks, build
from ddpm.diffusion.process import GaussianDiffusion, Model, extract
from ddpm.pipeline.config import DdimTarget, Spacing, Variance

# -- noise -----------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash with full avalanche, "lowbias32" from C. Wellons'
    hash-prospector (two xorshift-multiply rounds), on an int64 tensor of values in [0, 2^32).
    Overwrites `x` (the noise is memory-bound: temporaries cost as much as arithmetic)."""
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= x >> shift
        # x * multiplier mod 2^32, split at 16 bits so that no product exceeds 2^48: int64 has
        # no unsigned wrap-around to lean on
        low = x * (multiplier & 0xFFFF)
        x.mul_(multiplier >> 16).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
        x.add_(low).bitwise_and_(_M32)
    x ^= x >> 16
    return x


def sample_keys(seed: int, indices: Sequence[int]) -> torch.Tensor:
    """Two 32-bit words per sample, [len(indices) x 2] int64, from NumPy's SeedSequence of
    (seed, index): independent streams for every sample."""
    words = [np.random.SeedSequence([seed, i]).generate_state(2) for i in indices]
    return torch.tensor(np.array(words, dtype=np.int64).reshape(-1, 2))


class SampleNoise:
    """Successive draws of N(0, I) noise [B x *shape] for a batch of samples, made on `device`.

    Element j of draw k of sample i is a Box-Muller transform of two uniforms, hashes of the
    hashed counters 2j and 2j + 1 with a stream number that hashes (the key of (seed, i), k).
    The integer hashing is exact on every device, so only the float transform's last bits can
    differ between CPU and GPU; sample i's k-th draw is the same whichever batch it is in."""

    def __init__(
        self, seed: int, indices: Sequence[int], shape: tuple[int, ...], device: torch.device
    ):
        self.shape, self.device, self.draws = tuple(shape), device, 0
        self.keys = sample_keys(seed, indices).to(device)  # (B, 2)
        j = torch.arange(math.prod(shape), device=device, dtype=torch.int64)
        self._counters = (mix32(2 * j), mix32(2 * j + 1))  # shared by every sample and draw

    def __call__(self) -> torch.Tensor:
        k = torch.full_like(self.keys[:, 0], self.draws)
        self.draws += 1
        stream = mix32(self.keys[:, 0] ^ mix32(self.keys[:, 1] ^ mix32(k)))[:, None]  # (B, 1)
        u1, u2 = (
            mix32(c[None] ^ stream).double().add_(0.5).div_(2**32)  # (B, numel) in (0, 1)
            for c in self._counters
        )
        z = u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2.0 * math.pi).cos_())
        return z.float().view(-1, *self.shape)


@dataclass
class SampleResult:
    images: torch.Tensor  # [N x C x H x W] in [-1, 1], float32, on the sampling device
    nfe: int  # network evaluations per image
    trajectory: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (t, x_t on CPU)


Step = Callable[[torch.Tensor, int, int], torch.Tensor]  # (x_t, t, t_prev) -> x_{t_prev}


def _run_chain(
    timesteps: list[int],
    step: Step,
    noise: SampleNoise,
    record: Sequence[int],
    bars: bool,
    desc: str,
) -> SampleResult:
    """Start from x_T ~ N(0, I) and apply `step(x, t, t_prev)` for each t (descending)."""
    x = noise()
    record = set(record)
    trajectory = []
    prevs = timesteps[1:] + [-1]
    for t, t_prev in tqdm(
        list(zip(timesteps, prevs, strict=True)), desc=desc, disable=not bars, leave=False
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
    bars: bool = False,
) -> SampleResult:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    Sample j of the batch uses the generator of (seed, indices[j]).
    `record` lists timesteps whose x_t goes into the trajectory.
    x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), with no noise at the last step.
    """
    device = torch.device(device)
    noise = SampleNoise(seed, indices, shape, device)

    def step(x, t, t_prev):
        t_vec = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        out = diffusion.p_mean_variance(model, x, t_vec, clip_denoised, variance)
        if t == 0:
            return out["mean"]
        return out["mean"] + (0.5 * out["log_variance"]).exp() * noise()

    return _run_chain(list(range(diffusion.T - 1, -1, -1)), step, noise, record, bars, "ddpm")


def chain_timesteps(
    T: int, steps: int, spacing: Spacing = "linspace", call_at_zero: bool = True
) -> list[int]:
    """The `steps` timesteps at which DDIM or DPM-Solver++ calls the network, descending (the
    chain then steps to x_0), placed as diffusers' DDIMScheduler places them (Lin et al. 2024,
    table 2): `linspace` rounds an even spread from T-1 to 0 (both included); `leading` takes
    the multiples of T // steps from 0 (so it never starts at T-1); `trailing` steps down from
    T-1 in strides of T / steps, rounded (so it ends above 0 unless steps = T).

    Without `call_at_zero`, `linspace` and `leading` place steps + 1 points and drop t = 0, as
    diffusers' DPMSolverMultistepScheduler does."""
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in 1..{T}, got {steps}")
    if not call_at_zero and spacing != "trailing":
        if steps >= T:
            raise ValueError(f"without a call at t = 0, steps must be under T = {T}")
        return chain_timesteps(T, steps + 1, spacing)[:-1]
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()
    elif spacing == "leading":
        ts = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(T - np.arange(steps) * (T / steps)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose linspace, leading or trailing")
    return sorted({int(t) for t in ts}, reverse=True)


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
    spacing: Spacing = "linspace",
    call_at_zero: bool = True,
    target: DdimTarget = "next",
    device: torch.device | str = "cpu",
    clip_denoised: bool = True,
    record: Sequence[int] = (),
    bars: bool = False,
) -> SampleResult:
    """DDIM (Song et al. 2021, eq. 12) on `steps` of the T timesteps (`chain_timesteps`).

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); eta = 0 is deterministic.
    Each step lands on the chain's next timestep (`target="next"`, the paper's sub-sequence) or
    on t - T // steps (`"stride"`, diffusers' DDIMScheduler); a step below t = 0 gives x_0.
    """
    device = torch.device(device)
    noise = SampleNoise(seed, indices, shape, device)
    ab = diffusion.alphas_cumprod

    def step(x, t, t_prev):
        t_vec = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        eps, x0 = diffusion.model_predictions(model, x, t_vec, clip_denoised)
        ab_t = extract(ab, t_vec, x)
        if target == "stride":
            t_prev = t - diffusion.T // steps
        if t_prev < 0:
            return x0
        ab_prev = extract(ab, torch.full_like(t_vec, t_prev), x)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * noise()
        return x_prev

    if target not in ("next", "stride"):
        raise ValueError(f"unknown DDIM target {target!r}; choose next or stride")
    timesteps = chain_timesteps(diffusion.T, steps, spacing, call_at_zero)
    return _run_chain(timesteps, step, noise, record, bars, "ddim")


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    seed: int,
    indices: Sequence[int],
    shape: tuple[int, int, int],
    *,
    steps: int,
    order: int = 2,
    spacing: Spacing = "linspace",
    call_at_zero: bool = True,
    lower_order_final: bool = True,
    device: torch.device | str = "cpu",
    clip_denoised: bool = True,
    record: Sequence[int] = (),
    bars: bool = False,
) -> SampleResult:
    """DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095), multistep, on the data prediction:
    order 2 is their Algorithm 2 ("2M"), order 3 the third-order multistep update.

    With lambda = log(alpha / sigma) and h the step in lambda, each step is the exact solution
    of the diffusion ODE for x_0 predictions that are polynomial in lambda, fitted to the last
    `order` predictions:
      x_next = (sigma_next / sigma) x - alpha_next (e^-h - 1) D0 (- ... D1, D2 terms),
    where D0 is the newest x_0 prediction and D1, D2 finite differences of the older ones
    (diffusers' `multistep_dpm_solver_*_order_update`, midpoint form). The first steps use the
    orders their history allows; the last step, to t = 0's clean sample (sigma = 0), reduces to
    the newest x_0 prediction at every order; with `lower_order_final`, chains of under 15 steps
    are at most second order at the step before it, as in diffusers.
    """
    if order not in (2, 3):
        raise ValueError(f"DPM-Solver++ order must be 2 or 3, got {order}")
    device = torch.device(device)
    noise = SampleNoise(seed, indices, shape, device)
    timesteps = chain_timesteps(diffusion.T, steps, spacing, call_at_zero)
    ab = diffusion.alphas_cumprod.to(device)
    alpha, sigma = ab.sqrt(), (1.0 - ab).sqrt()
    lam = alpha.log() - sigma.log()
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (lambda, x_0 prediction), newest last

    def step(x, t, t_prev):
        t_vec = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        _, x0 = diffusion.model_predictions(model, x, t_vec, clip_denoised)
        if t_prev < 0:
            return x0
        history.append((lam[t], x0))
        del history[:-order]
        k = len(history)
        if lower_order_final and len(timesteps) < 15 and t_prev == timesteps[-1]:
            k = min(k, 2)
        h = lam[t_prev] - lam[t]
        out = _multistep(x, history, k, h, alpha[t_prev], sigma[t_prev] / sigma[t])
        return out.to(x.dtype)

    return _run_chain(timesteps, step, noise, record, bars, f"dpm-solver++({order}m)")


def _multistep(x, history, k: int, h, alpha_next, sigma_ratio) -> torch.Tensor:
    """One DPM-Solver++ step of order `k` from `x` over `h` in lambda, given the (lambda, x_0
    prediction) history, newest last."""
    x0 = history[-1][1]
    phi = torch.expm1(-h)  # e^-h - 1
    a = alpha_next
    out = sigma_ratio * x - a * phi * x0
    if k == 1:
        return out
    (l1, m1), (l0, m0) = history[-2], history[-1]
    r0 = (l0 - l1) / h
    d1_0 = (m0 - m1) / r0
    if k == 2:
        return out - 0.5 * a * phi * d1_0
    l2, m2 = history[-3]
    r1 = (l1 - l2) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return out + a * (phi / h + 1.0) * d1 - a * ((phi + h) / h**2 - 0.5) * d2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], clamped and rounded (never wrapped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# -- the sample stage ----------------------------------------------------------------------------


def load_network(
    ckpt_path: str | Path, device: torch.device, expected: dict | None = None
) -> tuple[Networks, dict]:
    """The EMA network of `final.pt`, built from the training settings stored in it, with its
    diffusion, and the file's contents (`expected`: see `layout.read_final`). Sampling needs no
    training settings of its own."""
    from ddpm.pipeline.stages import get_stage, job_config

    state = read_final(ckpt_path, expected)
    train_cfg = job_config(get_stage("train"), state["settings"])
    nets = build(
        train_cfg.model, train_cfg.diffusion, state["image_size"], device, weights=state["ema"]
    )
    return nets, state


def run_chain(
    nets: Networks, sc, indices, shape, device: torch.device, record: Sequence[int] = ()
) -> SampleResult:
    """The samples `indices` under the `sample.*` settings `sc` (method, steps, eta, variance,
    clipping, seed, precision), recording x_t at the timesteps in `record`."""
    with autocast(device, sc.precision), torch.inference_mode():
        if sc.method == "ddpm":
            return ddpm_sample(
                nets.net,
                nets.diffusion,
                sc.seed,
                indices,
                shape,
                device=device,
                variance=sc.variance,
                clip_denoised=sc.clip_denoised,
                record=record,
            )
        common = {
            "steps": sc.steps or nets.diffusion.T,
            "spacing": sc.spacing,
            "call_at_zero": sc.call_at_zero,
            "device": device,
            "clip_denoised": sc.clip_denoised,
            "record": record,
        }
        if sc.method == "ddim":
            net, diffusion = nets.net, nets.diffusion
            extra = {"eta": sc.eta, "target": sc.ddim_target}
            return ddim_sample(net, diffusion, sc.seed, indices, shape, **extra, **common)
        order = {"dpmpp-2m": 2, "dpmpp-3m": 3}[sc.method]
        return dpm_solver_sample(
            nets.net,
            nets.diffusion,
            sc.seed,
            indices,
            shape,
            order=order,
            lower_order_final=sc.lower_order_final,
            **common,
        )


def sample_batches(
    nets: Networks, sc, size: int, device: torch.device, desc: str, bars: bool = True
) -> tuple[torch.Tensor, int]:
    """`sc.num_images` samples as uint8 on the CPU, `sc.batch_size` per chain, and the network
    evaluations each took. A compiled network runs the last chain at the full batch too (a
    smaller one would compile it again for that shape) and its extra samples are dropped: each
    sample's noise is its own, whatever chain it is in."""
    shape = (3, size, size)
    images = torch.empty((sc.num_images, *shape), dtype=torch.uint8)
    width = min(sc.batch_size, sc.num_images)  # the batch `compile_` compiled for
    nfe = 0
    with tqdm(total=sc.num_images, unit="img", desc=desc, disable=not bars) as bar:
        for lo in range(0, sc.num_images, sc.batch_size):
            hi = min(lo + sc.batch_size, sc.num_images)
            chain = range(lo, lo + width) if nets.compiled else range(lo, hi)
            result = run_chain(nets, sc, chain, shape, device)
            images[lo:hi] = to_uint8(result.images[: hi - lo]).cpu()
            nfe = result.nfe
            bar.update(hi - lo)
    return images, nfe
