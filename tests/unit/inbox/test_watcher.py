"""The watcher against the real filesystem and real watchdog observers (inotify, polling)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import watchdog.events
from watchdog.events import FileModifiedEvent, FileSystemEvent

from bgsyncd.config.schema import FolderSettings
from bgsyncd.inbox.openfiles import OpenForWriting
from bgsyncd.inbox.roots import Missing, Root, Verdict, judge, look
from bgsyncd.inbox.scanner import IgnoreRules
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.storage.contract import Found
from tests.support.helpers import exchange, wait_until
from tests.support.watching import LOST_WITHIN, OLD, SENTINEL, Env, Sink, write


class PendingPeak:
    """The most files ``watcher.pending()`` reported while this ran (sampled every 2 ms).

    ``pending()`` counts the files in progress, one more for a scan running or
    owed: a tracker that kept to ``max_in_progress`` never shows above it + 1.
    """

    def __init__(self, watcher: Watcher) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(watcher,), daemon=True)
        self._thread.start()

    def _run(self, watcher: Watcher) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, watcher.pending())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5.0)
        return self.peak


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    for w in e.watchers:
        w.stop()


# -- inotify: closes and renames ------------------------------------------------------


def test_written_and_closed_is_emitted_once_at_close(env: Env) -> None:
    _, sink = env.start(settle=5.0)
    start = time.monotonic()
    write(env.inbox / "a.jpg", b"a" * 1234)
    (found,) = wait_until(lambda: sink.found("a.jpg"), 3.0)
    # Long before settle_seconds: the close said it was complete.
    assert sink.at("a.jpg") - start < 3.0
    assert (found.folder, found.size) == ("products", 1234)
    st = os.lstat(env.inbox / "a.jpg")
    assert (found.mtime_ns, found.inode) == (st.st_mtime_ns, st.st_ino)
    env.sentinel(sink)
    assert len(sink.found("a.jpg")) == 1


def test_writer_pausing_longer_than_settle_is_emitted_only_after_close(env: Env) -> None:
    watcher, sink = env.start(settle=0.3)
    with open(env.inbox / "slow.jpg", "wb", buffering=0) as f:
        f.write(b"1" * 500)
        wait_until(lambda: watcher.pending() == 1)
        time.sleep(1.0)  # the writer's own pause, over three times settle_seconds
        assert sink.found() == []
        f.write(b"2" * 500)
    (found,) = wait_until(lambda: sink.found("slow.jpg"), 3.0)
    assert found.size == 1000
    env.sentinel(sink)
    assert len(sink.found("slow.jpg")) == 1


def test_a_paused_writer_is_waited_for_even_where_proc_cannot_see_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under the hardened unit (ProtectProc=invisible, another user's writer) the
    # /proc check sees no writer: the close event alone must decide. That view
    # of /proc cannot be had here, so it is simulated.
    monkeypatch.setattr(OpenForWriting, "holds", lambda self, dev, ino: False)
    watcher, sink = env.start(settle=0.3)
    with open(env.inbox / "scp.jpg", "wb", buffering=0) as f:
        f.write(b"1" * 500)
        wait_until(lambda: watcher.pending() == 1)
        time.sleep(1.2)  # the writer's own pause, four times settle_seconds
        assert sink.found() == []
        f.write(b"2" * 500)
    (found,) = wait_until(lambda: sink.found("scp.jpg"), 3.0)
    assert found.size == 1000


def test_rsync_temp_renamed_is_emitted_under_final_name_only(env: Env) -> None:
    _, sink = env.start(settle=5.0)
    write(env.inbox / ".photo.jpg.AbC123", b"p" * 700)
    os.rename(env.inbox / ".photo.jpg.AbC123", env.inbox / "photo.jpg")
    (found,) = wait_until(lambda: sink.found("photo.jpg"), 3.0)
    assert found.size == 700
    env.sentinel(sink)
    assert sink.names() == ["photo.jpg", SENTINEL]


def test_browser_download_renamed_is_emitted_under_final_name(env: Env) -> None:
    _, sink = env.start(settle=5.0)
    write(env.inbox / "shoe.png.crdownload")
    os.rename(env.inbox / "shoe.png.crdownload", env.inbox / "shoe.png")
    wait_until(lambda: sink.found("shoe.png"), 3.0)
    env.sentinel(sink)
    assert sink.names() == ["shoe.png", SENTINEL]


def test_mv_from_outside_is_emitted_well_before_settle(env: Env) -> None:
    _, sink = env.start(settle=5.0)
    write(env.outside / "moved.jpg", b"m" * 321)
    start = time.monotonic()
    os.rename(env.outside / "moved.jpg", env.inbox / "moved.jpg")
    (found,) = wait_until(lambda: sink.found("moved.jpg"), 3.0)
    assert sink.at("moved.jpg") - start < 2.0
    assert found.size == 321


def test_reopened_for_append_is_emitted_again(env: Env) -> None:
    _, sink = env.start(settle=5.0)
    write(env.inbox / "grow.jpg", b"a" * 100)
    wait_until(lambda: sink.found("grow.jpg"), 3.0)
    with open(env.inbox / "grow.jpg", "ab") as f:
        f.write(b"b" * 50)
    wait_until(lambda: len(sink.found("grow.jpg")) == 2, 3.0)
    assert [f.size for f in sink.found("grow.jpg")] == [100, 150]


@pytest.mark.parametrize("polling", [False, True])
def test_new_subfolders_written_or_moved_in_are_emitted(env: Env, polling: bool) -> None:
    # Polled, the folder's own event comes after its files' (one snapshot's
    # difference): it must not drop them (no rescan in this test's time).
    _, sink = env.start(settle=0.3, polling=polling)
    write(env.inbox / "new" / "a.jpg")
    write(env.inbox / "new" / "deeper" / "b.jpg")
    tree = env.outside / "batch"
    for rel in ("c.jpg", "d.jpg", "inner/e.jpg"):
        write(tree / rel)
    os.rename(tree, env.inbox / "batch")
    expected = ["batch/c.jpg", "batch/d.jpg", "batch/inner/e.jpg", "new/a.jpg", "new/deeper/b.jpg"]
    wait_until(lambda: sink.names() == expected, 5.0, what=f"{expected}, got {sink.names()}")


def test_file_deleted_before_complete_is_dropped(env: Env) -> None:
    watcher, sink = env.start(settle=0.3)
    with open(env.inbox / "gone.jpg", "wb", buffering=0) as f:
        f.write(b"g" * 100)
        wait_until(lambda: watcher.pending() == 1)
        os.unlink(env.inbox / "gone.jpg")
    env.sentinel(sink)
    wait_until(lambda: watcher.pending() == 0)
    assert sink.names() == [SENTINEL]


# -- scans ----------------------------------------------------------------------------


def test_file_present_before_start_is_found_by_startup_scan(env: Env) -> None:
    write(env.inbox / "early.jpg")
    write(env.inbox / "sub" / "early2.jpg")
    _, sink = env.start(settle=0.3)
    assert env.seen == 2
    wait_until(lambda: sink.names() == ["early.jpg", "sub/early2.jpg"], 3.0)


def test_old_file_is_emitted_by_the_scan_without_waiting_settle(env: Env) -> None:
    write(env.inbox / "old.jpg", mtime=OLD)
    _, sink = env.start(settle=60.0)
    # The start-up scan is blocking and the mtime shows an hour of quiet.
    assert sink.names() == ["old.jpg"]


def test_is_unchanged_suppresses_scan_emissions(env: Env) -> None:
    write(env.inbox / "known.jpg", b"k" * 10, mtime=OLD)
    write(env.inbox / "fresh.jpg", b"f" * 20)
    calls: list[tuple[str, str, int, int, int]] = []

    def unchanged(*args: object) -> bool:
        calls.append(args)  # type: ignore[arg-type]
        return True

    watcher, sink = env.start(settle=0.2, is_unchanged=unchanged)
    assert env.seen == 2
    watcher.rescan()
    wait_until(lambda: watcher.pending() == 0)
    assert sink.found() == []
    st = os.lstat(env.inbox / "known.jpg")
    assert ("products", "known.jpg", 10, st.st_mtime_ns, st.st_ino) in calls


@pytest.mark.parametrize("how", ["periodic", "rescan", "overflow"])
def test_rescan_finds_a_file_whose_emission_was_lost(env: Env, how: str) -> None:
    """A file reported once but never queued (lost) is found again by reconciliation."""
    queued: dict[str, tuple[int, int, int]] = {}
    lost: list[str] = []
    recorder = Sink()

    def sink(found: Found) -> None:
        if found.relpath == "lost.jpg" and not lost:
            lost.append(found.relpath)  # dropped on the way to the queue
            return
        queued[found.relpath] = (found.size, found.mtime_ns, found.inode)
        recorder(found)

    def unchanged(folder: str, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        return queued.get(rel) == (size, mtime_ns, inode)

    watcher, _ = env.start(
        settle=0.2, rescan=0.5 if how == "periodic" else 300.0, sink=sink, is_unchanged=unchanged
    )
    write(env.inbox / "lost.jpg", mtime=OLD)
    wait_until(lambda: lost, 3.0)
    if how == "rescan":
        watcher.rescan()
    elif how == "overflow":
        # What watchdog logs when the kernel reports IN_Q_OVERFLOW.
        import logging

        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
    wait_until(lambda: recorder.found("lost.jpg"), 5.0)
    env.sentinel(recorder)
    assert recorder.names() == ["lost.jpg", SENTINEL]


@pytest.mark.skipif(
    not hasattr(watchdog.events, "EventsLostEvent"),
    reason="watchdog 6 has no EventsLostEvent: only its log warning says events were lost",
)
def test_a_write_seen_just_before_an_overflow_does_not_wait_for_its_lost_close(
    env: Env,
) -> None:
    """watchdog logs an inotify overflow on its reader thread, maybe before it has
    handed on a ``Modified`` read just before the overflow; the ``Closed`` after it
    was lost. The ``EventsLostEvent`` watchdog 7 queues behind those events is the
    moment to stop waiting for closes: the file settles in ``settle_seconds``,
    not in the five minutes a writer who never closes gets (every rescan skips a
    file the tracker still follows)."""
    watcher, sink = env.start(settle=0.2)
    path = write(env.inbox / "late.jpg")
    wait_until(lambda: sink.found("late.jpg") and watcher.pending() == 0, 5.0)
    inbox = watcher._inboxes[0]
    # The Modified the tracker saw after the overflow warning had been handled.
    watcher.on_event(inbox, FileModifiedEvent(str(path)), polled=False)
    time.sleep(1.0)  # five settle times: a settling file would have been looked at
    assert watcher.pending() == 1  # waiting for a close that will never come
    lost: Callable[[str], FileSystemEvent] = vars(watchdog.events)["EventsLostEvent"]
    watcher.on_event(inbox, lost(str(env.inbox)), polled=False)
    wait_until(lambda: watcher.pending() == 0, 5.0, what="the file settled")


@pytest.mark.parametrize("polling", [False, True])
def test_file_held_open_for_writing_is_not_emitted_until_closed(env: Env, polling: bool) -> None:
    path = write(env.inbox / "held.jpg", b"h" * 100, mtime=OLD)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); "
            "sys.stdin.readline(); f.close()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        watcher, sink = env.start(settle=0.2, polling=polling)
        assert env.seen == 1
        time.sleep(1.0)  # the other process keeps writing (five settle periods)
        assert sink.found() == []
        assert watcher.pending() == 1
    finally:
        holder.communicate("\n", timeout=10)
    wait_until(lambda: sink.found("held.jpg"), 3.0)
    env.sentinel(sink)
    (found,) = sink.found("held.jpg")
    assert found.size == 100


# -- what is never emitted ------------------------------------------------------------


IGNORED = [
    ".hidden.jpg",
    "a.jpg.part",
    "b.jpg.tmp",
    "c.jpg~",
    ".c.jpg.swp",
    "d.SWP",
    "e.raw",
    "raws/f.raw",
    ".cache/g.jpg",
    "scratch/h.jpg",
]


def test_ignored_names_are_never_emitted(env: Env) -> None:
    for rel in IGNORED:
        write(env.inbox / "before" / rel, mtime=OLD)
    _, sink = env.start(settle=0.2, ignore=("*.raw", "scratch"))
    for rel in IGNORED:
        write(env.inbox / rel)
    env.sentinel(sink)
    assert sink.names() == [SENTINEL]


def test_links_fifos_sockets_and_folders_are_never_emitted(env: Env) -> None:
    secret = write(env.outside / "secret.jpg", mtime=OLD)
    (env.outside / "dir").mkdir()
    write(env.outside / "dir" / "inside.jpg", mtime=OLD)

    def specials(where: Path) -> None:
        where.mkdir(exist_ok=True)
        (where / "link.jpg").symlink_to(secret)
        (where / "linkdir").symlink_to(env.outside / "dir")
        os.mkfifo(where / "fifo.jpg")
        (where / "x.jpg").mkdir()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(where / "s.jpg"))
        sock.close()

    specials(env.inbox / "b")
    watcher, sink = env.start(settle=0.2)
    assert env.seen == 0
    specials(env.inbox / "a")
    write(env.outside / "dir" / "later.jpg")
    env.sentinel(sink)
    watcher.rescan()
    wait_until(lambda: watcher.pending() == 0)
    assert sink.names() == [SENTINEL]
    assert watcher.alive()


def test_non_recursive_folder_ignores_subfolders(env: Env) -> None:
    write(env.inbox / "sub" / "before.jpg", mtime=OLD)
    _, sink = env.start(settle=0.2, recursive=False)
    assert env.seen == 0
    write(env.inbox / "sub" / "after.jpg")
    env.sentinel(sink)
    assert sink.names() == [SENTINEL]


def test_names_with_spaces_and_non_ascii_are_emitted(env: Env) -> None:
    write(env.inbox / "früh ling" / "早い.jpg", mtime=OLD)
    _, sink = env.start(settle=5.0)
    write(env.inbox / "my photo ü.jpg")
    wait_until(lambda: sink.names() == ["früh ling/早い.jpg", "my photo ü.jpg"], 3.0)


# -- polling ----------------------------------------------------------------------------


def test_polling_folder_emits_after_settle(env: Env) -> None:
    _, sink = env.start(settle=0.3, polling=True)
    written = time.monotonic()
    write(env.inbox / "nfs.jpg", b"n" * 400)
    (found,) = wait_until(lambda: sink.found("nfs.jpg"), 5.0)
    assert found.size == 400
    assert sink.at("nfs.jpg") - written >= 0.3


# -- running ----------------------------------------------------------------------------


def test_missing_inbox_fails_start_and_leaves_nothing_running(tmp_path: Path) -> None:
    folder = FolderSettings(
        inbox=tmp_path / "nope", outbox=tmp_path / "o", quarantine=tmp_path / "q"
    )
    before = threading.active_count()
    watcher = Watcher([folder], Sink(), lambda *_: False, 1.0, 300.0)
    with pytest.raises(OSError, match="nope"):
        watcher.start()
    assert not watcher.alive()
    wait_until(lambda: threading.active_count() == before)


def test_alive_until_stopped(env: Env) -> None:
    watcher, _ = env.start()
    assert watcher.alive()
    watcher.stop()
    assert not watcher.alive()


# How fast the start-up scan is and what an idle watcher costs are measured by
# `python -m bench.watcher` (timings do not belong in a suite on a shared machine).


def test_startup_scan_emits_every_file_of_a_large_tree(env: Env) -> None:
    count = 0
    for d in range(50):
        folder = env.inbox / f"d{d:02}"
        folder.mkdir()
        for i in range(200):
            write(folder / f"{i}.jpg", b"x", mtime=OLD)
            count += 1
    watcher, sink = env.start(settle=2.0)
    assert env.seen == count
    assert len(sink.found()) == count
    assert len(set(sink.names())) == count
    assert watcher.pending() == 0


# -- bounded memory: the cap on files in progress ---------------------------------------


def test_burst_beyond_the_cap_is_found_by_rescan_and_never_overfills(env: Env) -> None:
    gate = threading.Event()
    stuck = threading.Event()
    recorder = Sink()
    queued: set[tuple[str, int, int, int]] = set()
    lock = threading.Lock()

    def slow_sink(found: Found) -> None:
        stuck.set()
        gate.wait(10)  # the tracker cannot drain: the burst has to overfill it
        with lock:
            queued.add((found.relpath, found.size, found.mtime_ns, found.inode))
        recorder(found)

    def unchanged(folder: str, rel: str, size: int, mtime_ns: int, inode: int) -> bool:
        with lock:
            return (rel, size, mtime_ns, inode) in queued

    watcher = Watcher(
        [env.folder()], slow_sink, unchanged, 0.2, 300.0, poll_interval=0.1, max_in_progress=5
    )
    env.watchers.append(watcher)
    watcher.start()
    sampled = PendingPeak(watcher)
    names = [f"burst{i:02}.jpg" for i in range(50)]
    # The first file takes the tracker's thread into the gated sink; the burst
    # comes after, so it can only fill the tracker, never drain it.
    write(env.inbox / names[0])
    assert stuck.wait(5.0)
    for name in names[1:]:
        write(env.inbox / name)
    # Five followed, the rest dropped (the +1: a rescan is owed).
    wait_until(lambda: watcher.pending() == 6, 5.0, what="a full tracker with drops")
    gate.set()
    wait_until(lambda: recorder.names() == names, 10.0, what=f"all 50, got {recorder.names()}")
    wait_until(lambda: watcher.pending() == 0, 5.0)
    # Five followed, never more; +1 the rescan owed, +1 that rescan running.
    assert 6 <= sampled.stop() <= 7


def test_startup_scan_waits_for_room_in_a_full_tracker(env: Env) -> None:
    names = [f"recent{i:02}.jpg" for i in range(30)]
    for name in names:
        write(env.inbox / name)  # recent: each must settle in the tracker
    recorder = Sink()
    watcher = Watcher([env.folder()], recorder, lambda *_: False, 0.5, 300.0, max_in_progress=5)
    env.watchers.append(watcher)
    sampled = PendingPeak(watcher)
    assert watcher.start() == 30
    wait_until(lambda: recorder.names() == names, 10.0, what=f"all 30, got {recorder.names()}")
    assert 5 <= sampled.stop() <= 6  # five followed at most (+1: the scan still running)
    assert len(recorder.found()) == 30


# -- one observer for all inboxes --------------------------------------------------------


def _folders(tmp_path: Path, n: int, polled: int = 0) -> list[FolderSettings]:
    folders = []
    for i in range(n):
        inbox = tmp_path / f"in{i}"
        inbox.mkdir(exist_ok=True)
        folders.append(
            FolderSettings(
                name=f"f{i}",
                inbox=inbox,
                outbox=tmp_path / f"out{i}",
                quarantine=tmp_path / f"q{i}",
                polling=i >= n - polled,
            )
        )
    return folders


def test_many_inboxes_share_one_observer_and_restart_in_process(tmp_path: Path) -> None:
    folders = _folders(tmp_path, 6, polled=1)
    before = threading.active_count()
    first, first_sink = Sink(), Sink()
    old = Watcher(folders, first_sink, lambda *_: False, 0.3, 300.0, poll_interval=0.1)
    old.start()
    try:
        # Tracker, scanner, root guard, one inotify observer and its reader, one
        # emitter per inotify inbox (with its own buffer thread on some Python
        # versions), one polling observer and its emitter. An observer per inbox
        # would need three threads per inbox and more: 3 + 3 * 6 = 21.
        grown = threading.active_count() - before
        assert 3 + 2 + 5 + 2 <= grown <= 3 + 2 + 2 * 5 + 2
        for i in range(6):
            write(tmp_path / f"in{i}" / f"a{i}.jpg")
        wait_until(lambda: len(first_sink.found()) == 6, 5.0)
        assert {f.folder for f in first_sink.found()} == {f"f{i}" for i in range(6)}
        # A reload: the new watcher starts beside the old one, then the old one stops.
        new = Watcher(folders[:4], first, lambda *_: False, 0.3, 300.0, poll_interval=0.1)
        new.start()
        old.stop()
        assert not old.alive()
        try:
            assert new.alive()
            write(tmp_path / "in3" / "b.jpg")
            wait_until(lambda: first.found("b.jpg"), 3.0)
            assert first_sink.found("b.jpg") == []
        finally:
            new.stop()
    finally:
        old.stop()
    wait_until(lambda: threading.active_count() == before, 5.0, what="every thread gone")


def test_an_inbox_that_cannot_be_watched_names_itself_and_stops_the_rest(
    tmp_path: Path,
) -> None:
    folders = _folders(tmp_path, 3)
    missing = tmp_path / "in1"
    missing.rmdir()
    before = threading.active_count()
    watcher = Watcher(folders, Sink(), lambda *_: False, 1.0, 300.0)
    with pytest.raises(OSError, match=re.escape(f"cannot watch {missing}")):
        watcher.start()
    assert not watcher.alive()
    wait_until(lambda: threading.active_count() == before, 5.0, what="every thread gone")


def test_open_for_writing_sees_writers_not_readers(tmp_path: Path) -> None:
    path = write(tmp_path / "f.jpg")
    st = os.lstat(path)
    open_files = OpenForWriting([str(tmp_path)], max_age=0.0)
    assert not open_files.holds(st.st_dev, st.st_ino)
    with open(path, "rb"):
        assert not open_files.holds(st.st_dev, st.st_ino)
    with open(path, "r+b"):
        assert open_files.holds(st.st_dev, st.st_ino)
    with open(path, "ab"):
        assert open_files.holds(st.st_dev, st.st_ino)
        assert not OpenForWriting([str(tmp_path / "elsewhere")], max_age=0.0).holds(
            st.st_dev, st.st_ino
        )
    assert not open_files.holds(st.st_dev, st.st_ino)


# -- the rules for names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "ignored"),
    [
        ("a.jpg", False),
        ("sub/a.jpg", False),
        (".a.jpg", True),
        ("sub/.a.jpg.Xy12Ab", True),
        (".git/a.jpg", True),
        ("a.PART", True),
        ("a.crdownload", True),
        ("a.tmp", True),
        ("a.jpg~", True),
        ("a.swp", True),
        ("x.raw", True),
        ("deep/x.raw", True),
        ("scratch/a.jpg", True),
        ("a/scratch/b.jpg", True),
        ("scratchpad/a.jpg", False),
        ("tmp.jpg", False),
    ],
)
def test_ignore_rules(rel: str, ignored: bool) -> None:
    assert IgnoreRules(["*.raw", "scratch"]).ignored(rel) is ignored


# -- inboxes that disappear or are replaced (SPEC section 4) ------------------------------


class Folders:
    """What the watcher reported through ``on_folder``: (name, up) in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[tuple[str, float]] = []

    def __call__(self, name: str, up: float) -> None:
        with self.lock:
            self.changes.append((name, up))

    def up(self) -> float | None:
        with self.lock:
            return self.changes[-1][1] if self.changes else None

    def count(self, up: bool) -> int:
        with self.lock:
            return sum(1 for _, u in self.changes if u is up)


def start_reporting(
    env: Env, folders: Folders, settle: float = 5.0, **folder: object
) -> tuple[Watcher, Sink]:
    """Start a watcher with the product's check interval that reports folders to ``folders``."""
    sink = Sink()
    watcher = Watcher(
        [env.folder(**folder)],
        sink,
        lambda *_: False,
        settle,
        300.0,  # the default rescan: anything found sooner was found by the lost-folder cure
        poll_interval=0.1,
        on_folder=folders,
    )
    env.watchers.append(watcher)
    watcher.start()
    assert folders.changes == [("products", True)]
    return watcher, sink


def wait_down(folders: Folders, times: int = 1) -> None:
    wait_until(lambda: folders.count(False) == times and folders.up() is False, LOST_WITHIN)


def wait_up(folders: Folders, times: int = 2) -> None:
    wait_until(lambda: folders.count(True) == times and folders.up() is True, LOST_WITHIN)


@pytest.mark.parametrize("polling", [False, True])
def test_an_inbox_deleted_and_made_again_is_watched_again_and_scanned(
    env: Env, polling: bool
) -> None:
    folders = Folders()
    watcher, sink = start_reporting(env, folders, polling=polling)
    write(env.inbox / "first.jpg", mtime=OLD)
    wait_until(lambda: sink.found("first.jpg"), 5.0)
    shutil.rmtree(env.inbox)
    wait_down(folders)
    assert watcher.alive()  # a lost folder is not a dead daemon
    env.inbox.mkdir()
    # Dropped before the new watch is set up: only the scan on its return finds it.
    write(env.inbox / "early.jpg", mtime=OLD)
    wait_up(folders)
    wait_until(lambda: sink.found("early.jpg"), 5.0, what="early.jpg found by the restore scan")
    write(env.inbox / "later.jpg")
    wait_until(lambda: sink.found("later.jpg"), 7.0, what="later.jpg seen by the new watch")
    # And again: a second loss is noticed the same way.
    shutil.rmtree(env.inbox)
    wait_down(folders, times=2)
    env.inbox.mkdir()
    wait_up(folders, times=3)
    write(env.inbox / "third.jpg")
    wait_until(lambda: sink.found("third.jpg"), 7.0)
    assert watcher.alive()


def test_an_inbox_renamed_away_and_replaced_follows_the_new_folder(env: Env) -> None:
    folders = Folders()
    _, sink = start_reporting(env, folders)
    # No deletion: the old watch lives on, on the folder now called inbox.old.
    os.rename(env.inbox, env.tmp / "inbox.old")
    env.inbox.mkdir()
    # Lost and restored in one look: the root names another folder.
    expected = [("products", True), ("products", False), ("products", True)]
    wait_until(lambda: folders.changes == expected, LOST_WITHIN, what=str(expected))
    write(env.tmp / "inbox.old" / "stale.jpg")
    write(env.inbox / "new.jpg")
    wait_until(lambda: sink.found("new.jpg"), 5.0)
    env.sentinel(sink)
    assert sink.names() == ["new.jpg", SENTINEL]


@pytest.mark.parametrize("polling", [False, True])
def test_an_inbox_replaced_by_a_symlink_is_lost_and_never_followed(env: Env, polling: bool) -> None:
    write(env.outside / "secret.jpg", mtime=OLD)
    folders = Folders()
    watcher, sink = start_reporting(env, folders, settle=0.2, polling=polling)
    os.rename(env.inbox, env.tmp / "inbox.old")
    env.inbox.symlink_to(env.outside)
    wait_down(folders)
    write(env.outside / "dropped.jpg")
    watcher.rescan()
    time.sleep(1.5)  # what a follower of the link would need to emit (settle 0.2, poll 0.1)
    wait_until(lambda: watcher.pending() == 0)
    assert sink.found() == []
    assert folders.up() is False  # still down: a symlink is never a restored inbox
    env.inbox.unlink()
    env.inbox.mkdir()
    wait_up(folders)
    env.sentinel(sink, timeout=5.0)
    assert sink.names() == [SENTINEL]


def _mount_tmpfs(path: Path) -> None:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "bgsyncd-test", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
@pytest.mark.parametrize("polling", [False, True])
def test_an_inbox_unmounted_and_mounted_again_is_lost_and_restored(env: Env, polling: bool) -> None:
    _mount_tmpfs(env.inbox)
    try:
        folders = Folders()
        watcher, sink = start_reporting(env, folders, settle=0.2, polling=polling)
        _umount(env.inbox)
        wait_down(folders)
        # The bare mount point is not the share: nothing dropped there is taken.
        write(env.inbox / "bare.jpg", mtime=OLD)
        watcher.rescan()
        time.sleep(1.0)  # what a scan of the bare folder would need to emit it
        assert sink.found() == []
        _mount_tmpfs(env.inbox)
        wait_up(folders)
        write(env.inbox / "mounted.jpg")
        wait_until(lambda: sink.found("mounted.jpg"), 5.0)
        assert "bare.jpg" not in sink.names()
    finally:
        while os.path.ismount(env.inbox):
            _umount(env.inbox)


# -- the decision, alone ------------------------------------------------------------------

A = Root(dev=1, ino=10, mount_point=False)


@pytest.mark.parametrize(
    ("watched", "seen", "alive", "verdict"),
    [
        (A, A, True, Verdict.KEEP),  # there and watched
        (A, Missing("missing"), True, Verdict.LOST),  # deleted, unmounted, a symlink
        (None, Missing("missing"), False, Verdict.KEEP),  # still gone
        (None, A, False, Verdict.WATCH),  # back
        (A, Root(dev=1, ino=11, mount_point=False), True, Verdict.WATCH),  # replaced
        (A, Root(dev=2, ino=10, mount_point=True), True, Verdict.WATCH),  # mounted over
        (A, A, False, Verdict.WATCH),  # same folder, but its watch ended
    ],
)
def test_judge(watched: Root | None, seen: Root | Missing, alive: bool, verdict: Verdict) -> None:
    assert judge(watched, seen, alive) is verdict


def test_look_refuses_what_is_not_a_real_folder(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    st = os.lstat(tmp_path / "dir")
    assert look(str(tmp_path / "dir")) == Root(st.st_dev, st.st_ino, mount_point=False)
    assert look(str(tmp_path / "nope")) == Missing("missing")
    assert look(str(tmp_path / "file")) == Missing("not a folder")
    assert look(str(tmp_path / "link")) == Missing("replaced by a symlink")
    # A folder that was a mount point and is one no longer: the share is unmounted.
    assert look(str(tmp_path / "dir"), was_mount_point=True) == Missing("unmounted")
    assert isinstance(look("/proc", was_mount_point=True), Root)


def test_a_folder_swapped_out_and_back_has_its_files_found_again(env: Env) -> None:
    """An attacker's ``renameat2(RENAME_EXCHANGE)`` moves a folder out and back in.

    A file found just before (its job then forgotten as vanished while the folder
    was away) and a file put in while it was away are both found at once when it
    is back, not at the next rescan.
    """
    sub = env.inbox / "sub"
    sub.mkdir()
    _, sink = env.start(settle=0.3)
    write(sub / "early.jpg")
    wait_until(lambda: sink.found("sub/early.jpg"), 5.0, what="the first emission")
    aside = env.tmp / "aside"
    aside.symlink_to(env.outside, target_is_directory=True)
    exchange(sub, aside)  # the inbox now holds a link; the real folder is outside
    write(aside / "inside.jpg", mtime=time.time() - 60)
    exchange(sub, aside)  # and back: a folder moved in whole
    wait_until(lambda: sink.found("sub/inside.jpg"), 5.0, what="the file put in while away")
    wait_until(lambda: len(sink.found("sub/early.jpg")) == 2, 5.0, what="the early file again")
    assert not list(env.outside.iterdir())
