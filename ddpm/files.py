"""File helpers shared by every stage: checksums, atomic writes, torch files with clear errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm.errors import PipelineError


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to. When the block succeeds, the file is
    synced to disk and renamed to `path`, so `path` appears complete or not at all; when it
    fails (a full disk, an interrupt), the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that `atomic_path` left in `folder` because their process was
    killed mid-write (`kill -9`): `.NAME.tmpPID` whose process no longer runs."""
    removed = []
    for tmp in Path(folder).iterdir():
        match = _TEMPORARY.match(tmp.name)
        if match and not _running(int(match[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that it appears complete or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj) -> None:
    """JSON that strict readers (jq, JavaScript) accept: a NaN or infinity raises instead of
    being written as a bare `NaN`."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def save_torch(path: str | Path, obj) -> None:
    """torch.save, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | Path, error: type[PipelineError], missing: str, damaged: str):
    """torch.load (tensors and plain data only) that turns a missing or damaged file into
    `error` with the caller's advice instead of a pickle traceback."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{path} does not exist; {missing}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for damaged files
        raise error(
            f"{path} is unreadable ({type(e).__name__}: {str(e)[:200]}); it is truncated or "
            f"corrupted. {damaged}"
        ) from None
