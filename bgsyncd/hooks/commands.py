"""Running a hook command: an argv, no shell, the event on stdin, a deadline (SPEC §10).

The command starts in a session (and process group) of its own, with the
working directory given as a descriptor of a configured folder opened without
following any symlink (``files.rootfd``), a small environment (the
``BGSYNCD_*`` variables and a few of the daemon's own: never its API key or
credentials), and the event as one JSON object on stdin. Its standard output
and error, together, are kept up to :data:`OUTPUT_LIMIT` bytes for the log and
the rest read and dropped, so a chatty command never blocks. Past the deadline
the whole process group is killed (``SIGKILL``), grandchildren included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

OUTPUT_LIMIT = 4096
# The daemon's variables a command inherits: enough to find programs and speak
# the locale; nothing that could carry a secret (BGSYNCD_API_KEY, PGPASSWORD,
# CREDENTIALS_DIRECTORY) or talk to systemd for the daemon (NOTIFY_SOCKET).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status (None: killed at the deadline), its output."""

    returncode: int | None
    output: bytes  # at most OUTPUT_LIMIT bytes, stdout and stderr together
    truncated: bool
    seconds: float

    @property
    def timed_out(self) -> bool:
        """Killed at the deadline."""
        return self.returncode is None

    @property
    def ok(self) -> bool:
        """Exited 0."""
        return self.returncode == 0


def child_environment(event_env: Mapping[str, str], parent: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: a few of ``parent``'s variables, then the event's."""
    env = {k: parent[k] for k in INHERITED if k in parent}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update(event_env)
    return env


def run_command(
    argv: Sequence[str],
    *,
    stdin: bytes,
    env: Mapping[str, str],
    cwd_fd: int,
    timeout: float,
    started: Callable[[int], None] | None = None,
) -> CommandResult:
    """Run ``argv`` in the folder ``cwd_fd`` until it exits or ``timeout`` seconds pass.

    ``started(pgid)`` is told the command's process group once it runs (so that
    a daemon stopping can kill it). Raises ``OSError`` when the command cannot
    be started (not found, not executable).
    """
    began = time.monotonic()
    deadline = began + timeout
    # /proc/self/fd/N is resolved by the child, before exec, to the folder the
    # descriptor holds: no path is looked up again, so no symlink is followed.
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=f"/proc/self/fd/{cwd_fd}",
        env=dict(env),
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    if started is not None:
        started(proc.pid)
    kept = bytearray()
    more = threading.Event()
    writer = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
    reader = threading.Thread(target=_drain, args=(proc.stdout, kept, more), daemon=True)
    writer.start()
    reader.start()
    returncode: int | None
    try:
        returncode = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = None
        kill_group(proc.pid)
        proc.wait()
    # A grandchild may still hold the output open: it gets what is left of the time.
    reader.join(max(0.0, deadline - time.monotonic()))
    if reader.is_alive():
        kill_group(proc.pid)
        reader.join(5.0)
    writer.join(1.0)
    with contextlib.suppress(OSError):
        proc.stdout.close()
    return CommandResult(returncode, bytes(kept), more.is_set(), time.monotonic() - began)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid`` (the command's session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write the event to the command's stdin; a command that does not read it is fine."""
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _drain(pipe: IO[bytes], kept: bytearray, more: threading.Event) -> None:
    """Keep the first OUTPUT_LIMIT bytes of the output, read and drop the rest."""
    with contextlib.suppress(OSError, ValueError):
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
            room = OUTPUT_LIMIT - len(kept)
            if room > 0:
                kept += chunk[:room]
            if len(chunk) > room:
                more.set()
