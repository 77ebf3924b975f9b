"""FD_DINOv2: DINOv2 ViT-L/14 from Meta's file layout, EDM2's preprocessing, the weights stage's
download and checks, the reference stage, and the score in evaluate beside FID."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SCORED_CONFIG, FileServer, built_once
from torch import nn

from ddpm.evaluation import dinov2, dinov2_weights
from ddpm.evaluation.dinov2 import DinoV2Error, load_dinov2
from ddpm.evaluation.dinov2_reference import dinov2_reference
from ddpm.evaluation.dinov2_weights import fetch_dinov2, make_test_dinov2
from ddpm.evaluation.evaluate import evaluate
from ddpm.evaluation.features import load_flower_features
from ddpm.evaluation.inception import MetricsError, extract_features
from ddpm.evaluation.scores import fid, random_halves
from ddpm.pipeline.config import config_from_dict
from ddpm.pipeline.stages import prepare
from ddpm.plumbing.files import file_digest

CPU = torch.device("cpu")
# The scored network's config with FD_DINOv2 on, through the small ViT of its family.
DINO_CONFIG = {
    **SCORED_CONFIG,
    "evaluate": {
        **SCORED_CONFIG["evaluate"],
        "metrics": ["fid", "is", "kid", "prdc", "fd_dinov2"],
        "dinov2_source": "test-small",
        "fid_halves": 4,
    },
}


@pytest.fixture(scope="session")
def meta_file(tmp_path_factory, worker_id):
    """Random DINOv2 ViT-L/14 weights laid out as Meta's file is (1.2 GB, made once)."""
    folder = built_once(
        tmp_path_factory,
        worker_id,
        "dinov2-large",
        lambda root: make_test_dinov2(root / "meta.pth", seed=3),
    )
    return folder / "meta.pth"


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (
        (nn.functional.interpolate(low, size=size, mode="bicubic").clamp(0, 1) * 255)
        .round()
        .to(torch.uint8)
    )


def test_meta_weights_load_into_vit_l14_and_are_fed_as_edm2_feeds_them(meta_file):
    """Meta's layout (518 px, 37 x 37 position embeddings, a mask token) loads strictly; the
    224-px position embeddings are Meta's own resampling (bicubic, no antialiasing, scale
    16.1 / 37), not timm's antialiased one; an image is resized bicubic to 224, normalised with
    ImageNet's statistics, and its feature is the final normalised CLS token (1,024)."""
    state = torch.load(meta_file, weights_only=True)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 1024) and "mask_token" in state
    net = load_dinov2(meta_file, CPU)
    assert net.num_features == 1024 and sum(p.numel() for p in net.parameters()) > 300e6

    patches = state["pos_embed"][:, 1:].reshape(1, 37, 37, 1024).permute(0, 3, 1, 2)
    scale = (16 + 0.1) / 37
    meta = nn.functional.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    meta = torch.cat([state["pos_embed"][:, :1], meta.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(net.vit.pos_embed.detach(), meta)
    from timm.layers import resample_abs_pos_embed

    timms = resample_abs_pos_embed(state["pos_embed"], (16, 16), num_prefix_tokens=1)
    assert (timms - meta).abs().max() > 1e-3, "timm's own resampling differs from Meta's"

    images = smooth_images(2, 64, seed=0)
    x = nn.functional.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True)
    x = (x / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = net.vit.forward_features(x)  # [N x 257 x 1024], after the final norm
        features = dinov2.extract(net, images, 1, CPU, bars=False)
    assert features.shape == (2, 1024)
    torch.testing.assert_close(features, tokens[:, 0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(features[0], features[1]), "features tell images apart"


def test_a_file_that_is_not_dinov2_is_refused_with_its_path(tmp_path):
    small = tmp_path / "small.pth"
    make_test_dinov2(small, small=True)
    shutil.copy(small, tmp_path / "as-large.pth")  # no sidecar: read as Meta's ViT-L/14
    with pytest.raises(DinoV2Error, match=r"as-large\.pth does not hold DINOv2 ViT-L/14"):
        load_dinov2(tmp_path / "as-large.pth", CPU)
    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(DinoV2Error, match=r"list\.pth does not hold"):
        load_dinov2(tmp_path / "list.pth", CPU)
    with pytest.raises(DinoV2Error, match=r"missing\.pth not found"):
        dinov2.check_weights(tmp_path / "missing.pth")


def test_the_weights_stage_downloads_checks_and_records_them(meta_file, tmp_path, monkeypatch):
    """Over HTTP on 127.0.0.1: a pinned prefix must match; unpinned, the published size must
    (where it is known) and the file must load as ViT-L/14; a cut-off download, a wrong size or
    a file of another network leaves nothing behind; the sha256 is recorded for pinning. (The
    refusals download the small file: each full-size download costs seconds.)"""
    served = tmp_path / "served"
    served.mkdir()
    (served / "meta.pth").symlink_to(meta_file)
    make_test_dinov2(served / "small.pth", small=True)
    digest = file_digest(meta_file)
    server = FileServer(served)
    url, small = f"{server.url}/meta.pth", f"{server.url}/small.pth"
    out = tmp_path / "w" / "dinov2.pth"

    def nothing_left():
        return not out.exists() and not list(out.parent.glob(".*"))

    try:
        with pytest.raises(DinoV2Error, match="does not start with 00000000"):
            fetch_dinov2(small, out, "00000000", bars=False)
        assert nothing_left()
        monkeypatch.setitem(dinov2_weights.BYTES, small, (served / "small.pth").stat().st_size + 1)
        with pytest.raises(DinoV2Error, match="where the published file has"):
            fetch_dinov2(small, out, "", bars=False)
        assert nothing_left()
        server.drops["small.pth"] = 1  # the connection closes half-way
        with pytest.raises(DinoV2Error, match="could not download"):
            fetch_dinov2(small, out, "", bars=False)
        assert nothing_left()
        monkeypatch.delitem(dinov2_weights.BYTES, small)
        with pytest.raises(DinoV2Error, match="does not hold DINOv2 ViT-L/14"):
            fetch_dinov2(small, out, "", bars=False)
        assert nothing_left()

        monkeypatch.setitem(dinov2_weights.BYTES, url, meta_file.stat().st_size)
        info = fetch_dinov2(url, out, "", bars=False)
        side = json.loads((out.parent / "dinov2.pth.json").read_text())
        assert side == {"kind": "dinov2", "url": url, "sha256": digest, "pinned": False}
        assert info["sha256"] == digest and not info["test_weights"] and not info["pinned"]
        stamp = out.stat().st_mtime_ns
        info = fetch_dinov2(url, out, digest[:8], bars=False)  # pinned now: kept, not fetched
        assert out.stat().st_mtime_ns == stamp and info["pinned"]
        assert dinov2.check_weights(out)["sha256"] == digest
        with open(out, "r+b") as f:  # the file changed after the stage checked it
            f.seek(100)
            f.write(b"\x00\x01")
        with pytest.raises(DinoV2Error, match="not the file that the dinov2_weights stage"):
            dinov2.check_weights(out)
    finally:
        server.close()


def test_the_stage_tells_how_to_pin_an_unpinned_download(tmp_path):
    cfg = config_from_dict({"evaluate": {"dinov2_source": "test-small"}}).evaluate
    line = dinov2_weights.make_weights(cfg, tmp_path / "w.pth")
    assert "ranks nothing" in line and dinov2.weights_info(tmp_path / "w.pth")["test_weights"]


def test_fd_dinov2_is_the_frechet_distance_of_dinov2_features_with_fids_halves(scored, tmp_path):
    """The reference stage keeps the real side; evaluate's FD_DINOv2 is the Frechet distance of
    the samples' DINOv2 features against it, its spread over the very halves of FID's, and
    switching it off leaves its keys out."""
    cfg = config_from_dict(DINO_CONFIG)
    weights = tmp_path / "dinov2.pth"
    dinov2_weights.make_weights(prepare("dinov2_weights", cfg)[0].evaluate, weights)
    ref_cfg = prepare("dinov2_reference", cfg)[0].evaluate
    record = dinov2_reference(
        ref_cfg, scored / "data.npy", weights, tmp_path / "ref.pt", bars=False
    )
    assert record["n_real"] == 16 and record["test_weights"] and record["floor"]["n_per_half"] == 8

    # the very real images of the Inception reference, in its order
    chosen = torch.load(tmp_path / "ref.pt", weights_only=False)["images"]
    flowers = load_flower_features(scored / "weights.pth", CPU, MetricsError)
    data = torch.from_numpy(np.load(scored / "data.npy"))
    inception_side = extract_features(flowers, data[chosen], 8, CPU, bars=False)["pool"]
    assert torch.equal(inception_side, torch.load(scored / "reference.pt")["pool"])

    eval_cfg = prepare("evaluate", cfg, "T~20")[0].evaluate
    m = evaluate(
        eval_cfg,
        scored / "samples.npz",
        scored / "reference.pt",
        scored / "weights.pth",
        tmp_path / "v",
        bars=False,
        dinov2=(weights, tmp_path / "ref.pt"),
    )
    net = load_dinov2(weights, CPU)
    real = data[chosen]
    fake = torch.from_numpy(np.load(scored / "samples.npz")["images"])
    real_f, fake_f = (dinov2.extract(net, x, 4, CPU, bars=False) for x in (real, fake))
    assert m["fd_dinov2"] == pytest.approx(fid(real_f, fake_f), rel=1e-6)
    halves = random_halves(len(fake), 4, eval_cfg.seed)
    spread = np.std([fid(real_f, fake_f[h]) for h in halves], ddof=1)
    assert m["fd_dinov2_std"] == pytest.approx(spread, rel=1e-6)
    assert m["floor_fd_dinov2"] == record["floor"]["fd"] > 0
    written = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert {"fd_dinov2", "fd_dinov2_std", "floor_fd_dinov2", "fid", "kid_mean"} <= set(written)
    how = json.loads((tmp_path / "v" / "evaluation.json").read_text())
    assert how["dinov2"]["test_weights"] and how["dinov2"]["resize"].startswith("bicubic")

    off = config_from_dict(
        {**DINO_CONFIG, "evaluate": {**DINO_CONFIG["evaluate"], "metrics": ["fid"]}}
    )
    only_fid = prepare("evaluate", off, "T~20")[0].evaluate
    args = (scored / "samples.npz", scored / "reference.pt", scored / "weights.pth")
    with pytest.raises(MetricsError, match="does not list fd_dinov2"):
        evaluate(only_fid, *args, tmp_path / "o", bars=False, dinov2=(weights, tmp_path / "ref.pt"))
    with pytest.raises(MetricsError, match="give the DINOv2 weights and reference"):
        evaluate(eval_cfg, *args, tmp_path / "o", bars=False)
    m = evaluate(only_fid, *args, tmp_path / "o", bars=False)
    written = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert set(written) == {"fid", "fid_std", "n_generated", "n_real", "floor_fid"}
    assert m["fid"] == pytest.approx(
        json.loads((tmp_path / "v" / "metrics.json").read_text())["fid"]
    )


def test_a_reference_of_other_weights_or_another_size_is_refused(scored, tmp_path):
    cfg = config_from_dict(DINO_CONFIG)
    ref_cfg = prepare("dinov2_reference", cfg)[0].evaluate
    make_test_dinov2(tmp_path / "a.pth", seed=0, small=True)
    make_test_dinov2(tmp_path / "b.pth", seed=1, small=True)
    dinov2_reference(
        ref_cfg, scored / "data.npy", tmp_path / "a.pth", tmp_path / "ref.pt", bars=False
    )
    eval_cfg = prepare("evaluate", cfg, "T~20")[0].evaluate
    args = (scored / "samples.npz", scored / "reference.pt", scored / "weights.pth", tmp_path / "v")
    with pytest.raises(DinoV2Error, match="computed with other DINOv2 weights"):
        evaluate(eval_cfg, *args, bars=False, dinov2=(tmp_path / "b.pth", tmp_path / "ref.pt"))
    ref = torch.load(tmp_path / "ref.pt", weights_only=False)
    torch.save({**ref, "image_size": 32}, tmp_path / "ref32.pt")
    with pytest.raises(MetricsError, match="describes 32 px images, the samples are 16 px"):
        evaluate(eval_cfg, *args, bars=False, dinov2=(tmp_path / "a.pth", tmp_path / "ref32.pt"))
