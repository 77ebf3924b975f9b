import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import yaml
from PIL import Image

from ddpm.data.dataset import load_dataset
from ddpm.data.decode import _decode_reduced, load_square
from ddpm.data.download import download, safe_extract
from ddpm.data.preprocess import preprocess
from ddpm.data.synthetic import synthetic_dataset
from ddpm.pipeline.config import config_from_dict
from ddpm.pipeline.layout import manifest_path
from ddpm.plumbing.errors import DataError


def data_cfg(**data):
    return config_from_dict({"data": data, "model": {"preset": "tiny"}}).data


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ddpm", *args], capture_output=True, text=True, cwd=cwd
    )


def test_offline_flowers_download_and_preprocess_through_the_cli(fake_flowers, tmp_path):
    server, md5s = fake_flowers
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {"base_url": server.url, "md5": md5s, "image_size": 16, "workers": 2}}
        )
    )
    raw, out = tmp_path / "raw", tmp_path / "flowers16.npy"
    r = run_cli("download", "--config", str(config), "--out", str(raw))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == [
        "102flowers.tgz",
        "imagelabels.mat",
        "jpg",
        "setid.mat",
    ]
    assert len(list((raw / "jpg").glob("*.jpg"))) == 12

    # a second download verifies and keeps what is there
    before = (raw / "102flowers.tgz").stat().st_mtime_ns
    server.drops["102flowers.tgz"] = 100  # any request for it would now fail
    assert run_cli("download", "--config", str(config), "--out", str(raw)).returncode == 0
    assert (raw / "102flowers.tgz").stat().st_mtime_ns == before

    r = run_cli("preprocess", "--config", str(config), "--raw", str(raw), "--out", str(out))
    assert r.returncode == 0, r.stderr
    images, manifest = load_dataset(out)
    assert images.dtype.is_floating_point is False and str(images.dtype) == "torch.uint8"
    assert tuple(images.shape) == (12, 3, 16, 16)
    assert manifest["splits"] == {"train": 6, "val": 3, "test": 3}
    assert manifest["count"] == 12 and manifest["source_checksums"] == md5s
    gray = images[0].int()
    assert (gray[0] - gray[1]).abs().max() <= 2 and (gray[1] - gray[2]).abs().max() <= 2
    # 120 x 40 image: red | green | blue thirds; a centre crop keeps the green third only
    wide = images[1].float().mean(dim=(1, 2))
    assert wide[1] > 200 and wide[0] < 40 and wide[2] < 40, wide


def test_checksum_mismatch_fails_and_leaves_nothing(fake_flowers, tmp_path):
    server, md5s = fake_flowers
    wrong = dict(md5s, **{"setid.mat": "0" * 32})
    with pytest.raises(DataError) as e:
        download(data_cfg(base_url=server.url, md5=wrong), tmp_path / "raw", bars=False)
    msg = str(e.value)
    assert "setid.mat" in msg and "0" * 32 in msg and md5s["setid.mat"] in msg
    assert not [p for p in (tmp_path / "raw").iterdir() if "setid" in p.name]


def test_dropped_connection_leaves_nothing_complete_and_a_rerun_succeeds(fake_flowers, tmp_path):
    server, md5s = fake_flowers
    cfg = data_cfg(base_url=server.url, md5=md5s)
    server.drops["102flowers.tgz"] = 3
    with pytest.raises(DataError, match="102flowers.tgz"):
        download(cfg, tmp_path / "raw", retries=1, backoff_s=0.0, bars=False)
    names = [p.name for p in (tmp_path / "raw").iterdir()]
    assert "102flowers.tgz" not in names and not [n for n in names if n.endswith(".part")]
    assert "jpg" not in names
    # one more dropped request, then the retry gets through
    download(cfg, tmp_path / "raw", retries=2, backoff_s=0.0, bars=False)
    assert len(list((tmp_path / "raw/jpg").glob("*.jpg"))) == 12


def test_path_traversal_archive_is_rejected(tmp_path):
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("jpg/ok.txt", "../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=r"\.\./evil\.txt"):
        safe_extract(archive, out)
    assert not (tmp_path / "evil.txt").exists() and not (out / "jpg").exists()


def write_images(folder, n=5):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def test_corrupt_image_fails_naming_the_file_or_is_skipped(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder / "sub")
    good = (folder / "sub/0.jpg").read_bytes()
    (folder / "sub/bad.jpg").write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(DataError, match="bad.jpg"):
        preprocess(
            data_cfg(source="folder", folder=str(folder), image_size=8),
            tmp_path / "d.npy",
            bars=False,
        )
    assert not (tmp_path / "d.npy").exists() and not list(tmp_path.glob(".d.npy*"))
    manifest = preprocess(
        data_cfg(source="folder", folder=str(folder), image_size=8, skip_corrupt=True),
        tmp_path / "d.npy",
        bars=False,
    )
    assert manifest["count"] == 5 and len(manifest["skipped"]) == 1
    assert manifest["skipped"][0]["file"].endswith("bad.jpg")


def test_synthetic_is_deterministic_per_seed():
    a, b = synthetic_dataset(8, 24, seed=3), synthetic_dataset(8, 24, seed=3)
    assert a.shape == (8, 3, 24, 24) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(synthetic_dataset(4, 24, seed=3), a[:4])  # prefix-stable
    c = synthetic_dataset(8, 24, seed=4)
    assert np.abs(a.astype(int) - c).mean() > 10
    assert a.min() < 60 and a.max() > 180  # uses the range, not a flat grey
    assert np.abs(a[0].astype(int) - a[1]).mean() > 10  # images differ from each other


def test_loader_detects_a_changed_file(tmp_path):
    out = tmp_path / "syn.npy"
    manifest = preprocess(
        data_cfg(source="synthetic", synthetic_count=6, image_size=16), out, bars=False
    )
    images, loaded = load_dataset(out)
    assert loaded == manifest and tuple(images.shape) == (6, 3, 16, 16)
    assert json.loads(manifest_path(out).read_text())["sha256"] == manifest["sha256"]
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(DataError, match="changed or truncated"):
        load_dataset(out)
    out.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="changed or truncated"):
        load_dataset(out)


def mixed_folder(folder, n=70):
    """n images of varied size and kind (RGB JPEG, progressive, grayscale, CMYK, PNG) and one
    truncated JPEG, in two sub-folders."""
    rng = np.random.default_rng(2)
    for i in range(n):
        h, w = rng.integers(20, 60, 2)
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        kind = i % 5
        if kind == 0:
            img.save(sub / f"{i}.jpg", progressive=True)
        elif kind == 1:
            img.convert("L").save(sub / f"{i}.jpg")
        elif kind == 2:
            img.convert("CMYK").save(sub / f"{i}.jpg")
        elif kind == 3:
            img.save(sub / f"{i}.png")
        else:
            img.save(sub / f"{i}.jpg")
    good = (folder / "a/1.jpg").read_bytes()
    (folder / "a/broken.jpg").write_bytes(good[: len(good) // 2])


def test_worker_processes_write_the_same_file_as_one_process(tmp_path):
    """Two forked workers decode into a shared mapping of the output: the file, the sha256 and
    the skipped list must be exactly those of a single-process run."""
    folder = tmp_path / "imgs"
    mixed_folder(folder)
    manifests = {}
    for workers in (1, 2):
        manifests[workers] = preprocess(
            data_cfg(
                source="folder",
                folder=str(folder),
                image_size=16,
                skip_corrupt=True,
                workers=workers,
            ),
            tmp_path / f"w{workers}.npy",
            bars=False,
        )
    one, two = manifests[1], manifests[2]
    assert one["count"] == two["count"] == 70
    assert [s["file"] for s in two["skipped"]] == [str(folder / "a/broken.jpg")]
    assert one["sha256"] == two["sha256"]
    assert (tmp_path / "w1.npy").read_bytes() == (tmp_path / "w2.npy").read_bytes()
    images, _ = load_dataset(tmp_path / "w2.npy")
    assert tuple(images.shape) == (70, 3, 16, 16)
    assert images.float().std(dim=(1, 2, 3)).min() > 2  # every slot was written (not zeros)


def test_worker_failure_is_reported_and_leaves_no_file(tmp_path, monkeypatch):
    """An unreadable image found by a worker names the file; a worker killed by its decoder
    (here: exits) is reported instead of producing a tensor with a hole in it."""
    import ddpm.data.decode

    folder = tmp_path / "imgs"
    mixed_folder(folder)
    cfg = data_cfg(source="folder", folder=str(folder), image_size=16, workers=2)
    with pytest.raises(DataError, match="broken.jpg"):
        preprocess(cfg, tmp_path / "d.npy", bars=False)
    (folder / "a/broken.jpg").unlink()

    real = ddpm.data.decode.load_square

    def crash_on_7(path, size, resample):
        if path.name == "7.jpg":
            os._exit(7)
        return real(path, size, resample)

    monkeypatch.setattr(ddpm.data.decode, "load_square", crash_on_7)
    with pytest.raises(DataError, match="exit code 7"):
        preprocess(cfg, tmp_path / "d.npy", bars=False)
    assert not list(tmp_path.glob("*d.npy*"))


@pytest.mark.parametrize("kind", ["baseline", "progressive", "grayscale"])
def test_reduced_jpeg_decode_matches_pillow_draft(tmp_path, kind):
    """The simplejpeg path gives the pixels Pillow's draft mode gives, at the same scale: here
    1/4, the smallest that keeps both sides at least 1.5 times the target (51 for 34). (libjpeg
    also scales by other multiples of 1/8, which Pillow's draft mode does not use.)"""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (203, 250, 3), dtype=np.uint8))
    path = tmp_path / "x.jpg"
    if kind == "grayscale":
        img.convert("L").save(path)
    else:
        img.save(path, progressive=kind == "progressive")
    with Image.open(path) as ref:
        ref.draft("RGB", (50, 50))  # Pillow picks its scale as min(203 // 50, 250 // 50) = 4
        expected = np.asarray(ref.convert("RGB"))
    got = np.asarray(_decode_reduced(path, 34))
    assert got.shape == expected.shape == (51, 63, 3)
    np.testing.assert_array_equal(got, expected)


def test_cmyk_and_png_become_rgb(tmp_path):
    red = Image.new("RGB", (48, 32), (230, 20, 20))
    red.convert("CMYK").save(tmp_path / "cmyk.jpg")
    red.save(tmp_path / "red.png")
    for name in ("cmyk.jpg", "red.png"):
        pixels = load_square(tmp_path / name, 16)
        assert pixels.shape == (16, 16, 3)
        np.testing.assert_allclose(pixels.reshape(-1, 3).mean(0), (230, 20, 20), atol=4)


def test_resize_filter_is_recorded_and_used(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(3):  # decoded at 1/8 scale (12 x 15), then resized to 8 x 8
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg"
        )
    files = {}
    for resample in ("bilinear", "bicubic"):
        manifest = preprocess(
            data_cfg(source="folder", folder=str(folder), image_size=8, resample=resample),
            tmp_path / f"{resample}.npy",
            bars=False,
        )
        assert resample in manifest["preprocessing"]["resize"]
        files[resample] = np.load(tmp_path / f"{resample}.npy").astype(int)
    difference = np.abs(files["bilinear"] - files["bicubic"])
    assert 0 < difference.mean() < 20  # the same images, filtered differently


def _photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields, hard edges and a little noise: what a resize filter must handle."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack(
        [128 + 100 * np.sin(6 * x + 3 * y), 128 + 90 * np.cos(9 * y), 255 * (x > 0.5) * (y < 0.6)],
        axis=-1,
    )
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("side", [64, 96, 100, 128, 200, 256, 333, 500, 512, 640, 768, 1024])
def test_reduced_decoding_stays_close_to_a_full_antialiased_resize(tmp_path, side):
    """Whatever the input size, the fast path (reduced DCT scale, then an antialiased resize)
    is within 2/255 on average of decoding in full and resizing with Pillow's antialiased
    bilinear filter; at 512 px decoding straight to 64 px at 1/8 scale was 3.4/255 off."""
    h, w = side, side * 5 // 4
    path = tmp_path / "x.jpg"
    Image.fromarray(_photo_like(h, w)).save(path, quality=95)
    with Image.open(path) as full:
        square = (max(0, (w - h) / 2), 0, max(0, (w - h) / 2) + min(h, w), min(h, w))
        reference = np.asarray(full.convert("RGB").resize((64, 64), Image.BILINEAR, box=square))
    ours = load_square(path, 64)
    error = np.abs(ours.astype(float) - reference).mean()
    assert error < 2.0, f"{side}px: {error:.2f}/255 from the reference resize"


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with an orientation tag comes out upright, as cameras, browsers
    and torchvision / Pillow's exif_transpose show it."""
    upright = np.zeros((40, 20, 3), np.uint8)  # tall: top half red, bottom half blue
    upright[:20, :, 0] = upright[20:, :, 2] = 255
    stored = np.rot90(upright, k=-1)  # stored turned 90 degrees clockwise: 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to view"
    for name in ("photo.jpg", "photo.png"):
        Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / name, exif=exif)
        pixels = load_square(tmp_path / name, 8).astype(int)
        top, bottom = pixels[:3].mean(axis=(0, 1)), pixels[-3:].mean(axis=(0, 1))
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], name


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels = load_square(tmp_path / "deep.png", 32)
    expected = np.round(ramp / 257.0)
    assert np.abs(pixels[..., 0].astype(float) - expected).max() <= 1
    assert pixels.std() > 60, "a ramp, not a white square"


def test_a_jpeg_corrupted_mid_stream_is_unreadable_not_smeared(tmp_path):
    data = io.BytesIO()
    Image.fromarray(_photo_like(60, 80)).save(data, "JPEG")
    bad = bytearray(data.getvalue())
    mid = len(bad) // 2
    bad[mid : mid + 40] = bytes(0xFF if k % 2 else 0x00 for k in range(40))
    (tmp_path / "bad.jpg").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="damaged JPEG"):
        load_square(tmp_path / "bad.jpg", 16)
