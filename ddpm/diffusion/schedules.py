"""Beta schedules by name, and the numbers that say where a schedule ends.

One function per schedule, registered by name with `@schedule`: the config's allowed values, the
generated docs and the error messages all come from that registry. All schedules give float64
betas of shape [T]; index t = 0 is the first (least noisy) step. The schedules compute in NumPy,
so that reading the registry (validating a config, planning the pipeline) never loads torch;
`make_betas` hands the result over as a torch tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_BETA = 0.999  # Nichol & Dhariwal 2021 clip betas here to avoid a singularity at t = T


@dataclass(frozen=True)
class ScheduleParams:
    """The knobs of the schedules; each schedule uses the ones it names."""

    beta_start: float = 1.0e-4
    beta_end: float = 2.0e-2
    cosine_s: float = 0.008
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0


Schedule = Callable[[int, ScheduleParams], np.ndarray]
SCHEDULES: dict[str, Schedule] = {}  # name -> betas(T, params), filled by @schedule below
# Names that meant something else once, and what to write instead.
RENAMED = {
    "scaled_linear": "rescaled_linear (the linear range times 1000 / T, improved-diffusion's "
    "`linear`); this project's scaled_linear was renamed because diffusers' scaled_linear means "
    "linear in sqrt(beta)",
}


def schedule(name: str):
    """Register a schedule function under `name` (the config's allowed values come from here)."""

    def register(fn: Schedule) -> Schedule:
        SCHEDULES[name] = fn
        return fn

    return register


def _betas_from_alpha_bar(alpha_bar: np.ndarray) -> np.ndarray:
    """betas_t = 1 - alpha_bar(t) / alpha_bar(t - 1), from alpha_bar sampled at t = 0..T."""
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], MAX_BETA)


def _linear_range(name: str, T: int, lo: float, hi: float) -> np.ndarray:
    if not 0.0 < lo < hi < 1.0:
        raise ValueError(
            f"{name} schedule with T={T} gives betas from {lo:g} to {hi:g}; "
            "they must satisfy 0 < beta_start < beta_end < 1"
        )
    return np.linspace(lo, hi, T, dtype=np.float64)


@schedule("linear")
def linear(T: int, p: ScheduleParams) -> np.ndarray:
    """beta_start..beta_end whatever T is (Ho et al. 2020; diffusers' DDPMScheduler "linear").
    With small T, alpha_bar_T stays well above 0: T = 350 ends at alpha_bar_T ~ 0.03."""
    return _linear_range("linear", T, p.beta_start, p.beta_end)


@schedule("rescaled_linear")
def rescaled_linear(T: int, p: ScheduleParams) -> np.ndarray:
    """The linear range times 1000 / T (improved-diffusion's `linear`, Nichol & Dhariwal 2021),
    so every T ends near the same alpha_bar_T; equal to `linear` at T = 1000."""
    scale = 1000.0 / T
    return _linear_range("rescaled_linear", T, scale * p.beta_start, scale * p.beta_end)


@schedule("cosine")
def cosine(T: int, p: ScheduleParams) -> np.ndarray:
    """alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) (Nichol & Dhariwal 2021, eq. 17),
    betas clipped at 0.999."""
    if not 0.0 <= p.cosine_s < 1.0:
        raise ValueError(f"cosine_s must be in [0, 1), got {p.cosine_s}")
    t = np.linspace(0, T, T + 1, dtype=np.float64) / T
    alpha_bar = np.cos((t + p.cosine_s) / (1 + p.cosine_s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(alpha_bar / alpha_bar[0])


@schedule("sigmoid")
def sigmoid(T: int, p: ScheduleParams) -> np.ndarray:
    """alpha_bar(t) follows a sigmoid between `sigmoid_start` and `sigmoid_end` with
    temperature `sigmoid_tau` (Jabri et al. 2022), betas clipped at 0.999."""
    if not p.sigmoid_start < p.sigmoid_end or p.sigmoid_tau <= 0:
        raise ValueError("sigmoid schedule needs sigmoid_start < sigmoid_end and sigmoid_tau > 0")
    t = np.linspace(0, T, T + 1, dtype=np.float64) / T
    v_start = _logistic(p.sigmoid_start / p.sigmoid_tau)
    v_end = _logistic(p.sigmoid_end / p.sigmoid_tau)
    s = _logistic((t * (p.sigmoid_end - p.sigmoid_start) + p.sigmoid_start) / p.sigmoid_tau)
    return _betas_from_alpha_bar((v_end - s) / (v_end - v_start))


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def betas_of(diffusion_cfg) -> np.ndarray:
    """The betas a `DiffusionConfig` describes, float64 [T] (NumPy: the summary and the report
    read schedules without loading torch)."""
    d = diffusion_cfg
    return schedule_betas(
        d.schedule, d.T, beta_start=d.beta_start, beta_end=d.beta_end, cosine_s=d.cosine_s
    )


def make_betas(name: str, T: int, **params: float) -> torch.Tensor:
    """The beta schedule `name` with T steps, float64 [T]; `params` are `ScheduleParams`."""
    import torch

    return torch.from_numpy(schedule_betas(name, T, **params))


def schedule_betas(name: str, T: int, **params: float) -> np.ndarray:
    """`make_betas` as a NumPy array."""
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    if name not in SCHEDULES:
        hint = f"; use {RENAMED[name]}" if name in RENAMED else ""
        raise ValueError(
            f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}{hint}"
        )
    betas = SCHEDULES[name](T, ScheduleParams(**params))
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"{name} schedule with T={T} produced betas outside (0, 1)")
    return betas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64 [T]."""
    import torch

    return torch.cumprod(1.0 - betas.double(), dim=0)


def snr(betas: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) per step, float64 [T]."""
    ab = alphas_cumprod(betas)
    return ab / (1.0 - ab)


def terminal_stats(betas) -> dict[str, float]:
    """Where the schedule ends: alpha_bar_T, the terminal SNR and its log (betas: a tensor or
    an array).

    Sampling starts from pure noise, which matches the training distribution only when
    alpha_bar_T is close to 0; values above ~1e-3 leave visible signal at t = T.
    """
    ab_T = float(np.prod(1.0 - np.asarray(betas, dtype=np.float64)))
    return {
        "alpha_bar_T": ab_T,
        "terminal_snr": ab_T / (1.0 - ab_T),
        "terminal_log_snr": math.log(ab_T) - math.log1p(-ab_T),
    }
