import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm.data.preprocess import preprocess
from ddpm.data.synthetic import synthetic_dataset
from ddpm.evaluation import evaluate as evaluate_stage
from ddpm.evaluation import inception, scores
from ddpm.evaluation import reference_stats as reference_stage
from ddpm.evaluation.evaluate import evaluate
from ddpm.evaluation.inception import MetricsError, extract_features, load_inception
from ddpm.evaluation.reference_stats import reference_stats
from ddpm.evaluation.scores import RealFID, fid, random_halves
from ddpm.pipeline.config import config_from_dict
from ddpm.plumbing.errors import ArtefactError

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def weights(tmp_path_factory, worker_id):
    """Random-weight Inception (`make_test_inception`, seed 0): built once for all workers."""
    from conftest import built_once

    from ddpm.evaluation.inception_weights import make_test_inception

    def build(root):
        make_test_inception(root / "weights.pth")

    return built_once(tmp_path_factory, worker_id, "inception", build) / "weights.pth"


@pytest.fixture(scope="session")
def net(weights):
    return load_inception(weights, CPU)


def eval_cfg(**kw):
    return config_from_dict(
        {
            "evaluate": {
                "device": "cpu",
                "batch_size": 16,
                "kid_subset_size": 8,
                "kid_subsets": 5,
                "is_splits": 2,
                # each FID is a 2,048 x 2,048 eigenproblem in torchmetrics: 3 s on this CPU
                "fid_halves": 2,
                "metrics": ["fid", "is", "kid", "prdc"],  # FD_DINOv2: test_dinov2.py
                **kw,
            }
        }
    ).evaluate


def flowers(n, seed):
    return torch.from_numpy(synthetic_dataset(n, 32, seed))


def test_test_weights_give_varying_features_and_sensible_distances(net):
    a = extract_features(net, flowers(16, 0), 16, CPU, bars=False)["pool"]
    b = extract_features(net, flowers(16, 1), 16, CPU, bars=False)["pool"]
    stripes = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    c = extract_features(net, stripes, 16, CPU, bars=False)["pool"]
    assert a.shape == (16, 2048)
    assert (a.std(0) / a.abs().mean()).mean() > 0.1, "features must vary across images"
    assert fid(a, b) < fid(a, c)


def test_one_is_split_has_no_spread_rather_than_nan():
    logits = torch.randn(16, 1008, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, std = scores.inception_score(logits, splits=1, seed=0)
    assert mean >= 1.0 and std is None
    assert scores.inception_score(logits, splits=4, seed=0)[1] > 0


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "data.npy"
    cfg = config_from_dict(
        {
            "data": {"source": "synthetic", "synthetic_count": 20, "image_size": 32},
            "model": {"preset": "tiny"},
        }
    ).data
    preprocess(cfg, path, bars=False)
    return path


def test_reference_is_computed_once_and_reused(dataset, weights, tmp_path, monkeypatch):
    seen = []
    real_extract = inception.extract_features

    def counting(net, images, *args, **kwargs):
        seen.append(len(images))
        return real_extract(net, images, *args, **kwargs)

    for stage in (reference_stage, evaluate_stage):  # each stage's module calls it
        monkeypatch.setattr(stage, "extract_features", counting)
    cfg = eval_cfg()
    ref = tmp_path / "ref.pt"
    meta = reference_stats(cfg, dataset, weights, ref, bars=False)
    assert seen == [20] and meta["n_real"] == 20 and meta["floor"]["n_per_half"] == 10
    reference_stats(cfg, dataset, weights, ref, bars=False)
    assert seen == [20], "an up-to-date reference is not recomputed"

    samples = tmp_path / "samples.npz"
    np.savez(samples, images=flowers(12, 5).numpy())
    for i, halves in enumerate((0, 2)):  # each FID is 3 s here: the first one without spread
        cfg = eval_cfg(fid_halves=halves)
        m = evaluate(cfg, samples, ref, weights, tmp_path / f"m{i}", bars=False)
    assert seen == [20, 12, 12], "evaluation extracts features of the samples only"
    assert m["n_generated"] == 12 and m["n_real"] == 20 and m["fid_reliable"] is False
    assert "2048" in m["fid_note"] and m["test_weights"] is True
    assert m["kid_subset_size"] == 8 and np.isfinite(m["is_mean"]) and m["is_mean"] >= 1.0
    assert m["floor"] == meta["floor"] and m["resize"].startswith("bilinear like TF1")
    # fidelity and diversity apart, against the real balls the reference holds (k = 3)
    assert m["prdc_k"] == 3 and len(torch.load(ref)["real_radii"]) == 20
    for name in ("precision", "recall", "density", "coverage"):
        assert m[name] >= 0 and m[f"{name}_std"] >= 0, name
    assert m["precision"] <= 1 and m["recall"] <= 1 and m["coverage"] <= 1
    # metrics.json holds numbers only (a table of runs reads them); the rest goes beside it
    numbers = json.loads((tmp_path / "m1/metrics.json").read_text())
    assert numbers["fid"] == m["fid"] and numbers["floor_fid"] == meta["floor"]["fid"]
    assert numbers["fid_std"] > 0 and "2 random halves" in m["fid_std_method"]
    assert all(type(v) in (int, float) for v in numbers.values()), numbers
    assert json.loads((tmp_path / "m1/evaluation.json").read_text())["fid_note"] == m["fid_note"]


def test_wrong_or_missing_inputs_fail_clearly(dataset, weights, tmp_path):
    cfg = eval_cfg()
    with pytest.raises(MetricsError, match="inception-weights"):
        reference_stats(cfg, dataset, tmp_path / "nope.pth", tmp_path / "r.pt")
    unmarked = tmp_path / "unmarked.pth"
    unmarked.write_bytes(weights.read_bytes())  # same bytes, but no test-weights sidecar
    with pytest.raises(MetricsError, match="expected it to start with 6726825d"):
        reference_stats(cfg, dataset, unmarked, tmp_path / "r.pt")
    wrong = tmp_path / "wrong.pth"
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buf)
    wrong.write_bytes(buf.getvalue())
    (tmp_path / "wrong.pth.json").write_text('{"kind": "random-test"}')
    with pytest.raises(MetricsError, match="InceptionV3 weights"):
        load_inception(wrong, CPU)
    with pytest.raises(MetricsError, match="reference-stats"):
        evaluate(cfg, tmp_path / "s.npz", tmp_path / "missing.pt", weights, tmp_path / "m")
    ref = tmp_path / "ref.pt"
    reference_stats(cfg, dataset, weights, ref, bars=False)
    with pytest.raises(ArtefactError, match="python -m ddpm sample"):
        evaluate(cfg, tmp_path / "missing.npz", ref, weights, tmp_path / "m")


def test_a_scoring_job_loads_torch_fidelitys_inception_without_the_rest_of_it(weights):
    """A job that scores images imports torch-fidelity's InceptionV3 alone, not the package
    (whose `__init__` loads torchvision and every other extractor); a later full import of the
    package still works and has the very same class."""
    script = f"""
import sys, torch
from ddpm.evaluation.inception import load_inception
net = load_inception({str(weights)!r}, torch.device("cpu"))
print(sorted(m for m in ("torchvision", "torch_fidelity") if m in sys.modules))
import torch_fidelity as tf
print(type(net) is tf.FeatureExtractorInceptionV3, callable(tf.calculate_metrics))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    assert out.splitlines() == ["[]", "True True"], out


@pytest.mark.slow
def test_kid_and_is_agree_with_torch_fidelity(net, weights):
    """The same weights through torch-fidelity's own pipeline: its features, its statistics.
    KID's subsets are whole sets here (subset size = N), so random subsets cannot differ. KID
    and IS agreeing shows that both read the same features and logits; FID from those features
    is checked against the formula torch-fidelity also uses (scipy's sqrtm) in the test below,
    at sizes where that takes a second, not the 18 s of a 2048 x 2048 sqrtm."""
    import torch_fidelity

    n = 16  # 4 x 16 Inception passes at 299 px (ours and torch-fidelity's, for each set)
    a, b = flowers(n, 0), flowers(n, 1)
    fa = extract_features(net, a, n, CPU, bars=False)
    fb = extract_features(net, b, n, CPU, bars=False)
    ours_is, _ = scores.inception_score(fb["logits"], splits=1, seed=0)
    ours_kid, _, size = scores.kid(fa["pool"], fb["pool"], n, 2, seed=0)
    theirs = torch_fidelity.calculate_metrics(
        # torch-fidelity takes a Dataset of uint8 3 x H x W images: a Subset of the tensor
        input1=torch.utils.data.Subset(b, range(len(b))),
        input2=torch.utils.data.Subset(a, range(len(a))),
        isc=True,
        isc_splits=1,
        kid=True,
        kid_subset_size=n,
        kid_subsets=2,
        cuda=False,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        batch_size=n,
        verbose=False,
        save_cpu_ram=True,
    )
    assert ours_is == pytest.approx(theirs["inception_score_mean"], rel=1e-3)
    assert size == n
    assert ours_kid == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)


def previous_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID as this project computed it before torchmetrics did (until 2026-12-07): float64,
    the last trace as the singular values of A B^T, where A^T A and B^T B are the two
    covariances."""

    def factor(x):
        centred = x.double() - x.double().mean(0)
        return centred / (len(x) - 1) ** 0.5

    a, b = factor(real), factor(fake)
    cross = torch.linalg.svdvals(a @ b.T).sum()
    mean = (real.double().mean(0) - fake.double().mean(0)).square().sum()
    return float(mean + a.square().sum() + b.square().sum() - 2 * cross)


def textbook_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID as the original code writes it: scipy's matrix square root of the product."""
    from scipy import linalg

    x, y = real.double().numpy(), fake.double().numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


# fewer and more images than feature dimensions, on either side
@pytest.mark.parametrize(("n_real", "n_fake"), [(400, 50), (400, 300), (60, 300), (60, 40)])
def test_fid_equals_the_textbook_formula(n_real, n_fake):
    g = torch.Generator().manual_seed(n_fake)
    mix = torch.randn(100, 100, generator=g)
    real = torch.randn(n_real, 100, generator=g) @ mix
    fake = torch.randn(n_fake, 100, generator=g) @ (mix + 0.3) + 0.5
    expected = textbook_fid(real, fake)
    assert fid(real, fake) == pytest.approx(expected, rel=1e-6)
    # torchmetrics takes square roots of the eigenvalues of the d x d product: where a side has
    # fewer images than features, the zero ones come out as +-1e-12 and their roots add ~1e-7
    assert fid(real, fake) == pytest.approx(previous_fid(real, fake), rel=1e-6)
    # the real side persisted and restored (as the reference file keeps it) changes nothing
    restored = RealFID.from_state(RealFID.of(real).state())
    assert restored(fake) == fid(real, fake)
    assert fid(real, real) == pytest.approx(0, abs=1e-6 * expected)


def test_kid_and_is_give_their_known_values():
    """IS of K equally used, certain classes is K, of one class 1; KID of two draws of one
    distribution is about 0 and grows with a shift, and its subsets are seeded."""
    certain = torch.full((40, 10), -50.0, dtype=torch.float64)
    certain[torch.arange(40), torch.arange(40) % 4] = 50.0
    assert scores.inception_score(certain, splits=1, seed=0) == (pytest.approx(4.0), None)
    one = torch.zeros(40, 10, dtype=torch.float64)
    one[:, 3] = 50.0
    mean, std = scores.inception_score(one, splits=4, seed=0)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    same, same_std, size = scores.kid(x, y, 100, 20, seed=1)
    shifted = scores.kid(x, y + 1.0, 100, 20, seed=1)[0]
    assert size == 100 and abs(same) < 3 * same_std / 20**0.5 + 1e-3
    assert shifted > 10 * abs(same) and shifted > 0
    assert scores.kid(x, y, 100, 20, seed=1) == (same, same_std, size)
    assert scores.kid(x, y, 1000, 2, seed=1)[2] == 300, "capped at the images there are"


def test_fid_spread_is_the_sampling_noise_of_the_generated_set():
    """Generated features that differ from the real ones (shifted and wider), as a trained
    network's do: the spread over random halves of one generated set estimates how much FID
    varies between independent generated sets of that size."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 32, generator=g)
    real = RealFID.of(torch.randn(2000, 32, generator=g) @ mix)

    def draw(n):
        return torch.randn(n, 32, generator=g) @ (1.3 * mix) + 2.0

    def spread(x):
        return real.spread(x, random_halves(len(x), 40, seed=1))

    small, large = draw(100), draw(1600)
    spread_small, spread_large = spread(small), spread(large)
    assert spread(small) == spread_small, "seeded: the same every time"
    for n, value in ((100, spread_small), (1600, spread_large)):
        independent = np.std([real(draw(n)) for _ in range(60)], ddof=1)
        assert 0.7 < value / independent < 1.5, (n, value, independent)
    halves = random_halves(len(small), 2, seed=1)
    assert real.spread(small, []) is None and real.spread(small, halves[:1]) is None


def test_fetch_weights_verifies_the_checksum(tmp_path):
    import hashlib

    from conftest import FileServer

    from ddpm.evaluation.inception_weights import fetch_weights

    served = tmp_path / "served"
    served.mkdir()
    payload = b"pretend these are inception weights"
    (served / "w.pth").write_bytes(payload)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    server = FileServer(served)
    try:
        with pytest.raises(MetricsError, match="does not start with 00000000"):
            fetch_weights(f"{server.url}/w.pth", tmp_path / "bad.pth", "00000000")
        assert not (tmp_path / "bad.pth").exists()
        info = fetch_weights(f"{server.url}/w.pth", tmp_path / "w.pth", prefix)
        assert info["sha256"].startswith(prefix) and not info["test_weights"]
        assert (tmp_path / "w.pth").read_bytes() == payload
        sidecar = json.loads((tmp_path / "w.pth.json").read_text())
        assert sidecar["kind"] == "torch-fidelity" and sidecar["url"].endswith("/w.pth")
    finally:
        server.close()


# torchmetrics warns that KID and IS keep every feature vector: what they are for here.
@pytest.mark.filterwarnings("ignore:Metric .* will save all extracted features:UserWarning")
def test_the_scores_are_torchmetrics_own_on_the_features_given():
    """FID, KID and IS are what torchmetrics' own classes compute when they are handed the same
    feature vectors and logits, as its users would call them (a feature module that passes
    features through): our scores only choose the seeds and keep FID's real side."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    from ddpm.evaluation.scores import Given

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 64, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 64, generator=g, dtype=torch.float64) * 1.2 + 0.3
    theirs = FrechetInceptionDistance(feature=Given(64))
    theirs.update(real, real=True)
    theirs.update(fake, real=False)
    ours = RealFID.of(real)
    assert isinstance(ours.metric, FrechetInceptionDistance)
    assert ours(fake) == float(theirs.compute())

    kid = KernelInceptionDistance(feature=Given(64), subsets=7, subset_size=50)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(3)
    expected = [float(v) for v in kid.compute()]
    assert list(scores.kid(real, fake, subset_size=50, subsets=7, seed=3)[:2]) == expected

    logits = torch.randn(100, 10, generator=g, dtype=torch.float64) * 3
    inception = InceptionScore(feature=Given(10), splits=4)
    inception.update(logits)
    torch.manual_seed(5)
    expected = [float(v) for v in inception.compute()]
    assert list(scores.inception_score(logits, splits=4, seed=5)) == expected
    before = torch.random.get_rng_state()
    scores.inception_score(logits, splits=4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before), "the caller's random state is kept"
