"""Precision, recall, density and coverage: equal to the reference implementation of Naeem et
al. (the `prdc` package) on random features, right on sets whose answer is known, and with a
spread over halves that matches the scores' real sampling noise."""

import numpy as np
import pytest
import torch
from prdc import compute_prdc

from ddpm.evaluation import fidelity
from ddpm.evaluation.fidelity import NAMES, knn_radii, prdc, prdc_spread
from ddpm.evaluation.scores import random_halves


def _features(rng, n, d, shift=0.0, scale=1.0):
    return torch.from_numpy(rng.normal(shift, scale, size=(n, d)))


@pytest.mark.parametrize(
    "n_real, n_fake, d, shift, scale",
    [(200, 150, 16, 0.0, 1.0), (300, 120, 64, 0.3, 1.1), (150, 300, 2048, 0.05, 0.9)],
)
def test_the_scores_equal_the_reference_implementation(n_real, n_fake, d, shift, scale):
    rng = np.random.default_rng(n_real + d)
    real, fake = _features(rng, n_real, d), _features(rng, n_fake, d, shift, scale)
    expected = compute_prdc(real.numpy(), fake.numpy(), nearest_k=3)
    ours = prdc(real, fake)
    for name in NAMES:
        assert ours[name] == pytest.approx(float(expected[name]), abs=1e-12), name
    # The reference's cached radii give the same numbers.
    assert prdc(real, fake, real_radii=knn_radii(real)) == ours


def test_chunked_distances_give_the_same_scores(monkeypatch):
    rng = np.random.default_rng(1)
    real, fake = _features(rng, 90, 8), _features(rng, 70, 8, 0.2)
    whole = prdc(real, fake)
    monkeypatch.setattr(fidelity, "_CHUNK", 16)  # several blocks, and a short last one
    assert prdc(real, fake) == whole


def test_known_answers_fidelity_without_diversity_and_the_reverse():
    """Real flowers of two kinds far apart; samples that copy one kind exactly have perfect
    fidelity and half the diversity: precision 1, recall and coverage 0.5."""
    rng = np.random.default_rng(2)
    kind_a = _features(rng, 100, 16)
    kind_b = _features(rng, 100, 16, shift=50.0)
    real = torch.cat([kind_a, kind_b])
    one_kind = prdc(real, kind_a.clone())
    assert one_kind["precision"] == 1.0
    assert one_kind["recall"] == 0.5 and one_kind["coverage"] == 0.5
    everything = prdc(real, real.clone())
    assert everything["precision"] == everything["recall"] == everything["coverage"] == 1.0
    elsewhere = prdc(real, _features(rng, 100, 16, shift=-50.0))
    assert all(elsewhere[name] == 0.0 for name in NAMES)
    assert prdc(real, real[:3]) == dict.fromkeys(NAMES), "3 points have no 3 neighbours"


def test_dropping_a_mode_lowers_recall_and_blurring_lowers_precision():
    """Simulated: over 20 draws, samples missing one of two kinds always recall less than
    samples of both, at the same precision within noise; samples with added noise always have
    lower precision than clean ones."""
    rng = np.random.default_rng(3)
    wins_recall = wins_precision = 0
    for _ in range(20):
        real = torch.cat([_features(rng, 150, 8), _features(rng, 150, 8, shift=6.0)])
        both = torch.cat([_features(rng, 100, 8), _features(rng, 100, 8, shift=6.0)])
        one = _features(rng, 200, 8)
        noisy = both + torch.from_numpy(rng.normal(0, 1.0, size=both.shape))
        a, b, c = prdc(real, both), prdc(real, one), prdc(real, noisy)
        wins_recall += (
            b["recall"] < a["recall"] - 0.2 and abs(b["precision"] - a["precision"]) < 0.1
        )
        wins_precision += c["precision"] < a["precision"] - 0.2
    assert wins_recall == 20 and wins_precision == 20


def test_the_spread_over_halves_matches_the_noise_of_independent_samples():
    """The standard deviation over random halves against the standard deviation of the score
    over 40 independent sample sets of the same size: within a factor of 2 for every score."""
    rng = np.random.default_rng(4)
    real = _features(rng, 400, 8)
    radii = knn_radii(real)
    draws = [prdc(real, _features(rng, 200, 8, 0.3), real_radii=radii) for _ in range(40)]
    truth = {name: np.std([d[name] for d in draws], ddof=1) for name in NAMES}
    estimates = []
    for seed in range(10):
        fake = _features(rng, 200, 8, 0.3)
        estimates.append(prdc_spread(real, fake, random_halves(200, 10, seed), real_radii=radii))
    for name in NAMES:
        typical = np.median([e[name] for e in estimates])
        assert truth[name] / 2 < typical < truth[name] * 2, (name, typical, truth[name])
    halves_of_3 = random_halves(6, 5, 0)  # 3 points have no 3 neighbours
    assert prdc_spread(real, real[:6], halves_of_3) == dict.fromkeys(NAMES)
