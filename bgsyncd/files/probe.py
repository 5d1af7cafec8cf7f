"""The ``output_unwritable`` probe: does a folder take a write again?

When writing an output, a sidecar, a quarantined or a done file fails because
of the disk (full, read-only, no permission, I/O error: ``errors.is_local_fault``),
dispatch pauses with reason ``output_unwritable`` and the place where the write
failed is handed to :class:`OutputProbe`. Every ``PROBE_INTERVAL_SECONDS`` (and
at SIGHUP) the daemon runs the probe: a temp file is created in each failing
place, written, fsynced and removed. When every place takes that write again,
the probe says so and the pause is lifted; nothing else lifts it.

The probe deciding (``due``, which places, the verdict) is separate from the
one function that touches the disk (:func:`probe_write`), which tests replace.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bgsyncd.errors import describe_os_error
from bgsyncd.files import rootfd

PROBE_INTERVAL_SECONDS = 30.0
# One page: a probe of a single byte can pass on a disk that has no room for a block.
PROBE_BYTES = 4096
# Named like outputs.write_atomic's temp files, so a probe file left by a crash is
# hidden from the watchers and removed by outputs.cleanup_temp_files at start.
_PROBE_PREFIX = ".probe.bgsyncd-"


def probe_write(folder: Path, root: Path | None = None) -> None:
    """Create a temp file in ``folder``, write a page, fsync it, remove it; raise OSError.

    With ``root`` (a configured outbox, quarantine or done folder that holds
    ``folder``), the way down from ``root`` is walked one folder at a time,
    refusing a symlink at every step (``ENOTDIR`` or ``ELOOP``), and a part of the way that
    does not exist yet (its ``mkdir`` is what failed) is probed at the deepest
    folder that does. ``root`` is opened from its held descriptor (a root, or
    a folder above it, swapped for a symlink is refused, :mod:`bgsyncd.files.rootfd`).
    Without ``root``, ``folder`` itself must exist, reached without following
    a symlink at any level.
    """
    if root is None:
        dir_fd = rootfd.open_path(folder)
    else:
        try:
            parts = folder.relative_to(root).parts
        except ValueError:
            parts = ()  # not under root: never probe outside it
        dir_fd = _walk_down(root, parts)
    try:
        _write_temp(dir_fd)
    finally:
        os.close(dir_fd)


def _open_dir(name: str, parent_fd: int) -> int:
    return os.open(name, rootfd.DIR_FLAGS, dir_fd=parent_fd)


def _walk_down(root: Path, parts: tuple[str, ...]) -> int:
    """An open descriptor of the deepest existing folder on the way from ``root``."""
    fd = rootfd.open_root(root)
    for part in parts:
        try:
            child = _open_dir(part, fd)
        except FileNotFoundError:
            break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd = child
    return fd


def _write_temp(dir_fd: int) -> None:
    name = f"{_PROBE_PREFIX}{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.unlink(name, dir_fd=dir_fd)
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        # Some filesystems (certain FUSE and network mounts) cannot fsync a folder.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


@dataclass(frozen=True)
class ProbeResult:
    """One probe round: ``failing`` maps each place still refusing to its errno text."""

    ran: bool
    failing: dict[Path, str]

    @property
    def recovered(self) -> bool:
        """The round ran and every place took its write."""
        return self.ran and not self.failing


class OutputProbe:
    """Remembers where writes failed and probes those places until they work again.

    Thread-safe: workers call :meth:`note` while the main loop calls :meth:`run`.
    """

    def __init__(
        self,
        interval: float = PROBE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[Path, Path | None], None] = probe_write,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._probe = probe
        self._lock = threading.Lock()
        # place -> (errno text, note number, root): a place noted again while a
        # round runs is not forgotten by that round's success.
        self._places: dict[Path, tuple[str, int, Path | None]] = {}
        self._notes = 0
        self._next_at: float | None = None

    def note(self, place: Path, error: OSError | str, root: Path | None = None) -> str:
        """A write in ``place`` (under the configured folder ``root``) failed; return its text.

        ``error`` is the exception, or its errno text already made. The first
        probe of a new failure waits a whole interval: the disk that just
        refused a write is not asked again at once.
        """
        text = error if isinstance(error, str) else describe_os_error(error)
        with self._lock:
            if not self._places:
                self._next_at = self._clock() + self.interval
            self._notes += 1
            self._places[place] = (text, self._notes, root)
        return text

    @property
    def failing(self) -> dict[Path, str]:
        """Each place that refused its last write (or probe), with the errno text."""
        with self._lock:
            return self._failing_locked()

    def due(self) -> bool:
        """A probe round is due: something failed, and the interval has passed."""
        with self._lock:
            return self._due_locked()

    def run(self, *, force: bool = False) -> ProbeResult:
        """Probe every failing place when due (or at once with ``force``, for SIGHUP).

        A place that takes its write is forgotten; the others keep their newest
        errno text and are probed again after another interval.
        """
        with self._lock:
            if not self._places or (not force and not self._due_locked()):
                return ProbeResult(ran=False, failing=self._failing_locked())
            places = dict(self._places)
            self._next_at = self._clock() + self.interval
        failing: dict[Path, str] = {}
        for place, (_text, _number, root) in places.items():
            try:  # outside the lock: a write to a sick disk may be slow
                self._probe(place, root)
            except OSError as exc:
                failing[place] = describe_os_error(exc)
        with self._lock:
            for place, (_text, number, root) in places.items():
                current = self._places.get(place)
                if current is None or current[1] != number:
                    continue  # noted again meanwhile: that newer failure stands
                if place in failing:
                    self._places[place] = (failing[place], number, root)
                else:
                    del self._places[place]
            if not self._places:
                self._next_at = None
            return ProbeResult(ran=True, failing=self._failing_locked())

    def _due_locked(self) -> bool:
        return self._next_at is not None and self._clock() >= self._next_at

    def _failing_locked(self) -> dict[Path, str]:
        return {place: text for place, (text, _number, _root) in self._places.items()}
