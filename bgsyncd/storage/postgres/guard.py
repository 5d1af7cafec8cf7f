"""Bounds on every wait for PostgreSQL (SPEC §8: a call never waits longer than 10 s).

A server that hangs (SIGSTOP, a stuck host) or is cut off still completes TCP
handshakes from the kernel's backlog and then never answers; over loopback the
kernel even acknowledges what is sent, so TCP keepalives and
``tcp_user_timeout`` never fire, and psycopg's ``Connection.wait`` would wait
forever. What bounds a call:

- :func:`bounded_dsn`: libpq's ``connect_timeout``, keepalives and
  ``tcp_user_timeout`` (a cut network), and the server's ``statement_timeout``
  and ``idle_in_transaction_session_timeout`` (a slow server; a host frozen
  mid-transaction, holding locks the others wait on) on every connection;
- :data:`WATCHDOG`: a thread that shuts down the socket of a connection whose
  call outlived its deadline. psycopg's wait returns at once ("server closed
  the connection"), whatever the server does;
- :class:`Outage`: once a call found the server not answering, the other calls
  fail at once with ``QueueUnavailable`` instead of each waiting out its own
  bound (the main loop, the dispatcher and the heartbeat stay responsive, and
  SIGTERM stops the daemon), until a look finds the server back.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bgsyncd.errors import QueueUnavailable

# The longest one call waits on the database, connection included (SPEC §8: 10 s).
CALL_SECONDS = 8.0
# The main loop's look at the schema doubles as its look at the server: short,
# so that an idle host notices a hung server within 10 s (its loop turns every 5 s).
LIVENESS_SECONDS = 3.0
# A new connection (libpq's connect_timeout: whole seconds, 2 at least); a look
# at a server that was not answering takes the least, being made often.
CONNECT_SECONDS = 4
LOOK_CONNECT_SECONDS = 2
# The pool's check of a connection before handing it out.
CHECK_SECONDS = 3.0
# After the server stopped answering, how often a call may look whether it answers again.
LOOK_SECONDS = 2.0
# libpq parameters for every connection; the operator's DSN may not loosen them.
_LIBPQ = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "8000",  # ms: unacknowledged data on a cut network
}
# Server settings for every session (options=-c ...): the server's own bounds.
_SERVER_OPTIONS = "-c statement_timeout=7000 -c idle_in_transaction_session_timeout=15000"
# SQLSTATE classes of a server that does not answer (as opposed to one that
# answers with an error): connection exception, operator intervention (a
# shutdown, a statement cancelled by its timeout).
_NOT_ANSWERING_CLASSES = frozenset({"08", "57"})


def after(seconds: float) -> float:
    """The ``time.monotonic()`` deadline ``seconds`` from now."""
    return time.monotonic() + seconds


def bounded_dsn(dsn: str, *, options: str = "") -> str:
    """``dsn`` with the bounds above (and the server ``options`` given), the operator's
    own ``options`` kept after ours, so a setting of theirs wins on the server."""
    params = conninfo_to_dict(dsn)
    timeout = params.get("connect_timeout")
    try:
        connect = min(CONNECT_SECONDS, max(2, int(str(timeout)))) if timeout else CONNECT_SECONDS
    except ValueError:
        connect = CONNECT_SECONDS
    theirs = str(params.get("options") or "")
    server = " ".join(part for part in (_SERVER_OPTIONS, options, theirs) if part)
    return make_conninfo(dsn, connect_timeout=str(connect), options=server, **_LIBPQ)


def not_answering(exc: psycopg.Error) -> bool:
    """The server did not answer (gone, hung, cut off, timed out), rather than refusing."""
    if isinstance(exc, psycopg.InterfaceError):  # the connection is closed
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in _NOT_ANSWERING_CLASSES  # None: no answer at all


def cut(fd: int) -> None:
    """Shut down the socket behind ``fd`` (a call blocked on it returns at once)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: nothing waits on it
    finally:
        sock.detach()  # the descriptor stays its owner's to close


class Watchdog:
    """Cuts the connection of a call past its deadline; one thread, asleep while idle."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # token -> (deadline, a duplicate of the connection's socket): the duplicate
        # keeps the descriptor ours, so it is never one reused by another file.
        self._watched: dict[int, tuple[float, int]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def bound(self, conn: psycopg.Connection[Any], deadline: float) -> Iterator[None]:
        """Within the block, ``conn`` is cut at ``deadline`` (``time.monotonic()``)."""
        try:
            fd = os.dup(conn.fileno())
        except (psycopg.Error, OSError):  # closed already: nothing can wait on it
            yield
            return
        token = next(self._tokens)
        with self._cond:
            self._watched[token] = (deadline, fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                del self._watched[token]
            os.close(fd)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._watched.items()):
                    if deadline <= now:
                        cut(fd)
                        self._watched[token] = (math.inf, fd)  # once is enough
                nearest = min((d for d, _ in self._watched.values()), default=math.inf)
                self._cond.wait(None if math.isinf(nearest) else nearest - now)


WATCHDOG = Watchdog()


class Outage:
    """Whether the server answers, as the last calls found it.

    After a call found it not answering, every other call fails at once; one
    call at a time looks again (a fresh connection of its own first), at most
    every ``LOOK_SECONDS`` unless forced (the daemon's resume probe). A look
    that reaches the server ends the outage.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._down: str | None = None  # what the call that found it down said
        self._looking = False
        self._next_look = 0.0
        # Told once per outage, from the thread that found it (the daemon pauses).
        self.on_down: Callable[[str], None] = lambda error: None

    @property
    def down(self) -> str | None:
        """Why the server is taken for not answering, or None while it answers."""
        with self._lock:
            return self._down

    def admit(self, *, force: bool = False) -> bool:
        """May a call go to the server now? True: it does so as a look (ask the server
        afresh first); False: as usual. Raises ``QueueUnavailable`` while it is down
        and not this call's turn to look."""
        with self._lock:
            if self._down is None:
                return False
            now = self._clock()
            if self._looking or (not force and now < self._next_look):
                raise QueueUnavailable(self._down)
            self._looking = True
            self._next_look = now + LOOK_SECONDS
            return True

    def ended(self, look: bool, down: str | None) -> None:
        """A call ended: ``down`` says why the server did not answer, None if it did."""
        newly = False
        with self._lock:
            if look:
                self._looking = False
            if down is not None:
                newly = self._down is None
                self._down = down
                if newly:
                    self._next_look = self._clock() + LOOK_SECONDS
            elif look:
                self._down = None  # the server answered a look: back
        if newly:
            self.on_down(down or "")
