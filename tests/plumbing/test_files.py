import errno
import os
import subprocess

import pytest
from conftest import small_disk

from ddpm.plumbing.files import (
    FileSystemError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    describe_os_error,
    file_digest,
)


def test_atomic_path_renames_only_a_finished_file(tmp_path):
    target = tmp_path / "sub/out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert not target.exists(), "the target appears only when the block ends"
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_file_digest_reads_in_chunks(tmp_path):
    import hashlib

    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert file_digest(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()
    assert file_digest(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()


def test_json_is_strict_no_bare_nan(tmp_path):
    """metrics.json and friends must parse in strict readers (jq, JavaScript)."""
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"is_std": float("nan")})
    assert not (tmp_path / "m.json").exists()
    atomic_write_json(tmp_path / "m.json", {"is_std": None})
    assert (tmp_path / "m.json").read_text() == '{\n  "is_std": null\n}\n'


def test_a_write_that_the_disk_refuses_names_the_file_and_leaves_no_temporary(tmp_path):
    with small_disk(tmp_path / "disk", size_kb=16) as d:
        with pytest.raises(FileSystemError) as e:
            atomic_write_bytes(d / "big.bin", b"\0" * 64_000)
        assert str(e.value).startswith(f"cannot write {d / 'big.bin'}: no space left on the disk")
        assert ".tmp" not in str(e.value), "the message names the file, not its temporary"
        assert list(d.iterdir()) == []
    with (
        small_disk(tmp_path / "ro", read_only=True) as d,
        pytest.raises(FileSystemError, match="the file system is read-only"),
    ):
        atomic_write_bytes(d / "sub/x.json", b"{}")


def test_a_writer_removes_the_temporaries_a_killed_writer_left_of_its_own_file(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    own = tmp_path / f".out.bin.tmp{dead.pid}"
    other = tmp_path / f".other.bin.tmp{dead.pid}"  # another file's: not this writer's to judge
    live = tmp_path / f".out.bin.tmp{os.getpid()}x"  # not a temporary's name at all
    for path in (own, other, live):
        path.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "out.bin", b"new")
    assert not own.exists() and other.exists() and live.exists()


def test_outputs_are_checked_before_the_work_and_nothing_is_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileSystemError, match="file is a file, so .*/file/a/b cannot be made"):
        check_output_dir(tmp_path / "file/a/b")
    with pytest.raises(FileSystemError, match="is a folder; give the path of a file"):
        check_output_file(tmp_path)
    assert check_output_dir(tmp_path / "new/folder") == tmp_path / "new/folder"
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "no probe is left"


@pytest.mark.parametrize(
    "number, cause",
    [
        (errno.ENOSPC, "no space left on the disk [ENOSPC]"),
        (errno.EROFS, "the file system is read-only [EROFS]"),
        (errno.ENOTDIR, "a part of the path is a file, not a folder [ENOTDIR]"),
    ],
)
def test_os_errors_become_one_line_with_the_path_and_the_cause(number, cause):
    e = OSError(number, os.strerror(number), "/tmp/.x.tmp123")
    assert describe_os_error(e, "/data/x") == f"/data/x: {cause}"
    assert describe_os_error(e) == f"/tmp/.x.tmp123: {cause}"
