"""Opening a configured folder's root without following a symlink at any level (rootfd)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.errors import is_refused
from bgsyncd.files import rootfd

LEVELS = ("a", "a/b", "a/b/c", "a/b/c/root")


@pytest.fixture(params=["openat2", "walk"])
def how(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with openat2 and with the walk from ``/`` (kernels without it)."""
    if request.param == "walk":
        monkeypatch.setattr(rootfd._openat2, "available", False)
    else:
        assert rootfd._openat2.available, "openat2 is expected on this kernel"
    yield str(request.param)


def _tree(base: Path) -> tuple[Path, Path]:
    """``base/a/b/c/root`` and an outside copy of the same shape, each with a file."""
    root = base / "a" / "b" / "c" / "root"
    root.mkdir(parents=True)
    (root / "in.jpg").write_bytes(b"inside")
    outside = base / "outside"
    (outside / "a" / "b" / "c" / "root").mkdir(parents=True)
    (outside / "a" / "b" / "c" / "root" / "in.jpg").write_bytes(b"outside")
    return root, outside


def _swap(base: Path, outside: Path, level: str) -> None:
    """The folder at ``level`` renamed aside, a symlink to its outside twin in its place."""
    real = base / level
    real.rename(real.with_name(real.name + ".aside"))
    real.symlink_to(outside / level, target_is_directory=True)


@pytest.mark.parametrize("level", LEVELS)
def test_a_symlink_at_any_level_is_refused(tmp_path: Path, how: str, level: str) -> None:
    root, outside = _tree(tmp_path)
    fd = rootfd.open_root(root)  # held while it is real
    os.close(fd)
    _swap(tmp_path, outside, level)
    for call in (
        lambda: rootfd.open_path(root),
        lambda: rootfd.open_root(root),
        lambda: rootfd.open_root(root, create=True),
        lambda: rootfd.lookup(root),
    ):
        with pytest.raises(OSError) as caught:
            call()
        assert is_refused(caught.value), caught.value
    # Nothing made outside, below the link either.
    with pytest.raises(OSError) as caught:
        rootfd.make_dirs(root / "new" / "deeper")
    assert is_refused(caught.value)
    assert not (outside / "a" / "b" / "c" / "root" / "new").exists()
    assert sorted(os.listdir(outside / "a" / "b" / "c" / "root")) == ["in.jpg"]


def test_the_refusal_says_what_happened(tmp_path: Path) -> None:
    root, outside = _tree(tmp_path)
    _swap(tmp_path, outside, "a/b")
    with pytest.raises(OSError) as caught:
        rootfd.open_root(root)
    assert "symlink" in str(caught.value) and str(root) in str(caught.value)


def test_a_root_made_when_missing_never_through_a_symlink(tmp_path: Path, how: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(OSError) as caught:
        rootfd.open_root(tmp_path / "link" / "out", create=True)
    assert is_refused(caught.value)
    assert os.listdir(outside) == []
    fd = rootfd.open_root(tmp_path / "real" / "out", create=True)
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "real" / "out").stat().st_ino
    finally:
        os.close(fd)


def test_a_replaced_path_is_told_by_device_and_inode(tmp_path: Path, how: str) -> None:
    root, _outside = _tree(tmp_path)
    first = os.stat(root)
    os.close(rootfd.open_root(root))
    assert rootfd.ROOTS.identity(root) == (first.st_dev, first.st_ino)
    # The same folder: the held one is used, whatever else happened around it.
    os.close(rootfd.open_root(root))
    assert rootfd.ROOTS.identity(root) == (first.st_dev, first.st_ino)
    # A folder above replaced by another real folder: the path names another one now.
    (tmp_path / "a").rename(tmp_path / "a-old")
    (tmp_path / "a" / "b" / "c" / "root").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "root" / "new.jpg").write_bytes(b"new")
    fd = rootfd.open_root(root)
    try:
        assert os.listdir(fd) == ["new.jpg"]
    finally:
        os.close(fd)
    second = os.stat(root)
    assert (
        rootfd.ROOTS.identity(root)
        == (second.st_dev, second.st_ino)
        != (
            first.st_dev,
            first.st_ino,
        )
    )
    rootfd.ROOTS.release(root)
    assert rootfd.ROOTS.identity(root) is None


def test_lookup_gives_the_folder_and_its_parent(tmp_path: Path, how: str) -> None:
    (tmp_path / "d").mkdir()
    st, parent = rootfd.lookup(tmp_path / "d")
    assert (st.st_ino, parent.st_ino) == (os.stat(tmp_path / "d").st_ino, os.stat(tmp_path).st_ino)
    st, parent = rootfd.lookup("/")
    assert st.st_ino == parent.st_ino == os.stat("/").st_ino
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        rootfd.lookup(tmp_path / "f")
    with pytest.raises(FileNotFoundError):
        rootfd.lookup(tmp_path / "nope")


def test_a_mount_point_root_is_not_held_open(tmp_path: Path) -> None:
    """A held descriptor would make ``umount`` of the share fail as busy."""
    assert os.path.ismount("/proc")
    before = len(os.listdir("/proc/self/fd"))
    fd = rootfd.open_root("/proc")
    os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before
    assert rootfd.ROOTS.identity("/proc") is not None  # its identity is, to tell a new one
    # A plain folder is held: one descriptor more until it is released.
    os.close(rootfd.open_root(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before + 1
    rootfd.ROOTS.release(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before
