from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from entitwist.utils import atomic_path, atomic_write_bytes


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_leaves_target_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_path_refuses_existing_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"), atomic_path(target, overwrite=False):
        pass
    assert target.read_text() == "keep"


def test_atomic_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_remove_entries_deletes_only_the_named_entries(tmp_path):
    from entitwist.utils import remove_entries

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "annotations.jsonl").write_text("{}\n")
    (tmp_path / "mine.txt").write_text("keep me")
    remove_entries(tmp_path, ["images", "annotations.jsonl", "not_there"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep me"
