"""The `preprocess` stage: any source (Flowers-102, an image folder, the synthetic flowers) to one
uint8 tensor file.

The preprocessed dataset is `NAME.npy` (uint8, [N x 3 x S x S]) with `NAME.json` beside it: a
manifest holding the count, per-split counts, the preprocessing parameters, the source checksums
and the sha256 of the tensor file. Reading it back is `ddpm.data.dataset`'s job.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ddpm import __version__
from ddpm.data.decode import IMAGE_EXTENSIONS, _decode_into
from ddpm.data.synthetic import synthetic_dataset
from ddpm.pipeline.layout import manifest_path
from ddpm.plumbing.errors import DataError
from ddpm.plumbing.files import (
    FileSystemError,
    atomic_path,
    atomic_write_json,
    check_output_file,
    file_digest,
    free_bytes,
)

FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


# -- download ------------------------------------------------------------------------------------


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


# -- synthetic flowers ---------------------------------------------------------------------------


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
    data_cfg, out_file: str | Path, raw_dir: str | Path | None = None, bars: bool = True
) -> dict:
    """Build the dataset tensor for `data_cfg.source` and write it with its manifest.

    Returns the manifest. A corrupt image raises `DataError` naming the file, unless
    `data_cfg.skip_corrupt`, in which case it is skipped and listed in the manifest.
    """
    out_file = check_output_file(out_file)
    size = data_cfg.image_size
    base = {"source": data_cfg.source, "image_size": size}
    if data_cfg.source == "synthetic":
        images = synthetic_dataset(data_cfg.synthetic_count, size, data_cfg.synthetic_seed, bars)
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
    errors, kept, shape, sha256 = _write_images(data_cfg, paths, out_file, bars)
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


def _write_images(data_cfg, paths: list[Path], out_file: Path, bars: bool):
    """Decode `paths` into the dataset file; returns (errors by index, the kept indices, the
    file's shape, its sha256). An unreadable image raises unless `data_cfg.skip_corrupt`."""
    size = data_cfg.image_size
    shape = (len(paths), 3, size, size)
    # The workers decode straight into the output file (a shared mapping of it), which saves
    # holding and writing a second copy of the dataset.
    with atomic_path(out_file) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(tmp, out_file)
        errors = _decode_into(images, paths, data_cfg.resample, data_cfg.workers, bars)
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
    return errors, kept, shape, sha256
