"""The `download` stage: the Flowers-102 files from a configurable base URL, each streamed to a
temporary name, checked against its md5 and renamed, and the image archive extracted safely."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ddpm.plumbing.errors import DataError
from ddpm.plumbing.files import (
    check_output_dir,
    fault,
    file_digest,
    make_folders,
)


def _fetch(url: str, dest: Path, expected_md5: str, bars: bool) -> None:
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
                    disable=not bars,
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
    bars: bool = True,
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
                _fetch(url, dest, expected, bars)
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
