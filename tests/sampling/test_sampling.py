import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from scipy import stats

from ddpm.diffusion.presets import UNetSpec
from ddpm.diffusion.process import GaussianDiffusion
from ddpm.diffusion.schedules import make_betas
from ddpm.diffusion.unet import UNet
from ddpm.sampling.samplers import (
    SampleNoise,
    chain_timesteps,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    mix32,
    to_uint8,
)

PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# diffusers' set_timesteps passes a torch tensor to np.array, which NumPy 2 warns about
THEIR_NUMPY_WARNING = "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"


def oracle_for(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """A 'network' that returns the exact noise of x_t given that the data is x0."""

    def model(x_t, t_in):
        t = (t_in * diffusion.T - 1).round().long()
        ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        return (x_t - ab.sqrt() * x0[: x_t.shape[0]]) / (1 - ab).sqrt()

    return model


def test_ddim_eta0_with_oracle_recovers_x0():
    d = GaussianDiffusion(make_betas("cosine", 200))
    x0 = torch.rand(3, 3, 8, 8) * 1.8 - 0.9
    out = ddim_sample(oracle_for(d, x0), d, 0, range(3), (3, 8, 8), steps=20, eta=0.0)
    torch.testing.assert_close(out.images, x0, atol=1e-4, rtol=0)
    assert out.nfe == 20


def test_ddpm_with_oracle_lands_near_x0():
    d = GaussianDiffusion(make_betas("linear", 100))
    x0 = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    out = ddpm_sample(oracle_for(d, x0), d, 0, range(2), (3, 8, 8))
    # the last steps add noise of std sqrt(beta_tilde) ~ 1e-2, so x0 is recovered closely
    assert (out.images - x0).abs().max().item() < 0.1
    assert out.nfe == 100


def tiny_model():
    torch.manual_seed(0)
    model = UNet(
        UNetSpec(
            image_size=8,
            base_channels=16,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            dropout=0.0,
        )
    )
    # zero-initialised output layers would make every sample look the same; perturb them
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def test_samples_do_not_depend_on_batch_size():
    d = GaussianDiffusion(make_betas("linear", 20))
    model = tiny_model()
    for sampler, kw in ((ddpm_sample, {}), (ddim_sample, {"steps": 5, "eta": 1.0})):
        full = sampler(model, d, 7, range(4), (3, 8, 8), **kw).images
        ones = torch.cat([sampler(model, d, 7, [i], (3, 8, 8), **kw).images for i in range(4)])
        torch.testing.assert_close(full, ones, atol=1e-5, rtol=0)
        other_seed = sampler(model, d, 8, range(4), (3, 8, 8), **kw).images
        assert (full - other_seed).abs().max().item() > 1e-2


def test_trajectory_records_requested_steps():
    d = GaussianDiffusion(make_betas("linear", 20))
    out = ddpm_sample(tiny_model(), d, 0, range(2), (3, 8, 8), record=[19, 10, 0])
    assert [t for t, _ in out.trajectory] == [19, 10, 0, -1]
    torch.testing.assert_close(out.trajectory[-1][1], out.images)


@pytest.mark.filterwarnings(THEIR_NUMPY_WARNING)
def test_chain_timesteps_are_diffusers_spacings():
    assert chain_timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = chain_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    for spacing in ("linspace", "leading", "trailing"):
        for T, steps in ((1000, 10), (1000, 25), (1000, 3), (350, 20), (20, 7), (20, 20), (7, 1)):
            theirs = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
            theirs.set_timesteps(steps)
            ours = chain_timesteps(T, steps, spacing)
            assert ours == theirs.timesteps.tolist(), (spacing, T, steps)
            assert len(ours) == steps
            if steps < T:  # without a call at t = 0: diffusers' DPM-Solver placement
                theirs = DPMSolverMultistepScheduler(
                    num_train_timesteps=T, timestep_spacing=spacing
                )
                theirs.set_timesteps(steps)
                ours = chain_timesteps(T, steps, spacing, call_at_zero=False)
                assert ours == theirs.timesteps.tolist(), (spacing, T, steps)
                assert len(ours) == steps and 0 not in ours
    with pytest.raises(ValueError, match="spacing"):
        chain_timesteps(10, 5, "uniform")
    with pytest.raises(ValueError, match="under T = 10"):
        chain_timesteps(10, 10, "linspace", call_at_zero=False)


# -- the same chains as diffusers' schedulers --------------------------------------------------
# Whole chains, driven by one smooth, non-linear stand-in for a network, against diffusers'
# schedulers stepping the same network from the same x_T. diffusers keeps its schedule in
# float32 (near t = 0, 1 - alpha_bar then has a relative error of 1e-4 or more); the test gives
# it this schedule in float64, as set_timesteps would compute it without the cast. Its step
# still rounds x_t to float32, as ours does (images are float32), so the chains agree to float32
# precision: 2e-5 over up to 20 steps, where a different order, step or coefficient anywhere
# differs by 1e-3 or more.


def stand_in(x, t_in):
    return torch.tanh(1.5 * x) * torch.cos(3.0 * t_in).view(-1, 1, 1, 1) + 0.3 * x.roll(1, -1)


def _float64_schedule(scheduler, diffusion):
    ab = diffusion.alphas_cumprod.clone()
    scheduler.alphas_cumprod = ab
    if hasattr(scheduler, "lambda_t"):
        scheduler.alpha_t, scheduler.sigma_t = ab.sqrt(), (1 - ab).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()


def _their_chain(scheduler, diffusion, x, timesteps, **step_kwargs):
    for t in timesteps:
        t_vec = torch.full((x.shape[0],), int(t), dtype=torch.long)
        out = stand_in(x, diffusion.scale_timesteps(t_vec))
        x = scheduler.step(out, int(t), x, **step_kwargs).prev_sample
    return x


@pytest.mark.filterwarnings(THEIR_NUMPY_WARNING)
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize(("order", "steps"), [(2, 8), (2, 20), (3, 8), (3, 20)])
@pytest.mark.parametrize(("call_at_zero", "clip"), [(True, False), (False, False), (False, True)])
def test_dpm_solver_equals_diffusers_on_whole_chains(
    objective, spacing, order, steps, call_at_zero, clip
):
    """Orders 2 and 3, below 15 steps (lower-order final steps) and above, each spacing and
    objective. With a call at t = 0 (our default), diffusers is given our timesteps; without it,
    diffusers places its own (steps + 1 points less t = 0) and they are ours. Clipping x_0 to
    [-1, 1] is diffusers' dynamic thresholding with a maximum of 1."""
    T, shape = 200, (3, 8, 8)
    # not cosine: its alpha_T of 1e-4 makes eps -> x_0 multiply float32 rounding by 1e4
    d = GaussianDiffusion(make_betas("linear", T), objective=objective)

    def ours(**kwargs):
        settings = {"steps": steps, "spacing": spacing, "call_at_zero": call_at_zero, **kwargs}
        return dpm_solver_sample(stand_in, d, 3, range(2), shape, **settings).images

    mine = ours(order=order, clip_denoised=clip)
    ts = chain_timesteps(T, steps, spacing, call_at_zero)
    theirs = DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=d.betas.numpy(),
        solver_order=order,
        prediction_type=PREDICTION[objective],
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing=spacing,
        thresholding=clip,
        sample_max_value=1.0,
    )
    _float64_schedule(theirs, d)
    if call_at_zero:
        theirs.set_timesteps(timesteps=ts)
    else:
        theirs.set_timesteps(steps)
        assert theirs.timesteps.tolist() == ts
    ab = d.alphas_cumprod[ts]
    theirs.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=ab.dtype)])
    x_T = SampleNoise(3, range(2), shape, torch.device("cpu"))()
    expected = _their_chain(theirs, d, x_T, ts)
    torch.testing.assert_close(mine, expected, atol=2e-5, rtol=2e-5)
    # each setting changes the chain: a test that ignored one would fail above
    assert (mine - ours(order=5 - order, clip_denoised=clip)).abs().max() > 1e-3
    assert (mine - ours(order=order, clip_denoised=not clip)).abs().max() > 1e-3
    other = ours(order=order, clip_denoised=clip, call_at_zero=not call_at_zero)
    assert (mine - other).abs().max() > 1e-3 or spacing == "trailing"


@pytest.mark.filterwarnings(THEIR_NUMPY_WARNING)
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize(
    ("spacing", "T", "steps", "target"),
    [
        ("leading", 200, 8, "next"),
        ("leading", 350, 20, "next"),
        ("trailing", 200, 8, "next"),
        ("linspace", 12, 12, "next"),
        ("linspace", 200, 8, "stride"),
        ("linspace", 350, 20, "stride"),
        ("trailing", 200, 7, "stride"),
    ],
)
def test_ddim_equals_diffusers_on_whole_chains(objective, clip, spacing, T, steps, target):
    """diffusers' DDIM steps from t to t - T // steps (`target="stride"`). That is the chain's
    next timestep (our default, the paper's) for `leading`, for `trailing` when steps divides T,
    and for `linspace` only when steps = T: otherwise its `linspace` chain lands on timesteps it
    never calls the network at, and its `trailing` chain at 7 of 200 steps ends at t = 0, one
    step short of the clean sample. Clipping x_0 is diffusers' `clip_sample` with eps re-derived
    from the clipped x_0 (`use_clipped_model_output`, as GLIDE and improved-diffusion do)."""
    shape = (3, 8, 8)
    d = GaussianDiffusion(make_betas("linear", T), objective=objective)

    def ours(target):
        settings = {"steps": steps, "spacing": spacing, "clip_denoised": clip}
        return ddim_sample(stand_in, d, 5, range(2), shape, target=target, **settings).images

    mine = ours(target)
    theirs = DDIMScheduler(
        num_train_timesteps=T,
        trained_betas=d.betas.numpy(),
        prediction_type=PREDICTION[objective],
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    )
    _float64_schedule(theirs, d)
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == chain_timesteps(T, steps, spacing)
    x_T = SampleNoise(5, range(2), shape, torch.device("cpu"))()
    expected = _their_chain(theirs, d, x_T, theirs.timesteps, use_clipped_model_output=True)
    torch.testing.assert_close(mine, expected, atol=2e-5, rtol=2e-5)
    if target == "stride":  # only these cases tell the two targets apart
        assert (mine - ours("next")).abs().max() > 1e-3


def test_to_uint8_clamps_instead_of_wrapping():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]


# -- the noise ------------------------------------------------------------------------------------


def _mix32_reference(x: int) -> int:
    """lowbias32 in plain Python integers, masked to 32 bits after each operation."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_the_hash_equals_its_plain_integer_definition():
    rng = np.random.default_rng(0)
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *rng.integers(0, 2**32, 1000).tolist()]
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_mix32_reference(v) for v in values]
    assert len(set(got)) == len(values)  # a bijection: no collisions


def test_noise_is_standard_normal_and_independent():
    noise = SampleNoise(3, range(64), (3, 16, 16), torch.device("cpu"))
    a, b = noise(), noise()  # (64, 3, 16, 16) each: 49,152 values
    z = torch.cat([a, b]).flatten().double().numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs((np.abs(z) > 3).mean() - 2 * stats.norm.sf(3)) < 1e-3

    def corr(x, y):
        return np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]

    # Successive draws, neighbouring samples, neighbouring pixels, channels: uncorrelated.
    for x, y in ((a, b), (a[:-1], a[1:]), (a[..., :-1], a[..., 1:]), (a[:, 0], a[:, 1])):
        assert abs(corr(x, y)) < 0.03


def test_a_samples_noise_depends_on_its_seed_and_index_only():
    cpu = torch.device("cpu")
    batch = SampleNoise(7, [3, 4, 5], (3, 8, 8), cpu)
    alone = SampleNoise(7, [4], (3, 8, 8), cpu)
    for _ in range(3):
        assert torch.equal(batch()[1], alone()[0])
    assert not torch.equal(
        SampleNoise(8, [4], (3, 8, 8), cpu)(), SampleNoise(7, [4], (3, 8, 8), cpu)()
    )
