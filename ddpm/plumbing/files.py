"""File helpers shared by every stage: checksums, atomic writes, torch files with clear errors,
and the one place that turns the operating system's refusals into messages that name the path."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm.plumbing.errors import PipelineError


class FileSystemError(PipelineError):
    """The operating system refused to read or write a file (full disk, read-only folder, a file
    where a folder should be, ...); the message names the path and the cause."""

    exit_code = 1


_CAUSES = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (an immutable file or folder?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way where a folder should be",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


def describe_os_error(e: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: the path (`path`, else the one the error names) and the cause."""
    where = path if path is not None else e.filename
    cause = _CAUSES.get(e.errno, e.strerror or type(e).__name__)
    code = f" [{errno.errorcode.get(e.errno, e.errno)}]" if e.errno else ""
    return f"{where}: {cause}{code}" if where is not None else f"{cause}{code}"


def fault(e: OSError, path: str | Path, doing: str = "cannot write") -> FileSystemError:
    """A FileSystemError for `e`, naming `path` (the file the user knows, not a temporary)."""
    return FileSystemError(f"{doing} {describe_os_error(e, path)}")


def check_output_dir(folder: str | Path, target: str | Path | None = None) -> Path:
    """Make sure `folder` can be made (or exists) and takes new files, before a stage does
    expensive work whose result would otherwise be lost at the end: a file in the way, a
    read-only or full file system are refused now, naming the folder (or the `target` file to
    be written in it). Creates nothing."""
    folder = Path(folder)
    target = Path(target) if target is not None else folder
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        where = "" if existing == target else f", so {target} cannot be made"
        raise FileSystemError(f"{existing} is a file{where}; give a folder for the outputs")
    probe = existing / f".write-test.tmp{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            try:
                f.write(b"\0" * 4096)  # a block: an empty file fits on a full disk
                f.flush()
                os.fsync(f.fileno())
            finally:
                probe.unlink()
    except OSError as e:
        raise fault(e, target) from None
    return folder


def check_output_file(path: str | Path) -> Path:
    """`check_output_dir` for the folder of an output file, and no folder in the file's way."""
    path = Path(path)
    if path.is_dir():
        raise FileSystemError(f"{path} is a folder; give the path of a file to write")
    check_output_dir(path.parent, path)
    return path


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(folder).free


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
    fails (a full disk, an interrupt), the temporary file is removed, and an OS error names
    `path`, never the temporary. Temporaries of `path` that a killed process left are removed
    first."""
    path = Path(path)
    created = []  # folders made for `path`, removed again if it is not written
    try:
        created = make_folders(path.parent)
        remove_stale_temporaries(path.parent, path.name)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    except OSError as e:
        _remove_empty(created)
        raise fault(e, path) from None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        _remove_empty(created)
        if isinstance(e, OSError):
            raise fault(e, path) from None
        raise


def make_folders(folder: str | Path) -> list[Path]:
    """`mkdir -p folder`; returns the folders it made, outermost first."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    for p in missing:
        p.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for p in reversed(folders):
        with contextlib.suppress(OSError):
            p.rmdir()


_TEMPORARY = re.compile(r"^\.(.+)\.tmp(\d+)$")


def remove_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporaries that `atomic_path` left in `folder` (of the file `name` only, if
    given) because their process was killed mid-write (`kill -9`, SIGBUS): `.NAME.tmpPID` whose
    process no longer runs."""
    removed = []
    for tmp in Path(folder).glob(f".{glob.escape(name)}.tmp*" if name else ".*.tmp*"):
        match = _TEMPORARY.match(tmp.name)
        if match and not _running(int(match[2])):
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
