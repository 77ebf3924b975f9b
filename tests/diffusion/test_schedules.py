import math

import pytest
import torch

from ddpm.diffusion.schedules import SCHEDULES, alphas_cumprod, make_betas, snr, terminal_stats


def test_linear_has_fixed_endpoints_whatever_T():
    for T in (10, 350, 1000):
        betas = make_betas("linear", T)
        assert betas.dtype == torch.float64 and betas.shape == (T,)
        assert betas[0].item() == pytest.approx(1e-4)
        assert betas[-1].item() == pytest.approx(2e-2)


def test_rescaled_linear_equals_linear_at_1000_and_scales_elsewhere():
    torch.testing.assert_close(make_betas("rescaled_linear", 1000), make_betas("linear", 1000))
    betas = make_betas("rescaled_linear", 250)
    assert betas[0].item() == pytest.approx(4e-4)
    assert betas[-1].item() == pytest.approx(8e-2)


def test_cosine_alpha_bar_matches_closed_form():
    T, s = 1000, 0.008
    ab = alphas_cumprod(make_betas("cosine", T, cosine_s=s))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    # Clipping at 0.999 only touches the very last steps.
    torch.testing.assert_close(ab[:-5], expected[:-5], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [25, 50, 350, 1000, 4000])  # rescaled_linear needs T > 20
def test_every_schedule_is_valid(name, T):
    betas = make_betas(name, T)
    assert bool(((betas > 0) & (betas < 1)).all())
    ab = alphas_cumprod(betas)
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must strictly decrease"
    assert bool((snr(betas) > 0).all())


def test_t350_linear_ends_far_from_pure_noise():
    stats = terminal_stats(make_betas("linear", 350))
    assert stats["alpha_bar_T"] == pytest.approx(0.029, abs=0.002)
    assert terminal_stats(make_betas("cosine", 350))["alpha_bar_T"] < 1e-4
    assert stats["terminal_snr"] == pytest.approx(stats["alpha_bar_T"] / (1 - stats["alpha_bar_T"]))


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_betas("linear", 1),
        lambda: make_betas("linear", 100, beta_start=0.02, beta_end=0.01),
        lambda: make_betas("linear", 100, beta_end=1.5),
        lambda: make_betas("rescaled_linear", 10),  # 1000/10 * 0.02 = 2.0
        lambda: make_betas("cosine", 100, cosine_s=-0.1),
        lambda: make_betas("quadratic", 100),
    ],
)
def test_invalid_parameters_raise(call):
    with pytest.raises(ValueError):
        call()
