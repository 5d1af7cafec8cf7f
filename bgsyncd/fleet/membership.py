"""One daemon as a host of the fleet (SPEC §8): its lock, its folders, its heartbeat.

* the host lock (``storage.postgres.hostlock``) — taken first: a second live
  daemon with the same ``host_id`` is refused, a restart after kill -9 is not.
* :func:`agree_on_folders` — a shared folder is known by its name, and every
  host serving it must give it the same settings; a folder that is not
  shared must not carry a name another host uses.
* :class:`Membership` — join, then a heartbeat thread well inside
  ``lease_seconds`` that renews this host's leases and takes over the expired
  claims in its shared folders (the job's own claim, ``JobStore.holds``, is
  confirmed before outputs are written).

Like ``storage.postgres.store``, only the PostgreSQL backend imports this module.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bgsyncd.config.schema import FolderSettings
from bgsyncd.errors import BgsyncdError, ConfigError, HostConflict, QueueUnavailable
from bgsyncd.fleet.hosts import Hosts
from bgsyncd.logs import get_logger
from bgsyncd.storage.postgres.guard import CALL_SECONDS
from bgsyncd.storage.postgres.hostlock import HostLock
from bgsyncd.storage.postgres.store import PostgresStore

log = get_logger("bgsyncd.fleet")

# The settings of a shared folder that every host must agree on; the paths are
# each host's own (one share mounted at different places).
AGREED = (
    "output",
    "format",
    "background",
    "oversize",
    "after_success",
    "recursive",
    "ignore",
)


def _agreed(folder: FolderSettings) -> dict[str, Any]:
    dumped = folder.model_dump(mode="json")
    return {k: dumped[k] for k in AGREED}


def agree_on_folders(
    queue: PostgresStore, folders: Sequence[FolderSettings], lease_seconds: float
) -> None:
    """Refuse folders this host cannot serve beside the fleet's other hosts.

    A shared folder's settings must be those the other live hosts give it; a
    folder that is not shared must not have a name another host uses (the
    queue knows a folder by its name).
    """
    me = queue.host_id
    with queue.transaction() as conn:
        conn.execute("LOCK TABLE shared_folders IN EXCLUSIVE MODE")
        others = conn.execute("SELECT id, folders FROM hosts WHERE id != %s", (me,)).fetchall()
        for folder in folders:
            if not folder.shared:
                for host, names in others:
                    if folder.name in json.loads(names):
                        raise ConfigError(
                            f"folder {folder.name!r} is not shared on host {me!r}, but host"
                            f" {host!r} also has a folder of that name: rename one, or set"
                            " shared = true on every host that serves it (a host retired for"
                            f" good: delete its row {host!r} from the hosts table)"
                        )
                continue
            mine = json.dumps(_agreed(folder), sort_keys=True)
            row = conn.execute(
                "SELECT s.settings, s.host, h.last_seen > extract(epoch from clock_timestamp())"
                " - %s FROM shared_folders s LEFT JOIN hosts h ON h.id = s.host"
                " WHERE s.name = %s",
                (lease_seconds, folder.name),
            ).fetchone()
            if row is not None and row[0] != mine and row[1] != me and row[2]:
                theirs = json.loads(row[0])
                differ = sorted(k for k in AGREED if theirs.get(k) != _agreed(folder)[k])
                shown = ", ".join(
                    f"{k} = {json.dumps(_agreed(folder)[k])} here, {json.dumps(theirs.get(k))}"
                    f" on {row[1]!r}"
                    for k in differ
                )
                raise ConfigError(
                    f"shared folder {folder.name!r}: host {me!r} and running host {row[1]!r}"
                    f" disagree on its settings ({shown}): give it the same settings on"
                    " every host"
                )
            conn.execute(
                "INSERT INTO shared_folders (name, settings, host) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,"
                " host = excluded.host",
                (folder.name, mine, me),
            )


class Membership:
    """This daemon in the fleet: lock, join, heartbeat and takeover."""

    def __init__(
        self,
        queue: PostgresStore,
        dsn: str,
        lease_seconds: float,
        *,
        in_flight: Callable[[], int] = lambda: 0,
        on_takeover: Callable[[int], None] = lambda n: None,
        on_hosts: Callable[[int], None] = lambda n: None,
        on_conflict: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.instance = uuid.uuid4().hex
        self._queue = queue
        self._hosts = Hosts(queue, lease_seconds)
        self._lock = HostLock(dsn, queue.host_id)
        self._lease = lease_seconds
        self._shared: list[str] = []
        self.in_flight = in_flight
        self.on_takeover = on_takeover
        self.on_hosts = on_hosts
        self.on_conflict = on_conflict
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def hosts(self) -> Hosts:
        """The fleet's host rows."""
        return self._hosts

    def join(self, folders: Sequence[FolderSettings]) -> None:
        """Take the host lock, check the folders against the fleet, write this host's row."""
        self._lock.acquire()
        try:
            agree_on_folders(self._queue, folders, self._lease)
            self._hosts.join([f.name for f in folders], self.instance, locked=True)
        except BaseException:
            self._lock.release()
            raise
        self._shared = [f.name for f in folders if f.shared]

    def set_folders(self, folders: Sequence[FolderSettings]) -> None:
        """A reload: check the folders against the fleet as :meth:`join` does, then
        take them (the shared ones are those this host takes over from now).

        Raises :class:`~bgsyncd.errors.ConfigError` when another host forbids
        them, and :class:`~bgsyncd.errors.QueueUnavailable` when the database
        cannot answer; either way nothing changed.
        """
        agree_on_folders(self._queue, folders, self._lease)
        self._hosts.set_folders([f.name for f in folders])
        self._shared = [f.name for f in folders if f.shared]

    @property
    def interval(self) -> float:
        """Seconds between heartbeats: a quarter of the lease, so three may fail in a row."""
        return max(0.2, self._lease / 4.0)

    def start(self) -> None:
        """Beat in a thread of its own until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False  # logged once while beats fail in a row, not at every beat
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                failing = False
            except HostConflict as exc:
                self.on_conflict(str(exc))
                return
            except BgsyncdError as exc:  # the database is away: the daemon pauses on it
                if not failing:
                    log.warning("fleet.heartbeat_failed", error=str(exc))
                failing = True
            except Exception:  # a bug must not end the heartbeat: leases would run out
                log.exception("fleet.heartbeat_error")

    def beat(self) -> int:
        """Renew this host's row and leases; take over expired claims. Return those taken."""
        down = self._queue.outage.down
        if down is not None:  # not answering: no wait on it (the daemon paused already)
            raise QueueUnavailable(down)
        self._lock.ensure()
        self._hosts.heartbeat(self.in_flight())
        taken = self._hosts.take_over_expired(self._shared) if self._shared else 0
        if taken:
            log.warning("fleet.takeover", jobs=taken, note="a host stopped; sent again")
            self.on_takeover(taken)
        self.on_hosts(self._hosts.alive())
        return taken

    def stop(self) -> None:
        """Stop beating, say this host holds nothing, and let the lock go."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CALL_SECONDS + 2.0)  # a beat under way waits one call at most
        try:
            if self._queue.outage.down is None:  # else no wait on it: the row ages out
                self._hosts.leave()
        except (BgsyncdError, QueueUnavailable) as exc:
            log.warning("fleet.leave_failed", error=str(exc))
        if self._thread is None or not self._thread.is_alive():  # never under its feet
            self._lock.release()
