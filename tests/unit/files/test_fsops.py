"""fsops: directory-descriptor walks that refuse every symlink, on the real filesystem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bgsyncd.errors import is_refused
from bgsyncd.files import fsops
from bgsyncd.files.inputs import read_input, signature_of
from bgsyncd.files.outputs import write_file
from bgsyncd.inbox.scanner import IgnoreRules, walk
from bgsyncd.service.backends import load_settings


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``root/a/b/f.jpg`` and an ``outside`` folder with a file of the same name."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.jpg").write_bytes(b"inside")
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "f.jpg").write_bytes(b"outside")
    return root, outside


def test_a_walk_reaches_files_through_real_folders(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    st = fsops.lstat(root, "a/b/f.jpg")
    assert st.st_ino == (root / "a/b/f.jpg").stat().st_ino
    assert fsops.regular_stat(root, "a/b/f.jpg") is not None
    assert fsops.regular_stat(root, "a/b") is None  # a folder is not a regular file
    assert fsops.regular_stat(root, "a/b/missing.jpg") is None


def test_a_symlinked_folder_anywhere_on_the_way_is_refused(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    os.rename(root / "a", root / "real-a")
    (root / "a").symlink_to(outside.parent / "outside", target_is_directory=True)
    with pytest.raises(OSError) as caught:
        fsops.lstat(root, "a/b/f.jpg")
    # Linux says ENOTDIR for O_DIRECTORY | O_NOFOLLOW on a symlink: both are refusals.
    assert is_refused(caught.value)
    assert fsops.regular_stat(root, "a/b/f.jpg") is None
    with pytest.raises(OSError) as caught:
        fsops.open_dir(root, "a/b", create=True)
    assert is_refused(caught.value)
    assert sorted(os.listdir(outside)) == ["b"]  # nothing was made outside


def test_a_file_in_place_of_a_folder_is_refused_with_enotdir(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(OSError) as caught:
        fsops.open_dir(tmp_path, "a/b", create=True)
    assert caught.value.errno == errno.ENOTDIR and is_refused(caught.value)


def test_a_root_replaced_by_a_symlink_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    os.rename(root, root.with_name("moved"))
    root.symlink_to(outside)
    with pytest.raises(OSError) as caught:
        fsops.open_root(root)
    assert is_refused(caught.value)


def test_open_dir_creates_missing_folders_inside_the_root(tmp_path: Path) -> None:
    fd = fsops.open_dir(tmp_path / "out", "x/y", create=True)
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "out/x/y").stat().st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/."])
def test_a_relpath_that_could_leave_the_folder_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        fsops.split_relpath(bad)


def test_walk_files_never_enters_a_symlinked_folder(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "a" / "file-link").symlink_to(outside / "b" / "f.jpg")
    seen = sorted(name for _fd, name in fsops.walk_files(root))
    # The symlinks themselves are listed (as non-folders), never what they point to.
    assert seen == ["f.jpg", "file-link", "link"]


def test_walk_files_stopped_early_leaks_no_descriptor(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_bytes(b"")
    os.close(fsops.open_root(tmp_path))  # the root's own descriptor is held from now on
    before = len(os.listdir("/proc/self/fd"))
    walk = fsops.walk_files(tmp_path)
    next(walk)
    walk.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_reading_an_input_through_a_swapped_folder_is_a_vanished_input(
    tree: tuple[Path, Path],
) -> None:
    root, outside = tree
    assert read_input(root, "a/b/f.jpg", 100) is not None
    os.rename(root / "a" / "b", root / "a" / "real-b")
    (root / "a" / "b").symlink_to(outside / "b", target_is_directory=True)
    assert read_input(root, "a/b/f.jpg", 100) is None
    assert signature_of(root, "a/b/f.jpg") is None


def test_reading_a_fifo_does_not_block_and_is_not_an_input(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    assert read_input(tmp_path, "pipe.jpg", 100) is None


def test_configured_roots_are_resolved_so_a_symlinked_root_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real-inbox"
    real.mkdir()
    (tmp_path / "inbox").symlink_to(real, target_is_directory=True)
    (real / "p.jpg").write_bytes(b"x")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[queue]\ndatabase = "{tmp_path}/q.sqlite3"\n'
        f'[[folder]]\ninbox = "{tmp_path}/inbox"\noutbox = "{tmp_path}/out"\n'
        f'quarantine = "{tmp_path}/q"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("BGSYNCD_API_KEY", "test-key-0123456789")
    folder = load_settings(config).folders[0]
    assert folder.inbox == real
    assert folder.name == "inbox"  # the default name is still the configured one's
    assert signature_of(folder.inbox, "p.jpg") is not None


def test_a_folder_above_the_root_swapped_for_a_symlink_leads_nowhere(tmp_path: Path) -> None:
    """Issue 15: ``O_NOFOLLOW`` on the root's last component alone let this through."""
    root = tmp_path / "srv" / "team" / "x"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in.jpg").write_bytes(b"inside")
    outside = tmp_path / "outside" / "team"
    (outside / "x" / "sub").mkdir(parents=True)
    (outside / "x" / "sub" / "in.jpg").write_bytes(b"outside")
    os.close(fsops.open_root(root))  # held while real
    (tmp_path / "srv" / "team").rename(tmp_path / "srv" / "team.aside")
    (tmp_path / "srv" / "team").symlink_to(outside, target_is_directory=True)

    for call in (
        lambda: fsops.open_root(root),
        lambda: fsops.open_dir(root, "sub/new", create=True),
        lambda: fsops.lstat(root, "sub/in.jpg"),
        lambda: fsops.unlink(root, "sub/in.jpg"),
    ):
        with pytest.raises(OSError) as caught:
            call()
        assert is_refused(caught.value), caught.value
    assert read_input(root, "sub/in.jpg", 1000) is None  # vanished, never the outside file
    assert signature_of(root, "sub/in.jpg") is None
    assert list(walk(str(root), True, IgnoreRules())) == []
    assert list(fsops.walk_files(root)) == []
    with pytest.raises(OSError) as caught:
        write_file(root, "sub/out.png", b"output")
    assert is_refused(caught.value)
    assert sorted(os.listdir(outside / "x" / "sub")) == ["in.jpg"]
    assert (outside / "x" / "sub" / "in.jpg").read_bytes() == b"outside"
