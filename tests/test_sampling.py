import numpy as np
import torch
from scipy import stats

from ddpm.diffusion import GaussianDiffusion
from ddpm.presets import UNetSpec
from ddpm.sampling import (
    SampleNoise,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    mix32,
    to_uint8,
)
from ddpm.schedules import make_betas
from ddpm.unet import UNet


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


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)


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
