"""The PostgreSQL store's own behaviour on a real server: outages, secrets, migrations, loss.

What the contract says for both engines is in ``test_storage_contract``; here
is what only a database server can do: stop, come back, be dropped, be opened
by several daemons at the same instant.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from typing import Any

import psycopg
import pytest

from bgsyncd.errors import QueueUnavailable
from bgsyncd.storage.contract import Found, QueueError
from bgsyncd.storage.postgres.db import MIGRATIONS, SCHEMA_VERSION
from bgsyncd.storage.postgres.request_log import PostgresRequestLog, account_id
from bgsyncd.storage.postgres.store import PostgresStore
from tests.support.helpers import FakeClock, wait_until


def _found(relpath: str) -> Found:
    return Found("f", relpath, 10, 1, 7)


def _answers(queue: PostgresStore) -> bool:
    try:
        queue.check_writable()
    except QueueUnavailable:
        return False
    return True


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_stopped_server_fails_closed_with_queue_unavailable_and_the_pool_recovers(
    pg_server: Any, pg_dsn: str, mode: str
) -> None:
    queue = PostgresStore(pg_dsn, "h1", timeout=1.0)
    log = PostgresRequestLog(queue, account_id("k"))
    try:
        queue.enqueue_many([_found("a.jpg")])
        # The test server runs with synchronous_commit=off: a crash ("immediate")
        # would lose the last commits, which a production server keeps.
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        pg_server.stop(mode)
        try:
            with pytest.raises(QueueUnavailable):
                queue.claim(60)
            with pytest.raises(QueueUnavailable):
                queue.enqueue_many([_found("b.jpg")])
            with pytest.raises(QueueUnavailable):
                queue.check_writable()
            with pytest.raises(QueueUnavailable):  # no request may start: fail closed
                log.try_start(limit=10, window=60.0, margin=0.0)
            with pytest.raises(QueueUnavailable):
                PostgresStore(pg_dsn, "h2", timeout=1.0)
            assert queue.lost() is None  # an outage decides nothing
        finally:
            pg_server.start()
        wait_until(lambda: _answers(queue), 30, what="the pool to reconnect")
        job = queue.claim(60)
        assert job is not None and job.relpath == "a.jpg"
        assert log.try_start(limit=10, window=60.0, margin=0.0) == 0.0
        assert queue.counts()["f"]["in_flight"] == 1
    finally:
        queue.close()


def test_a_hung_server_fails_one_call_within_the_bound_then_every_call_at_once(
    pg_server: Any, pg_dsn: str
) -> None:
    queue = PostgresStore(pg_dsn, "h1")
    log = PostgresRequestLog(queue, account_id("k"))
    told: list[str] = []
    queue.outage.on_down = told.append
    try:
        queue.enqueue_many([_found("a.jpg")])
        with pg_server.frozen():  # connections accepted by the kernel, nothing answered
            began = time.monotonic()
            with pytest.raises(QueueUnavailable):
                queue.claim(60)
            assert time.monotonic() - began <= 10.0  # SPEC §8: never longer
            assert len(told) == 1  # the daemon is told (it pauses), once
            began = time.monotonic()
            with pytest.raises(QueueUnavailable):
                queue.counts()
            with pytest.raises(QueueUnavailable):  # no request may start: fail closed
                log.try_start(limit=10, window=60.0, margin=0.0)
            assert queue.lost() is None  # decides nothing
            assert time.monotonic() - began < 1.0  # at once: known not to answer
            began = time.monotonic()
            with pytest.raises(QueueUnavailable):
                queue.check_writable()  # the resume probe asks again, bounded too
            assert time.monotonic() - began <= 10.0
        wait_until(lambda: _answers(queue), 30, what="the server answering again")
        job = queue.claim(60)
        assert job is not None and job.relpath == "a.jpg"
        assert len(told) == 1
    finally:
        queue.close()


def test_the_dsn_password_never_appears_in_an_error_nor_a_log_line(
    pg_server: Any, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    # libpq echoes a malformed URI in its error, password and all.
    malformed = f"postgresql://bgsyncd_test:{secret}%zz@127.0.0.1:{pg_server.port}/x"
    with pytest.raises(QueueError) as raised:
        PostgresStore(malformed, "h", timeout=1.0)
    errors.append(raised.value)
    missing = f"{pg_server.dsn('no_such_database')} password={secret}"
    with pytest.raises((QueueError, QueueUnavailable)) as raised_missing:
        PostgresStore(missing, "h", timeout=1.0)
    errors.append(raised_missing.value)
    queue = PostgresStore(f"{pg_dsn} password={secret}", "h", timeout=1.0)
    try:
        pg_server.stop()
        try:
            with pytest.raises(QueueUnavailable) as raised_down:
                queue.claim(60)
            errors.append(raised_down.value)
        finally:
            pg_server.start()
    finally:
        queue.close()
    for exc in errors:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        assert secret not in text
        assert str(exc)  # says something
    assert "***" in str(errors[0])
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_lost_says_deleted_when_the_schema_is_dropped_and_replaced_when_made_anew(
    pg_dsn: str,
) -> None:
    with PostgresStore(pg_dsn, "h1") as queue:
        assert queue.created and queue.lost() is None
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        assert queue.lost() == "deleted"
        with PostgresStore(pg_dsn, "h2") as fresh:
            assert fresh.created and fresh.lost() is None
            assert queue.lost() == "replaced"


def test_daemons_starting_at_once_on_an_empty_database_migrate_it_once(pg_dsn: str) -> None:
    start = threading.Barrier(6)
    opened: list[PostgresStore] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def open_one(n: int) -> None:
        start.wait(10)
        try:
            queue = PostgresStore(pg_dsn, f"h{n}")
        except BaseException as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            opened.append(queue)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert failures == []
        assert sorted(q.created for q in opened) == [False] * 5 + [True]
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute("SELECT COUNT(*) FROM bgsyncd_schema").fetchone() == (1,)
    finally:
        for queue in opened:
            queue.close()


def test_times_at_the_contract_are_the_hosts_clock_even_when_it_disagrees_with_the_servers(
    pg_dsn: str,
) -> None:
    # A host whose clock runs a day ahead of the database server's.
    clock = FakeClock(time.time() + 86_400)
    with (
        PostgresStore(pg_dsn, "ahead", clock=clock) as ahead,
        PostgresStore(pg_dsn, "exact") as exact,
    ):
        ahead.enqueue_many([_found("a.jpg")])
        oldest = ahead.oldest_pending_queued_at()
        assert oldest is not None and abs(oldest - clock.t) < 60
        job = ahead.claim(60)
        assert job is not None
        ahead.retry_later(job, clock.t + 3600, "later")
        at = ahead.next_ready_at()
        assert at is not None and abs(at - (clock.t + 3600)) < 60
        # The other host reads the same moment on its own clock: an hour from now, not a day.
        theirs = exact.next_ready_at()
        assert theirs is not None and abs(theirs - (time.time() + 3600)) < 60
        assert exact.claim(60) is None
        ahead.enqueue_many([_found("b.jpg")])
        job = ahead.claim(60)
        assert job is not None and job.relpath == "b.jpg"
        ahead.defer(job, clock.t - 1, "due")  # due on the host's clock is due for all
        assert exact.claim(60) is not None


def test_the_first_probe_after_a_long_outage_answers_without_waiting_out_the_pools_backoff(
    pg_server: Any, pg_dsn: str
) -> None:
    with PostgresStore(pg_dsn, "h", timeout=1.0) as queue:
        pg_server.stop()
        try:
            # Long enough that the pool's reconnection backoff has grown past seconds.
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                with pytest.raises(QueueUnavailable):
                    queue.check_writable()
        finally:
            pg_server.start()
        queue.check_writable()  # the daemon's resume probe: back at once
        assert queue.counts() == {}


def test_a_read_only_view_of_a_database_no_daemon_initialised_says_so(pg_dsn: str) -> None:
    with pytest.raises(QueueError, match="not initialised yet"):
        PostgresStore.open_readonly(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:  # and it created nothing
        assert conn.execute("SELECT to_regclass('bgsyncd_schema')").fetchone() == (None,)


def test_a_database_of_schema_4_keeps_its_claims_as_the_folders_own_tree(pg_dsn: str) -> None:
    # A queue written before renditions: its claims are the folder's own outbox's.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bgsyncd_schema (version INTEGER NOT NULL, database_id TEXT NOT NULL)"
        )
        for statement in (s for migration in MIGRATIONS[:4] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO bgsyncd_schema VALUES (4, 'old')")
        row = conn.execute(
            "INSERT INTO jobs (folder, relpath, size, mtime_ns, inode, state, first_seen,"
            " queued_at, updated_at) VALUES ('f', 'a.jpg', 1, 1, 1, 'done', 0, 0, 0) RETURNING id"
        ).fetchone()
        assert row is not None
        old = int(row[0])
        conn.execute(
            "INSERT INTO output_claims (folder, outpath, job_id) VALUES ('f', 'a.png', %s)", (old,)
        )
    queue = PostgresStore(pg_dsn, host_id="h")
    try:
        queue.enqueue_many([_found("a.webp")])
        webp = queue.claim(60)
        assert webp is not None and webp.relpath == "a.webp"
        assert queue.claimed_outputs(old) == ["a.png"]
        assert queue.claimed_outputs(old, "/srv/amazon") == []
        # The old name is still a.jpg's in the folder's own tree, free in a rendition's.
        assert queue.claim_output("f", webp.id, iter(["a.png", "a.webp.png"])) == "a.webp.png"
        assert queue.claim_output("f", webp.id, iter(["a.png"]), "/srv/amazon") == "a.png"
    finally:
        queue.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM bgsyncd_schema").fetchone() == (SCHEMA_VERSION,)
