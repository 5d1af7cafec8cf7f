"""Running a hook command: an argv, no shell, the event on stdin, a deadline (SPEC §10).

The command starts in a session (and process group) of its own, with the
working directory given as a descriptor of a configured folder opened without
following any symlink (``files.rootfd``), a small environment (the
``BGSYNCD_*`` variables and a few of the daemon's own: never its API key or
credentials), and the event as one JSON object on stdin. Its standard output
and error, together, are kept up to :data:`OUTPUT_LIMIT` bytes for the log and
the rest read and dropped, so a chatty command never blocks. Past the deadline
the whole process group is killed (``SIGKILL``), grandchildren included. The
output is read in the calling thread against the deadline: a process that
left the group (``setsid``) still holding it never keeps the hook past its
deadline; the command then counts with its exit status if it exited.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

OUTPUT_LIMIT = 4096
# The daemon's variables a command inherits: enough to find programs and speak
# the locale; nothing that could carry a secret (BGSYNCD_API_KEY, PGPASSWORD,
# CREDENTIALS_DIRECTORY) or talk to systemd for the daemon (NOTIFY_SOCKET).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_TICK = 0.1  # seconds between looks at the deadline while nothing is read


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
    try:
        more, ended = _exchange(proc, stdin, kept, deadline)
    finally:
        proc.stdin.close()  # nothing buffered: written with os.write, in this thread
        proc.stdout.close()
    returncode: int | None
    try:
        returncode = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = None
        kill_group(proc.pid)
        proc.wait()
    if not ended:  # the rest of its group held the output to the deadline
        kill_group(proc.pid)
    return CommandResult(returncode, bytes(kept), more, time.monotonic() - began)


def _exchange(
    proc: subprocess.Popen[bytes], data: bytes, kept: bytearray, deadline: float
) -> tuple[bool, bool]:
    """Feed ``data`` to the command's stdin and read its output, in this thread, until
    the output ends (every holder closed it) or the deadline passes; whether output
    was dropped, and whether it ended. A process that escaped the group may hold the
    output past the command's exit: it gets what is left of the time, never more (the
    descriptors are read with ``os.read`` here: nothing another thread holds)."""
    assert proc.stdin is not None and proc.stdout is not None
    out, inp = proc.stdout.fileno(), proc.stdin.fileno()
    os.set_blocking(out, False)
    os.set_blocking(inp, False)
    poller = select.poll()
    poller.register(out, select.POLLIN)
    pending = memoryview(data)
    if pending:
        poller.register(inp, select.POLLOUT)
    else:
        proc.stdin.close()
    more = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return more, False
        for fd, _ in poller.poll(min(left, _TICK) * 1000):
            if fd == inp:
                try:
                    pending = pending[os.write(inp, pending) :]
                except BlockingIOError:
                    continue
                except OSError:  # it exited or closed its stdin: it does not want it
                    pending = pending[:0]
                if not pending:
                    poller.unregister(inp)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(out, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return more, True
            if not chunk:
                return more, True  # every holder closed it
            room = OUTPUT_LIMIT - len(kept)
            if room > 0:
                kept += chunk[:room]
            more = more or len(chunk) > room


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid`` (the command's session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
