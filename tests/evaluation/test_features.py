"""The demo's flower features: trained inside the pipeline on the synthetic flowers'
attributes, they score visibly worse samples worse, by more than the noise of the estimate."""

import json

import numpy as np
import pytest
import torch
from conftest import built_once

from ddpm.data.preprocess import preprocess
from ddpm.data.synthetic import synthetic_dataset
from ddpm.evaluation.evaluate import evaluate
from ddpm.evaluation.features import KIND, load_flower_features
from ddpm.evaluation.inception import MetricsError, extract_features, load_inception
from ddpm.evaluation.inception_weights import CLASSES, flower_targets, train_flower_features
from ddpm.evaluation.reference_stats import reference_stats
from ddpm.evaluation.scores import RealFID, random_halves
from ddpm.pipeline.config import ConfigError, config_from_dict
from ddpm.pipeline.layout import weights_sidecar

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def weights(tmp_path_factory, worker_id):
    """Trained once per test run with the defaults the demo uses (about 2 CPU-minutes), for
    all workers: tests of this file that pytest-xdist gives to another worker do not train
    it again."""

    def build(root):
        train_flower_features(root / "flower-features.pt", bars=False)

    path = built_once(tmp_path_factory, worker_id, "flower-features", build) / "flower-features.pt"
    return path, json.loads(weights_sidecar(path).read_text())


def _grainy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(images + noise, 0, 255).round().astype(np.uint8)


def _blurred(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).float()
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return x.round().to(torch.uint8).numpy()


def _features(weights, images: np.ndarray) -> torch.Tensor:
    net = load_inception(weights, CPU)
    return extract_features(net, torch.from_numpy(images), 128, CPU, bars=False)["pool"]


@pytest.mark.slow
def test_the_network_learns_the_attributes_it_was_built_for(weights):
    path, info = weights
    assert info["kind"] == KIND  # `info`: the sidecar that training wrote
    # 40 classes (petal colour x count): chance is 2.5%; attributes: 1.0 is guessing the mean.
    assert info["held_out_class_accuracy"] > 0.6, info
    assert info["held_out_attribute_mse"] < 0.4, info
    net = load_flower_features(path, CPU, MetricsError)
    images = torch.from_numpy(synthetic_dataset(8, 64, 3))  # any size: seen at 32 x 32
    h, logits = net.features_and_logits(images)
    assert h.shape == (8, net.num_features) and logits.shape == (8, CLASSES)


@pytest.mark.slow
def test_visibly_degraded_samples_score_worse_than_clean_ones(weights):
    """Clean flowers against the data score best; the same flowers grainy (the noise a sampler
    that starts far from pure noise leaves) or blurred score worse, by more than the noise of
    the estimate (measured: clean 1.1 +- 0.4, noise of std 20/255 22 +- 2, 3x3 blur 3.4 +- 0.5)."""
    path, _ = weights
    real = RealFID.of(_features(path, flower_targets(7, 600)[0]))
    clean_images = flower_targets(8, 300)[0]
    scores = {}
    for name, images in (
        ("clean", clean_images),
        ("grainy", _grainy(clean_images, 20.0, 0)),
        ("blurred", _blurred(clean_images)),
    ):
        fake = _features(path, images)
        scores[name] = (real(fake), real.spread(fake, random_halves(len(fake), 20, 0)))
    clean, clean_std = scores["clean"]
    for name in ("grainy", "blurred"):
        value, std = scores[name]
        assert value - clean > 2 * (std**2 + clean_std**2) ** 0.5, scores


def test_flower_features_evaluate_like_inception_weights(weights, tmp_path):
    path, _ = weights
    data = tmp_path / "data.npy"
    cfg = config_from_dict(
        {
            "data": {"source": "synthetic", "synthetic_count": 100, "image_size": 32},
            "evaluate": {
                "device": "cpu",
                "inception_source": "synthetic",
                "kid_subset_size": 50,
                "metrics": ["fid", "is", "kid", "prdc"],
            },
        }
    )
    preprocess(cfg.data, data, bars=False)
    cfg = cfg.evaluate
    ref = tmp_path / "ref.pt"
    reference_stats(cfg, data, path, ref, bars=False)
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=flower_targets(6, 80)[0])
    m = evaluate(cfg, samples, ref, path, tmp_path / "m", bars=False)
    assert m["features"] == KIND and m["test_weights"] is False
    assert m["fid_reliable"] is True  # 80 and 100 images > 64 feature dimensions
    assert (
        m["fid"] > 0
        and m["fid_std"] > 0
        and m["feature_extractor"].startswith("ddpm.evaluation.features")
    )


def test_flower_features_are_refused_for_real_data():
    with pytest.raises(ConfigError, match="only describe the synthetic flowers"):
        config_from_dict(
            {"data": {"source": "flowers102"}, "evaluate": {"inception_source": "synthetic"}}
        )


def test_the_small_random_network_of_plumbing_tests_scores_like_any_feature_network(tmp_path):
    """`inception_source: test-small`: the flower network's architecture with seeded random
    weights, marked as test weights, loaded like the others; its features and logits vary with
    the images, so FID and IS move when the samples do, and nothing in it is trained."""
    from ddpm.evaluation.inception import weights_info
    from ddpm.evaluation.inception_weights import make_weights
    from ddpm.evaluation.scores import fid, inception_score

    cfg = config_from_dict({"evaluate": {"inception_source": "test-small"}}).evaluate
    line = make_weights(cfg, tmp_path / "w.pth")
    assert "plumbing tests" in line and weights_info(tmp_path / "w.pth")["test_weights"]
    again = tmp_path / "again.pth"
    make_weights(cfg, again)
    assert weights_info(again)["sha256"] == weights_info(tmp_path / "w.pth")["sha256"], "seeded"
    net = load_inception(tmp_path / "w.pth", CPU)
    a, b, noise = (
        extract_features(net, images, 16, CPU, bars=False)
        for images in (
            torch.from_numpy(synthetic_dataset(16, 16, 0)),
            torch.from_numpy(synthetic_dataset(16, 16, 1)),
            torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8),
        )
    )
    assert a["pool"].shape == (16, 64) and a["logits"].shape == (16, CLASSES)
    assert (a["pool"].std(0) > 0).all(), "every feature varies across images"
    assert 0 < fid(a["pool"], b["pool"]) < fid(a["pool"], noise["pool"])
    assert inception_score(a["logits"], 2, 0)[0] > 1.01
