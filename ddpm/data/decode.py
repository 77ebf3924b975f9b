"""Decoding image files to square uint8 arrays: upright by their EXIF orientation, converted to
RGB, shrunk by the JPEG decoder where it can, resized on the shorter side and centre-cropped;
many files at once in worker processes."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import signal
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import ExifTags, Image
from tqdm.auto import tqdm

from ddpm.plumbing.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


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
    out: np.ndarray, paths: list[Path], resample: str, workers: int, bars: bool
) -> dict[int, str]:
    """Decode paths[i] into out[i] (uint8 [3 x S x S]); returns {index: error} for the images
    that could not be read.

    With several workers, `out` must be a shared mapping (np.memmap): forked processes write
    straight into it and take indices in small batches from a shared counter, so nothing is
    pickled per image and the parent only waits and draws the progress bar.
    """
    n = len(paths)
    workers = min(workers or _usable_cpus(), max(1, n // 32))
    bar = tqdm(total=n, unit="img", desc="preprocess", disable=not bars)
    if workers == 1:
        errors: dict[int, str] = {}
        spans = iter([range(i, min(n, i + 256)) for i in range(0, n, 256)])
        with bar:  # closed however it ends, so an error message starts on its own line
            size = out.shape[-1]
            claim = lambda: next(spans, None)  # noqa: E731
            _decode_range(out, paths, size, resample, claim, errors.__setitem__, bar.update)
        return errors
    return _decode_in_workers(out, paths, resample, workers, bar)


def _decode_in_workers(out: np.ndarray, paths: list[Path], resample: str, workers: int, bar):
    """`_decode_into` with `workers` forked processes; the parent drains their failures and
    draws `bar`."""
    n, batch = len(paths), 16
    ctx = multiprocessing.get_context("fork")
    next_index, finished, failures = ctx.Value("q", 0), ctx.Value("q", 0), ctx.SimpleQueue()

    def claim():
        with next_index.get_lock():
            start = next_index.value
            next_index.value = start + batch
        return range(start, min(n, start + batch)) if start < n else None

    def count(k):
        with finished.get_lock():
            finished.value += k

    def failed(i, e):
        failures.put((i, e))

    work = (out, paths, out.shape[-1], resample, claim, failed, count, True)
    procs = [ctx.Process(target=_decode_range, args=work, daemon=True) for _ in range(workers)]
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
