"""A folder moved into an inbox from outside is watched like one made there.

watchdog 6 (Python 3.10) sets up inotify watches for a folder *made* in a
watched tree, not for one *moved in* from outside it: the files already inside
are reported, but nothing written into it later is, until the periodic rescan.
bgsyncd watches such a folder itself (``bgsyncd.inbox.moved_in``); watchdog 7 does it
on its own. Real watchdog observers and a real filesystem, on both.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.inbox.watcher import FRESH_DIR_SECONDS
from tests.support.helpers import wait_until
from tests.support.watching import OLD, RESCAN, Env, Sink, write

SETTLE = 10.0  # what a file found without its close waits: emitted sooner, it was an event


def _past_fresh() -> None:
    """Let a new folder's first seconds pass: a file made then may race its watch.

    Until its watch is set up, a new folder's files are seen by a walk (no
    close), and wait settle_seconds: the product's rule, not what is tested here.
    """
    time.sleep(FRESH_DIR_SECONDS + 0.5)


class Store(Sink):
    """A sink that, like the store, knows a file it was given unchanged (a scan skips it)."""

    def unchanged(self, folder: str, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        return any(
            (f.size, f.mtime_ns, f.inode) == (size, mtime_ns, inode) for f in self.found(rel)
        )


def _start(env: Env) -> Store:
    store = Store()
    env.start(settle=SETTLE, rescan=RESCAN, sink=store, is_unchanged=store.unchanged)
    return store


@pytest.fixture
def moved(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    for w in e.watchers:
        w.stop()


def _emitted_at_its_close(sink: Sink, path: Path, inbox: Path) -> None:
    """Write ``path`` (under ``inbox``) and see it emitted by its close, not by a scan."""
    rel = path.relative_to(inbox).as_posix()
    start = time.monotonic()
    write(path)
    wait_until(lambda: sink.found(rel), SETTLE, what=f"{rel} emitted")
    # Sooner than settle_seconds: its close was seen, so its folder is watched.
    assert sink.at(rel) - start < SETTLE / 2
    assert len(sink.found(rel)) == 1


def test_files_written_later_into_a_folder_moved_in_are_emitted_at_their_close(
    moved: Env,
) -> None:
    sink = _start(moved)
    shoot = moved.outside / "shoot"
    write(shoot / "a.jpg", mtime=OLD)
    write(shoot / "sub" / "deeper" / "b.jpg", mtime=OLD)
    os.rename(shoot, moved.inbox / "shoot")
    # What was inside is found (old files: at once), so the move has been dealt with
    # (each maybe twice: its walk's event and the scan racing; the store keeps one).
    inside = {"shoot/a.jpg", "shoot/sub/deeper/b.jpg"}
    wait_until(lambda: set(sink.names()) == inside, SETTLE / 2, what=f"{inside}")
    here = moved.inbox / "shoot"
    _emitted_at_its_close(sink, here / "later.jpg", moved.inbox)
    _emitted_at_its_close(sink, here / "sub" / "deeper" / "later.jpg", moved.inbox)
    # A folder made later inside the moved one, and one moved into it from outside.
    (here / "made").mkdir()
    _past_fresh()
    _emitted_at_its_close(sink, here / "made" / "later.jpg", moved.inbox)
    nested = moved.outside / "nested"
    write(nested / "inner" / "c.jpg", mtime=OLD)
    os.rename(nested, here / "nested")
    wait_until(lambda: sink.found("shoot/nested/inner/c.jpg"), SETTLE / 2, what="c.jpg")
    _past_fresh()
    _emitted_at_its_close(sink, here / "nested" / "inner" / "later.jpg", moved.inbox)


def test_a_folder_moved_in_and_renamed_inside_is_watched_under_its_new_name(
    moved: Env,
) -> None:
    sink = _start(moved)
    shoot = moved.outside / "shoot"
    write(shoot / "sub" / "a.jpg", mtime=OLD)
    os.rename(shoot, moved.inbox / "shoot")
    wait_until(lambda: sink.found("shoot/sub/a.jpg"), SETTLE / 2, what="a.jpg")
    os.rename(moved.inbox / "shoot", moved.inbox / "renamed")
    wait_until(lambda: sink.found("renamed/sub/a.jpg"), SETTLE / 2, what="a.jpg renamed")
    _emitted_at_its_close(sink, moved.inbox / "renamed" / "sub" / "later.jpg", moved.inbox)


def _watched_inodes() -> set[int]:
    """The inodes every inotify instance of this process watches (``/proc/self/fdinfo``)."""
    inodes: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                inodes |= {int(i, 16) for i in re.findall(r"\bino:([0-9a-f]+)", info.read())}
        except OSError:
            continue  # closed meanwhile
    return inodes


def test_a_symlink_in_a_folder_moved_in_is_never_followed(moved: Env) -> None:
    sink = _start(moved)
    away = moved.tmp / "away"  # outside every inbox
    away.mkdir()
    shoot = moved.outside / "shoot"
    write(shoot / "a.jpg", mtime=OLD)
    (shoot / "link").symlink_to(away, target_is_directory=True)
    os.rename(shoot, moved.inbox / "shoot")
    wait_until(lambda: sink.found("shoot/a.jpg"), SETTLE / 2, what="a.jpg")
    watched = _watched_inodes()
    assert (moved.inbox / "shoot").stat().st_ino in watched
    assert away.stat().st_ino not in watched
    write(away / "outside.jpg")  # seen through the link, it would be shoot/link/outside.jpg
    _emitted_at_its_close(sink, moved.inbox / "shoot" / "later.jpg", moved.inbox)
    moved.sentinel(sink)
    # a.jpg may come twice (its walk's event and the scan racing): the store keeps one.
    assert set(sink.names()) == {"shoot/a.jpg", "shoot/later.jpg", "zz-sentinel.jpg"}


def test_a_folder_moved_in_where_one_was_moved_out_is_watched(moved: Env) -> None:
    # watchdog 6 keeps its watch of a folder moved out under the folder's old
    # path: the one moved in under that name must be watched all the same.
    sink = _start(moved)
    write(moved.outside / "first" / "sub" / "a.jpg", mtime=OLD)
    os.rename(moved.outside / "first", moved.inbox / "shoot")
    wait_until(lambda: sink.found("shoot/sub/a.jpg"), SETTLE / 2, what="a.jpg")
    os.rename(moved.inbox / "shoot", moved.outside / "first")
    moved.sentinel(sink)  # its move out has been read
    write(moved.outside / "second" / "sub" / "b.jpg", mtime=OLD)
    os.rename(moved.outside / "second", moved.inbox / "shoot")
    wait_until(lambda: sink.found("shoot/sub/b.jpg"), SETTLE / 2, what="b.jpg")
    _emitted_at_its_close(sink, moved.inbox / "shoot" / "sub" / "later.jpg", moved.inbox)
