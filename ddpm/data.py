"""Data: download Flowers-102 and preprocess any source to one uint8 tensor file.

The preprocessed dataset is `NAME.npy` (uint8, [N x 3 x S x S]) with `NAME.json` beside it: a
manifest holding the count, per-split counts, the preprocessing parameters, the source checksums
and the sha256 of the tensor file. Reading it back is `ddpm.dataset`'s job.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import multiprocessing
import os
import shutil
import signal
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path, PurePosixPath

import numpy as np
import simplejpeg
from PIL import ExifTags, Image
from tqdm.auto import tqdm

from ddpm import __version__
from ddpm.dataset import DataError
from ddpm.files import (
    FileSystemError,
    atomic_path,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    fault,
    file_digest,
    free_bytes,
    make_folders,
)
from ddpm.layout import manifest_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# -- download ------------------------------------------------------------------------------------


def _fetch(url: str, dest: Path, expected_md5: str, progress: bool) -> None:
    """Stream `url` to a temporary file beside `dest`, check its md5, then rename it to `dest`."""
    part = dest.with_name(f".{dest.name}.part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            with (
                _local(dest, open, part, "wb") as f,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                while block := response.read(1 << 20):  # a network error here is retried
                    _local(dest, f.write, block)
                    md5.update(block)
                    done += len(block)
                    bar.update(len(block))
            if total is not None and done != total:
                raise ConnectionError(f"connection closed after {done} of {total} bytes")
        actual = md5.hexdigest()
        if actual != expected_md5:
            raise DataError(
                f"checksum mismatch for {dest.name} from {url}: expected md5 {expected_md5}, "
                f"got {actual}; the file was removed. Check data.base_url and data.md5."
            )
        _local(dest, os.replace, part, dest)
    finally:
        part.unlink(missing_ok=True)


def _local(dest: Path, call, *args):
    """A call on the local disk during a download: its OSError (a full disk, a read-only folder)
    becomes an error naming `dest`, never a network error to retry."""
    try:
        return call(*args)
    except OSError as e:
        raise fault(e, dest) from None


def download(
    data_cfg,
    out_dir: str | Path,
    *,
    retries: int = 4,
    backoff_s: float = 2.0,
    progress: bool = True,
) -> dict[str, str]:
    """Fetch every file in `data_cfg.md5` from `data_cfg.base_url` into `out_dir`, verified.

    Files that are already present with the right md5 are kept. Network failures are retried
    `retries` times with exponential backoff. The archive is then extracted safely. Returns the
    md5 of each file.
    """
    out_dir = check_output_dir(out_dir)
    _local(out_dir, make_folders, out_dir)
    for name, expected in data_cfg.md5.items():
        dest = out_dir / name
        if dest.exists():
            if file_digest(dest, "md5") == expected:
                continue
            dest.unlink()  # a stale or tampered file: fetch it again
        url = f"{data_cfg.base_url.rstrip('/')}/{name}"
        for attempt in range(retries + 1):
            try:
                _fetch(url, dest, expected, progress)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                if isinstance(e, urllib.error.HTTPError) and e.code == 404:
                    raise DataError(
                        f"{url} does not exist (HTTP 404); check data.base_url"
                    ) from None
                if attempt == retries:
                    raise DataError(
                        f"could not download {url} after {retries + 1} attempts: {e}"
                    ) from None
                wait = backoff_s * 2**attempt
                print(f"download of {url} failed ({e}); retrying in {wait:.0f} s", flush=True)
                time.sleep(wait)
    for name in data_cfg.md5:
        if name.endswith((".tgz", ".tar.gz", ".tar")):
            safe_extract(out_dir / name, out_dir)
    return dict(data_cfg.md5)


def safe_extract(archive: Path, out_dir: Path) -> None:
    """Extract a tar archive, refusing absolute paths, `..`, links and special files.

    Extraction goes to a temporary folder first, so a crash never leaves a half-extracted tree
    that looks complete; a stamp file records which archive (by md5) was extracted.
    """
    stamp = out_dir / f".{archive.name}.extracted"
    digest = file_digest(archive, "md5")
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    tmp = out_dir / f".{archive.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                raise DataError(
                    f"{archive}: refusing to extract unsafe member {m.name!r} "
                    "(absolute path, '..', link or device); the archive is not trustworthy"
                )
        try:
            tmp.mkdir()
            tar.extractall(tmp, members=members, filter="data")
        except BaseException as e:  # nothing half-extracted stays
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise fault(e, out_dir, "cannot extract into") from None
            raise
    for top in tmp.iterdir():
        target = out_dir / top.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(top, target)
    tmp.rmdir()
    stamp.write_text(digest + "\n")


# -- image lists per source ----------------------------------------------------------------------


def flowers_image_list(raw_dir: str | Path, splits: Iterable[str]) -> list[tuple[Path, str]]:
    """(path, split) for each Flowers-102 image of the chosen splits, from setid.mat."""
    from scipy.io import loadmat

    raw_dir = Path(raw_dir)
    setid_path = raw_dir / "setid.mat"
    if not setid_path.exists():
        raise DataError(f"{setid_path} is missing; run `python -m ddpm download` first")
    setid = loadmat(setid_path)
    items = []
    for split in splits:
        for image_id in np.asarray(setid[FLOWERS_SPLIT_KEYS[split]]).ravel():
            items.append((raw_dir / "jpg" / f"image_{int(image_id):05d}.jpg", split))
    missing = [str(p) for p, _ in items if not p.exists()]
    if missing:
        raise DataError(
            f"{len(missing)} images listed in setid.mat are missing, e.g. {missing[0]}; "
            "delete the raw folder and download again"
        )
    return items


def folder_image_list(folder: str | Path) -> list[tuple[Path, str]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.folder: {folder} is not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(
            f"data.folder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}"
        )
    return [(p, "all") for p in paths]


# -- decoding and resizing -----------------------------------------------------------------------


# Decode JPEGs at a reduced DCT scale, but to at least this many times the target side, so that
# the antialiased resize after it does the filtering: at exactly the target side (e.g. 512 px at
# 1/8 to 64 px) the DCT scaling alone is an 8 x 8 box average, 3.4/255 off on average.
DECODE_MARGIN = 1.5
_TRANSPOSE = {  # EXIF orientation -> the transpose that shows the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation, as cameras, browsers and Pillow's exif_transpose do."""
    return img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img


def _to_rgb(img: Image.Image, path: str | Path) -> Image.Image:
    """RGB from any mode; 16-bit greyscale is rescaled (Pillow's convert would clip it)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or grey.max() > 255:
            grey = grey / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise DataError(f"{path}: 32-bit float images are not supported; save it as 8 or 16 bit")
    return img.convert("RGB")


def _has_exif(data: bytes) -> bool:
    """Whether an encoded image carries EXIF: a JPEG APP1 "Exif" segment before its first scan,
    or a PNG eXIf chunk before its image data. A few header reads, not a parse."""
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 10 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker in (0xDA, 0xD9):  # start of scan, end of image: no EXIF came first
                return False
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return True
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        return False
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 8 <= len(data):
            chunk = data[i + 4 : i + 8]
            if chunk in (b"eXIf", b"IDAT"):
                return chunk == b"eXIf"
            i += 12 + int.from_bytes(data[i : i + 4], "big")
        return False
    return True  # other formats: let Pillow look


def _orientation(data: bytes) -> int:
    """The EXIF orientation of an encoded image (1: as stored)."""
    if not _has_exif(data):
        return 1
    with Image.open(io.BytesIO(data)) as img:
        return img.getexif().get(ExifTags.Base.Orientation, 1)


def _decode_reduced(path: str | Path, size: int) -> Image.Image:
    """Decode an image as upright RGB; JPEGs at the smallest DCT scale (a multiple of 1/8) that
    keeps both sides >= DECODE_MARGIN x size. JPEGs go through simplejpeg (libjpeg-turbo), which
    refuses damaged data; only what it does not support goes to Pillow."""
    data = Path(path).read_bytes()
    side = math.ceil(DECODE_MARGIN * size)
    orientation = _orientation(data)
    if data[:2] == b"\xff\xd8":
        try:
            # The accurate IDCT and chroma upsampling: at reduced scales libjpeg ignores these
            # flags (same pixels, same speed); at full scale the fast ones are up to 3.4/255 off.
            pixels = simplejpeg.decode_jpeg(
                data,
                "RGB",
                fastdct=False,
                fastupsample=False,
                min_height=side,
                min_width=side,
                strict=True,  # a damaged file raises instead of decoding to grey
            )
            return _upright(Image.fromarray(pixels), orientation)
        except ValueError as e:
            if "Unsupported" not in str(e):
                raise DataError(f"{path} is a damaged JPEG ({e})") from None
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (side, side))
        return _upright(_to_rgb(img, path), orientation)


def load_square(path: str | Path, size: int, resample: str = "bilinear") -> np.ndarray:
    """Decode an image (at reduced scale where the format allows), resize its shorter side to
    `size` (antialiased) and centre-crop. Grayscale (8 or 16 bit), CMYK and palette images
    become RGB; an EXIF orientation is applied first. Returns uint8 [S x S x 3]."""
    img = _decode_reduced(path, size)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    # Resizing the centred square box is the same as resize-shorter-side then centre-crop.
    img = img.resize((size, size), RESAMPLE[resample], box=(left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8)


def _usable_cpus() -> int:
    """CPUs this process may run on: respects taskset, cgroup CPU sets and SLURM allocations."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _decode_range(out, paths, size, resample, claim, errors, done, worker=False) -> None:
    """Decode the images whose indices `claim()` hands out into out[i] (3 x S x S)."""
    if worker:  # Ctrl-C reaches the whole process group: the parent alone answers it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (span := claim()) is not None:
        for i in span:
            try:
                out[i] = load_square(paths[i], size, resample).transpose(2, 0, 1)
            except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
                errors(i, f"{type(e).__name__}: {e}")
        done(len(span))


def _decode_into(
    out: np.ndarray, paths: list[Path], resample: str, workers: int, progress: bool
) -> dict[int, str]:
    """Decode paths[i] into out[i] (uint8 [3 x S x S]); returns {index: error} for the images
    that could not be read.

    With several workers, `out` must be a shared mapping (np.memmap): forked processes write
    straight into it and take indices in small batches from a shared counter, so nothing is
    pickled per image and the parent only waits and draws the progress bar.
    """
    n, size = len(paths), out.shape[-1]
    workers = min(workers or _usable_cpus(), max(1, n // 32))
    bar = tqdm(total=n, unit="img", desc="preprocess", disable=not progress)
    if workers == 1:
        errors: dict[int, str] = {}
        spans = iter([range(i, min(n, i + 256)) for i in range(0, n, 256)])
        with bar:  # closed however it ends, so an error message starts on its own line
            _decode_range(
                out,
                paths,
                size,
                resample,
                lambda: next(spans, None),
                errors.__setitem__,
                bar.update,
            )
        return errors

    ctx = multiprocessing.get_context("fork")
    batch = 16
    next_index = ctx.Value("q", 0)
    finished = ctx.Value("q", 0)
    failures = ctx.SimpleQueue()

    def claim():
        with next_index.get_lock():
            start = next_index.value
            next_index.value = start + batch
        return range(start, min(n, start + batch)) if start < n else None

    def count(k):
        with finished.get_lock():
            finished.value += k

    procs = [
        ctx.Process(
            target=_decode_range,
            args=(
                out,
                paths,
                size,
                resample,
                claim,
                lambda i, e: failures.put((i, e)),
                count,
                True,
            ),
            daemon=True,
        )
        for _ in range(workers)
    ]
    errors = {}
    try:
        for p in procs:
            p.start()
        running = [p.sentinel for p in procs]
        while running:
            for ended in wait(running, timeout=0.1):
                running.remove(ended)
            while not failures.empty():  # drained as we go, so a worker never blocks on put
                i, e = failures.get()
                errors[i] = e
            bar.update(finished.value - bar.n)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        bar.close()
    dead = [p.exitcode for p in procs if p.exitcode != 0]
    if dead:
        raise DataError(
            f"a preprocessing worker died (exit code {dead[0]}) before finishing; "
            "rerun with data.workers: 1 to see which image crashes the decoder"
        )
    return errors


# -- synthetic flowers ---------------------------------------------------------------------------

_PETAL_COLOURS = np.array(
    [
        [0.93, 0.35, 0.55],
        [0.85, 0.10, 0.15],
        [0.98, 0.82, 0.15],
        [0.55, 0.25, 0.75],
        [0.97, 0.95, 0.92],
        [0.98, 0.55, 0.10],
        [0.35, 0.45, 0.90],
        [0.95, 0.60, 0.75],
    ]
)
_CENTRE_COLOURS = np.array(
    [[0.95, 0.80, 0.10], [0.35, 0.20, 0.08], [0.10, 0.08, 0.05], [0.90, 0.50, 0.10]]
)


def synthetic_flower(
    seed: int, index: int, size: int, attributes: dict | None = None
) -> np.ndarray:
    """One procedurally drawn flower, uint8 [S x S x 3], determined by (seed, index) alone.

    A rose-curve corolla (5-9 petals, random colour, size, rotation and position) with a centre
    disc and a stem, on a two-colour gradient background; drawn at 2x and box-filtered. The
    values it was drawn from go into `attributes`, if given (what `ddpm.features` learns).
    """
    rng = np.random.default_rng([seed, index])
    r = 2 * size
    yy, xx = (np.mgrid[0:r, 0:r] + 0.5) / r  # (R, R) in [0, 1]
    top, bottom = rng.uniform(0.05, 0.6, 3), rng.uniform(0.05, 0.6, 3)
    bottom[1] = max(bottom[1], rng.uniform(0.3, 0.6))  # greenish ground
    img = top + (bottom - top) * yy[..., None]  # (R, R, 3)

    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)
    radius = rng.uniform(0.18, 0.34)
    stem_w = rng.uniform(0.012, 0.025)
    stem = (np.abs(xx - cx - 0.08 * (yy - cy) ** 2) < stem_w) & (yy > cy)
    img[stem] = [0.15, 0.5 + 0.2 * rng.random(), 0.15]

    k = int(rng.integers(5, 10))
    phase = rng.uniform(0, 2 * np.pi)
    sharp = rng.uniform(0.6, 2.0)
    dx, dy = xx - cx, yy - cy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    edge = radius * (0.35 + 0.65 * np.abs(np.cos(k * (theta - phase) / 2)) ** sharp)
    petal = rho < edge
    colour_index = int(rng.integers(len(_PETAL_COLOURS)))
    colour = np.clip(_PETAL_COLOURS[colour_index] + rng.normal(0, 0.06, 3), 0, 1)
    shade = 0.65 + 0.35 * np.clip(rho / radius, 0, 1)  # darker towards the centre
    img[petal] = colour * shade[petal][:, None]
    centre_radius = rng.uniform(0.18, 0.3)
    centre = rho < radius * centre_radius
    centre_colour = np.clip(
        _CENTRE_COLOURS[rng.integers(len(_CENTRE_COLOURS))] + rng.normal(0, 0.04, 3), 0, 1
    )
    img[centre] = centre_colour

    img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))  # 2x2 box filter
    if attributes is not None:
        attributes.update(
            petals=k,
            colour_index=colour_index,
            petal_colour=colour,
            centre_colour=centre_colour,
            top=top,
            bottom=bottom,
            position=np.array([cx, cy]),
            radius=radius,
            sharpness=sharp,
            centre_radius=centre_radius,
        )
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def synthetic_dataset(count: int, size: int, seed: int, progress: bool = False) -> np.ndarray:
    """uint8 [N x 3 x S x S]; image i depends only on (seed, i)."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    # A context manager closes the bar however the loop ends (Ctrl-C too), so the error
    # message that follows starts on its own line.
    with tqdm(total=count, desc="synthetic", unit="img", disable=not progress) as bar:
        for i in range(count):
            images[i] = synthetic_flower(seed, i, size).transpose(2, 0, 1)
            bar.update(1)
    return images


# -- preprocess and load -------------------------------------------------------------------------


def _finish_manifest(manifest: dict, shape: tuple[int, ...], sha256: str) -> dict:
    return {
        **manifest,
        "count": int(shape[0]),
        "shape": list(shape),
        "dtype": "uint8",
        "layout": "N x 3 x S x S",
        "sha256": sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
    }


def _save_dataset(images: np.ndarray, out_file: Path, manifest: dict) -> dict:
    """Write the tensor as .npy and then its manifest (which carries the file's sha256), each
    atomically."""
    with atomic_path(out_file) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(images))
        sha256 = file_digest(tmp)
    manifest = _finish_manifest(manifest, images.shape, sha256)
    atomic_write_json(manifest_path(out_file), manifest)
    return manifest


def _reserve(tmp: Path, out_file: Path) -> None:
    """Allocate the whole of a file that is written through a memory map. A mapping of a sparse
    file that the disk cannot back kills the process with SIGBUS, no message and the temporary
    left behind; reserving the blocks first turns a full disk into an error that says so."""
    size = tmp.stat().st_size
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = free_bytes(tmp.parent)
        raise FileSystemError(
            f"cannot write {out_file}: it needs {size / 1e6:,.1f} MB and {tmp.parent} has "
            f"{free / 1e6:,.1f} MB free [{errno.errorcode[e.errno]}]"
        ) from None
    finally:
        os.close(fd)


def preprocess(
    data_cfg, out_file: str | Path, raw_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """Build the dataset tensor for `data_cfg.source` and write it with its manifest.

    Returns the manifest. A corrupt image raises `DataError` naming the file, unless
    `data_cfg.skip_corrupt`, in which case it is skipped and listed in the manifest.
    """
    out_file = check_output_file(out_file)
    size = data_cfg.image_size
    base = {"source": data_cfg.source, "image_size": size}
    if data_cfg.source == "synthetic":
        images = synthetic_dataset(
            data_cfg.synthetic_count, size, data_cfg.synthetic_seed, progress
        )
        manifest = {
            **base,
            "splits": {"all": len(images)},
            "skipped": [],
            "preprocessing": {"generator": "synthetic_flower", "seed": data_cfg.synthetic_seed},
            "source_checksums": {},
        }
        return _save_dataset(images, out_file, manifest)

    if data_cfg.source == "flowers102":
        if raw_dir is None:
            raise DataError("preprocess of flowers102 needs --raw DIR (the download folder)")
        items = flowers_image_list(raw_dir, data_cfg.splits)
        checksums = {name: file_digest(Path(raw_dir) / name, "md5") for name in data_cfg.md5}
    else:
        items = folder_image_list(data_cfg.folder)
        checksums = {}

    paths = [p for p, _ in items]
    shape = (len(paths), 3, size, size)
    # The workers decode straight into the output file (a shared mapping of it), which saves
    # holding and writing a second copy of the dataset.
    with atomic_path(out_file) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(tmp, out_file)
        errors = _decode_into(images, paths, data_cfg.resample, data_cfg.workers, progress)
        if errors and not data_cfg.skip_corrupt:
            i = min(errors)
            raise DataError(
                f"cannot read image {paths[i]}: {errors[i]}. Replace the file, or set "
                "data.skip_corrupt: true to skip unreadable images"
            )
        kept = [i for i in range(len(paths)) if i not in errors]
        if not kept:
            raise DataError("no readable images; nothing to preprocess")
        if errors:
            readable = np.array(images[kept])
            del images
            with open(tmp, "wb") as f:
                np.save(f, readable)
            shape = readable.shape
        else:
            images.flush()
            del images
        sha256 = file_digest(tmp)
    skipped = [{"file": str(paths[i]), "error": errors[i]} for i in sorted(errors)]
    kept_splits = [items[i][1] for i in kept]
    counts = {s: kept_splits.count(s) for s in dict.fromkeys(kept_splits)}
    manifest = {
        **base,
        "splits": counts,
        "skipped": skipped,
        "preprocessing": {
            "resize": f"shorter side to image_size, {data_cfg.resample}, antialiased",
            "crop": "centre",
            "jpeg_decode": "reduced DCT scale (1/8, 1/4 or 1/2, shorter side kept >= size)",
        },
        "source_checksums": checksums,
    }
    manifest = _finish_manifest(manifest, shape, sha256)
    atomic_write_json(manifest_path(out_file), manifest)
    return manifest
