"""An outage is not the file's fault (SPEC §5): ``api_unreachable``, its probe, no quarantine.

Real ``bgsyncd run`` and ``bgsyncd once`` subprocesses against the emulator over
loopback, stopped mid-run or answering 500, or a port nothing listens on; the
probe's schedule on a fake clock, in process.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bgsyncd.api.client import Client
from bgsyncd.api.outage import PROBE_MAX_SECONDS, Outage, probe_interval
from bgsyncd.dispatch.credits import CreditGuard
from bgsyncd.dispatch.dispatcher import Dispatcher
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.emulator import Emulator
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    TEST_KEY,
    free_port,
)
from tests.support.helpers import FakeClock
from tests.support.pacing import MemoryRequestLog
from tests.support.workers import make_worker

# -- the probe's schedule, on a fake clock -------------------------------------------------


def test_the_probe_runs_30_s_after_the_pause_then_backs_off_to_5_minutes(
    tmp_path: Path, emulator: Emulator
) -> None:
    clock = FakeClock(1_000_000.0)
    checks: list[float] = []
    (tmp_path / "inbox").mkdir()
    queue = SqliteStore(tmp_path / "q.sqlite3")
    clients = {
        "down": Client(f"http://127.0.0.1:{free_port()}", TEST_KEY, 5),
        "up": Client(emulator.url, TEST_KEY, 5),
    }
    api = ["down"]

    def client() -> Client:
        checks.append(clock())
        return clients[api[0]]

    worker = make_worker(tmp_path, client, queue, clock=clock)
    pacer = Pacer(1000, 60.0, MemoryRequestLog(), clock=clock)
    d = Dispatcher(
        queue,
        worker,
        pacer,
        CreditGuard(0, 600, clock=clock),
        client,
        Recorder(),
        max_in_flight=1,
        lease_seconds=60,
        clock=clock,
    )
    try:
        for _ in range(9):
            wait = d._step()  # one turn of the dispatcher's loop; then its wait passes
            assert d.paused == "api_unreachable"
            assert d.waiting().reason == "paused"
            assert d.waiting().seconds == wait
            clock.advance(wait)
        start = checks[0]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(checks)]
        assert gaps == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0, 300.0], (start, gaps)
        api[0] = "up"  # answered normally: the probe lifts the pause by itself
        d._step()
        assert len(checks) == 10
        assert d.paused is None
    finally:
        for c in clients.values():
            c.close()
        queue.close()


def test_the_probe_interval_and_the_failure_streak() -> None:
    assert [probe_interval(n) for n in range(6)] == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert probe_interval(10_000) == PROBE_MAX_SECONDS
    from bgsyncd import errors

    outage = Outage()
    assert outage.record(errors.ServerError("500", 500)) == 0
    assert outage.record(errors.RequestTimeout("read", outcome_unknown=True)) == 1
    assert outage.streak == 2
    # An unusable 200 is an answer (api_malformed counts those): the streak ends.
    assert outage.record(errors.UnusableAnswer("not an image", 200)) == 2
    assert outage.streak == 0
    assert outage.next_probe() == 30.0 and outage.next_probe() == 60.0
    outage.record(None)  # an image request answered: the back-off starts again
    assert outage.next_probe() == 30.0
