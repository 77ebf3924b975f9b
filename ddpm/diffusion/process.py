"""The Gaussian diffusion process (Ho et al. 2020): forward noising, posterior, training loss.

`GaussianDiffusion` knows the schedule and the parameterisation; it never knows the network's
architecture. The network is any callable `model(x_t, t_in) -> [N x C x H x W]` where `t_in` is
the timestep normalised to (0, 1] (`scale_timesteps`), so an embedding means the same fraction
of the process whatever T is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.diffusion.schedules import betas_of
from ddpm.pipeline.config import LossWeighting, Objective, Variance

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(a: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather a[t] for each sample and shape it [N x 1 x 1 x 1] to broadcast against `like`."""
    out = a.to(like.device)[t].to(like.dtype)
    return out.view(t.shape[0], *([1] * (like.dim() - 1)))


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t | x_0), posterior q(x_{t-1} | x_t, x_0) and the DDPM loss.

    Buffers are float64 and non-persistent (they are derived from `betas`); `.to(device)`
    moves them. Timesteps t are integer indices 0..T-1 (t = 0 is the first noising step).
    """

    def __init__(
        self,
        betas: torch.Tensor,
        objective: Objective = "eps",
        loss_weighting: LossWeighting = "uniform",
        min_snr_gamma: float = 5.0,
    ):
        super().__init__()
        if objective not in get_args(Objective):
            raise ValueError(
                f"unknown objective {objective!r}; choose {', '.join(get_args(Objective))}"
            )
        if loss_weighting not in get_args(LossWeighting):
            raise ValueError(
                f"unknown loss weighting {loss_weighting!r}; choose "
                + ", ".join(get_args(LossWeighting))
            )
        betas = betas.double()
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        self.T = betas.shape[0]
        self.objective = objective
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
            "posterior_variance": posterior_variance,
            # The variance is 0 at t = 0: log-clip with the next value, as improved-diffusion does.
            "posterior_log_variance_clipped": torch.log(
                torch.cat([posterior_variance[1:2], posterior_variance[1:]])
            ),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * alphas.sqrt()
            / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    # -- the network's view of time ------------------------------------------------------------

    def scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map integer t in 0..T-1 to (t + 1) / T in (0, 1]: the fraction of the process done."""
        return (t.float() + 1.0) / self.T

    # -- forward process -----------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t) * x_start
            + extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            extract(self.posterior_variance, t, x_t),
            extract(self.posterior_log_variance_clipped, t, x_t),
        )

    # -- conversions between parameterisations -------------------------------------------------

    def predict_start_from_noise(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (eq. 4 solved for x_0)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_noise_from_start(self, x_t, t, x_start):
        """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_v(self, x_start, t, eps):
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start) * eps
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    def predict_start_from_v(self, x_t, t, v):
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def model_predictions(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network once and return (eps, x_0) whatever it predicts.

        With `clip_denoised`, x_0 is clipped to [-1, 1] and eps recomputed from the clipped x_0,
        so samplers that use either stay consistent.
        """
        out = model(x_t, self.scale_timesteps(t)).to(x_t.dtype)
        if self.objective == "eps":
            x_start = self.predict_start_from_noise(x_t, t, out)
        elif self.objective == "x0":
            x_start = out
        else:
            x_start = self.predict_start_from_v(x_t, t, out)
        if clip_denoised:
            x_start = x_start.clamp(-1.0, 1.0)
        if self.objective == "eps" and not clip_denoised:
            return out, x_start
        return self.predict_noise_from_start(x_t, t, x_start), x_start

    # -- reverse process -----------------------------------------------------------------------

    def p_mean_variance(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        variance: Variance = "beta_tilde",
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): the predicted x_0 plugged into the posterior mean (eq. 7), with the
        fixed variance beta_tilde_t (posterior) or beta_t (Ho et al. 2020, sec. 3.2).

        Returns dict(mean, variance, log_variance, pred_x0, eps), each [N x C x H x W] or
        broadcastable to it.
        """
        eps, x_start = self.model_predictions(model, x_t, t, clip_denoised)
        mean, post_var, post_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        if variance == "beta":
            # beta_0 would make the last step noisier than the data; use the posterior one there.
            betas = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            var = extract(betas, t, x_t)
            log_var = var.log()
        else:
            var, log_var = post_var, post_log_var
        return {
            "mean": mean,
            "variance": var,
            "log_variance": log_var,
            "pred_x0": x_start,
            "eps": eps,
        }

    # -- training ------------------------------------------------------------------------------

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the MSE in the objective's own space, float64 [N].

        min-SNR-gamma (Hang et al. 2023) weighs x_0-space errors by min(SNR, gamma); expressed in
        eps space that is min(SNR, gamma) / SNR, in v space min(SNR, gamma) / (SNR + 1).
        """
        if self.loss_weighting == "uniform":
            return torch.ones_like(t, dtype=torch.float64)
        snr = self.snr.to(t.device)[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[self.objective]

    def training_loss(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss ||target - model(x_t, t)||^2 averaged over pixels, weighted ([N]).

        t ~ U{0..T-1} and noise ~ N(0, I) are drawn with `generator` unless given.
        Returns dict(loss [N], t [N]).
        """
        n = x_start.shape[0]
        if t is None:
            t = torch.randint(0, self.T, (n,), device=x_start.device, generator=generator)
        if noise is None:
            noise = torch.randn(
                x_start.shape, device=x_start.device, dtype=x_start.dtype, generator=generator
            )
        x_t = self.q_sample(x_start, t, noise)
        if self.objective == "eps":
            target = noise
        elif self.objective == "x0":
            target = x_start
        else:
            target = self.predict_v(x_start, t, noise)
        out = model(x_t, self.scale_timesteps(t))
        mse = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return {"loss": mse * self.loss_weight(t).to(mse.dtype), "t": t}


def build_diffusion(cfg) -> GaussianDiffusion:
    """A `GaussianDiffusion` from a `DiffusionConfig`."""
    betas = torch.from_numpy(betas_of(cfg))
    return GaussianDiffusion(betas, cfg.objective, cfg.loss_weighting, cfg.min_snr_gamma)
