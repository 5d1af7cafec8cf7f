"""A daemon short of descriptors (SPEC §6): EMFILE is the daemon's local fault, a pause,
never a file's failure; and a failing ``stat`` is not taken for a file that is gone.

The shortage is real: the soft ``RLIMIT_NOFILE`` of this process is lowered and
every descriptor under it taken (``/dev/null``), for as short a time as the
test needs, then everything is given back.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from bgsyncd.api.client import Client
from bgsyncd.config.schema import FolderSettings
from bgsyncd.emulator import Emulator
from bgsyncd.files import fsops
from bgsyncd.inbox.watcher import Watcher
from bgsyncd.jobs.outcomes import Transition
from bgsyncd.service.local_faults import LocalFaults
from bgsyncd.storage.contract import Found
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until
from tests.support.jobs import get_job
from tests.support.workers import make_worker


class Shortage:
    """Every descriptor of this process taken, until :meth:`end` (idempotent)."""

    def __init__(self, above: Collection[int] = ()) -> None:
        """``above``: descriptors left above the limit (closing one frees nothing usable)."""
        self._limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._taken: list[int] = []
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) not in above)
        assert all(fd >= highest + 16 for fd in above)
        # A little room above the highest open descriptor, all of it then taken.
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, self._limits[1]))
        try:
            while len(self._taken) < 100_000:
                self._taken.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                self.end()
                raise
        else:  # pragma: no cover - the limit above is always reached
            self.end()
            raise AssertionError("never ran out of descriptors")

    def refill(self) -> None:
        """Take again whatever descriptor was freed meanwhile."""
        with suppress(OSError):
            while True:
                self._taken.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))

    def end(self) -> None:
        while self._taken:
            os.close(self._taken.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, self._limits)


@contextmanager
def no_descriptor_left(above: Collection[int] = ()) -> Iterator[Shortage]:
    shortage = Shortage(above)
    try:
        yield shortage
    finally:
        shortage.end()


def test_the_shortage_is_real() -> None:
    with no_descriptor_left(), pytest.raises(OSError) as caught:
        os.open(os.devnull, os.O_RDONLY)
    assert caught.value.errno == errno.EMFILE
    os.close(os.open(os.devnull, os.O_RDONLY))  # and it ends


# -- fsops.regular_stat: gone means gone, nothing else -------------------------------------


def test_regular_stat_reports_emfile_instead_of_a_file_gone(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    assert fsops.regular_stat(tmp_path, "sub/a.jpg") is not None
    with no_descriptor_left(), pytest.raises(OSError) as caught:
        fsops.regular_stat(tmp_path, "sub/a.jpg")
    assert caught.value.errno == errno.EMFILE


def test_regular_stat_still_says_none_for_gone_swapped_or_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")  # a folder swapped for a symlink
    (tmp_path / "file").write_bytes(b"x")  # a file where a folder should be
    (tmp_path / "dir.jpg").mkdir()
    assert fsops.regular_stat(tmp_path, "real/missing.jpg") is None  # ENOENT
    assert fsops.regular_stat(tmp_path, "gone/a.jpg") is None  # ENOENT on the way
    assert fsops.regular_stat(tmp_path, "link/a.jpg") is None  # ELOOP
    assert fsops.regular_stat(tmp_path, "file/a.jpg") is None  # ENOTDIR
    assert fsops.regular_stat(tmp_path, "dir.jpg") is None  # not a regular file
    assert fsops.regular_stat(tmp_path, "../a.jpg") is None  # not inside the folder
    assert fsops.regular_stat(tmp_path / "nowhere", "a.jpg") is None  # the root is gone


# -- the watcher: a file it could not look at is looked at again -----------------------------


def test_a_file_closed_while_the_watcher_is_short_of_descriptors_is_queued_once_they_return(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    folder = FolderSettings(
        name="f", inbox=inbox, outbox=tmp_path / "outbox", quarantine=tmp_path / "q"
    )
    found: list[Found] = []
    watcher = Watcher([folder], found.append, lambda *_: False, 0.3, 300.0)
    watcher.start()
    try:
        fd = os.open(inbox / "a.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, product_image(40, 30))
        # Moved high: its close must not free a descriptor the watcher could take.
        high = os.dup2(fd, max(int(n) for n in os.listdir("/proc/self/fd")) + 100)
        os.close(fd)
        with no_descriptor_left(above={high}) as shortage:
            os.close(high)  # the close the watcher acts on, with no descriptor for it
            until = time.monotonic() + 1.0  # a shortage that outlasts a look or two
            while time.monotonic() < until:
                shortage.refill()  # what other threads close is taken again at once
                time.sleep(0.002)
            assert found == []
        wait_until(lambda: found, 10, what="a.jpg queued once descriptors are back")
        assert [f.relpath for f in found] == ["a.jpg"]
        wait_until(lambda: watcher.pending() == 0, 10, what="nothing left in progress")
    finally:
        watcher.stop()


# -- the worker: EMFILE pauses, counts no attempt, and costs no second credit --------------


@pytest.mark.parametrize("when", ["reading the input", "writing the outputs"])
def test_a_job_short_of_descriptors_is_a_local_fault_pause_not_an_attempt(
    tmp_path: Path, emulator: Emulator, when: str
) -> None:
    shortage: list[Shortage] = []

    def after_request(endpoint: str, code: str, seconds: float) -> None:
        # The API has answered (a credit is spent); the outputs are still to be written.
        if when == "writing the outputs" and not shortage and code == "200":
            shortage.append(Shortage())

    (tmp_path / "inbox").mkdir()
    src = tmp_path / "inbox" / "p.jpg"
    src.write_bytes(product_image(60, 40))
    st = src.stat()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    client = Client(emulator.url, TEST_KEY, 10, observe=after_request)
    worker = make_worker(tmp_path, client, queue)
    pauses: list[tuple[str, dict[str, object]]] = []
    try:
        queue.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
        # More rounds than max_attempts: none may be counted. Writing, once: the
        # answer is then kept, and the next round makes no request to hook.
        for _round in range(6 if when == "reading the input" else 1):
            job = queue.claim(60)
            assert job is not None
            pauses.clear()
            if when == "reading the input":
                shortage.append(Shortage())
            try:
                result = worker.process(job, lambda r, **c: pauses.append((r, c)))
            finally:
                while shortage:
                    shortage.pop().end()
            assert result.transition is Transition.RELEASE and result.pause is not None, result
            assert [r for r, _ in pauses] == ["output_unwritable"]
            assert "[Errno 24]" in str(pauses[0][1]["error"])
            again = get_job(queue, job.id)
            assert again is not None
            assert (again.state, again.attempts) == ("pending", 0)
        assert not (tmp_path / "quarantine").exists()
        # Descriptors back: done, and a charged answer was kept, so paid for once only.
        job = queue.claim(60)
        assert job is not None
        assert worker.process(job).transition is Transition.DONE
        assert (tmp_path / "outbox" / "p.png").exists()
        assert len([r for r in emulator.requests() if r.path in IMAGE_PATHS]) == 1
    finally:
        client.close()
        queue.close()


def test_a_pause_for_descriptors_is_probed_in_every_output_folder_and_lifts_once_they_return(
    tmp_path: Path,
) -> None:
    settings = FolderSettings(
        name="f", inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", quarantine=tmp_path / "q"
    )
    (tmp_path / "outbox").mkdir()
    (tmp_path / "q").mkdir()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    try:
        faults = LocalFaults(queue, lambda: [settings], lambda: None)
        # What the worker's pause says when the shortage hit no particular folder.
        faults.on_pause("output_unwritable", {"error": "[Errno 24] Too many open files"})
        with no_descriptor_left():
            round_ = faults.probe.run(force=True)
        assert round_.ran and not round_.recovered
        assert set(round_.failing) == {tmp_path / "outbox", tmp_path / "q"}
        assert all("[Errno 24]" in text for text in round_.failing.values())
        round_ = faults.probe.run(force=True)
        assert round_.recovered
    finally:
        queue.close()
