import pytest
import torch

from ddpm.diffusion.process import GaussianDiffusion
from ddpm.diffusion.schedules import make_betas


def make(objective="eps", **kw):
    return GaussianDiffusion(make_betas("linear", 100), objective=objective, **kw)


def test_buffers_are_float64():
    d = make()
    for name in (
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ):
        assert getattr(d, name).dtype == torch.float64, name


def test_q_sample_moments():
    d = make()
    x0 = torch.linspace(-1, 1, 8, dtype=torch.float64).view(1, 2, 2, 2)
    t = torch.tensor([60])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 2, 2, 2, generator=gen, dtype=torch.float64)
    xt = d.q_sample(x0.expand(20000, -1, -1, -1), t.expand(20000), noise)
    ab = d.alphas_cumprod[60]
    torch.testing.assert_close(xt.mean(0), ab.sqrt() * x0[0], atol=0.03, rtol=0)
    torch.testing.assert_close(xt.var(0), (1 - ab).expand(2, 2, 2), atol=0.03, rtol=0)


def test_posterior_matches_closed_form():
    d = make()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 40, 99])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    betas = make_betas("linear", 100)
    ab = torch.cumprod(1 - betas, 0)
    for i, ti in enumerate(t.tolist()):
        ab_t, ab_prev, b = ab[ti], ab[ti - 1], betas[ti]
        expected_mean = (ab_prev.sqrt() * b / (1 - ab_t)) * x0[i] + (
            (1 - b).sqrt() * (1 - ab_prev) / (1 - ab_t)
        ) * xt[i]
        expected_var = (1 - ab_prev) / (1 - ab_t) * b
        torch.testing.assert_close(mean[i], expected_mean)
        torch.testing.assert_close(var[i].squeeze(), expected_var)
        torch.testing.assert_close(log_var[i].squeeze(), expected_var.log())


def test_parameterisations_round_trip():
    d = make()
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 90, 99])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_start_from_noise(xt, t, eps), x0)
    torch.testing.assert_close(d.predict_noise_from_start(xt, t, x0), eps)
    v = d.predict_v(x0, t, eps)
    torch.testing.assert_close(d.predict_start_from_v(xt, t, v), x0)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_model_predictions_recover_truth_from_an_oracle(objective):
    d = make(objective)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 4, 4, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([5, 20, 70, 99])
    xt = d.q_sample(x0, t, eps)
    target = {"eps": eps, "x0": x0, "v": d.predict_v(x0, t, eps)}[objective]
    got_eps, got_x0 = d.model_predictions(lambda x, tt: target, xt, t, clip_denoised=True)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_network_sees_normalised_time():
    seen = []
    for T in (100, 1000):
        d = GaussianDiffusion(make_betas("cosine", T))
        d.model_predictions(
            lambda x, tt: (seen.append(tt), x)[1],
            torch.zeros(1, 1, 1, 1),
            torch.tensor([T // 2 - 1]),
        )
    assert seen[0].item() == pytest.approx(0.5) and seen[1].item() == pytest.approx(0.5)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_training_loss_is_zero_for_a_perfect_model_and_per_sample(objective):
    d = make(objective)
    x0 = torch.rand(6, 3, 4, 4) * 2 - 1
    noise = torch.randn(6, 3, 4, 4)
    t = torch.randint(0, 100, (6,))
    target = {"eps": noise, "x0": x0, "v": d.predict_v(x0, t, noise)}[objective]
    out = d.training_loss(lambda x, tt: target, x0, t, noise)
    assert out["loss"].shape == (6,)
    assert out["loss"].abs().max().item() < 1e-10
    out = d.training_loss(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(out["loss"], target.pow(2).mean((1, 2, 3)))


def test_min_snr_weights():
    d = make("eps", loss_weighting="min_snr", min_snr_gamma=5.0)
    t = torch.arange(100)
    w = d.loss_weight(t)
    snr = d.snr
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr)
    assert w[0].item() < 1.0 and w[-1].item() == pytest.approx(1.0)
    v = GaussianDiffusion(make_betas("linear", 100), "v", "min_snr").loss_weight(t)
    torch.testing.assert_close(
        v, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1)
    )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="objective"):
        make("score")
    with pytest.raises(ValueError, match="weighting"):
        make(loss_weighting="p2")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.tensor([0.1, 1.0]))
