import pytest

from ddpm.files import atomic_path, atomic_write_bytes, atomic_write_json, file_digest


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
