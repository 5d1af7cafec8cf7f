"""The SQLite job queue, on a real database file in tmp_path."""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgsyncd.storage.contract import STATES, Found, LeaseLost, QueueError
from bgsyncd.storage.sqlite import schema as queue_sql
from bgsyncd.storage.sqlite.request_log import SqliteRequestLog
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.helpers import FakeClock
from tests.support.jobs import find_job, get_job
from tests.support.paths import ROOT


def query_plans() -> dict[str, tuple[str, tuple[object, ...]]]:
    """The hot-path statements of ``queue_sql`` with sample parameters, for EXPLAIN QUERY PLAN."""
    return {
        "is_unchanged": (queue_sql.SQL_IS_UNCHANGED, ("f", "a.jpg", 1, 2, 3)),
        "promote": (queue_sql.SQL_PROMOTE, (0.0, 0.0)),
        "first_folder": (queue_sql.SQL_FIRST_FOLDER, ()),
        "next_folder": (queue_sql.SQL_NEXT_FOLDER, ("f",)),
        "oldest_in_folder": (queue_sql.SQL_OLDEST_IN_FOLDER, ("f",)),
        "any_pending": (queue_sql.SQL_ANY_PENDING, ()),
        "next_retry": (queue_sql.SQL_NEXT_RETRY, ()),
        "any_pending_in": (queue_sql.SQL_ANY_PENDING_IN, ("f",)),
        "next_retry_in": (queue_sql.SQL_NEXT_RETRY_IN, ("f",)),
        "counts": (queue_sql.SQL_COUNTS, ()),
        "oldest_open": (queue_sql.SQL_OLDEST_OPEN, ()),
        "recover": (queue_sql.SQL_RECOVER, (0.0,)),
        "quarantined": (queue_sql.SQL_QUARANTINED, ()),
        "quarantined_in": (queue_sql.SQL_QUARANTINED_IN, ("f",)),
        "owner": (queue_sql.SQL_OWNER, ("f", "", "a.png")),
        "claimed_by": (queue_sql.SQL_CLAIMED_BY, (1, "")),
        "output_inside": (queue_sql.SQL_OUTPUT_INSIDE, ("f", "", "a.png/", "a.png0")),
        "input_inside": (queue_sql.SQL_INPUT_INSIDE, ("f", "a.png/", "a.png0")),
        "since": (queue_sql.SQL_SINCE, (0.0,)),
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.sqlite3"


@pytest.fixture
def q(db: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    queue = SqliteStore(db, clock=clock)
    yield queue
    queue.close()


def found(
    relpath: str, folder: str = "products", size: int = 100, mtime_ns: int = 1, inode: int = 7
) -> Found:
    return Found(folder, relpath, size, mtime_ns, inode)


def test_opens_in_wal_full_with_foreign_keys_and_creates_parent(q: SqliteStore, db: Path) -> None:
    assert db.parent.is_dir()
    conn = q._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_newer_schema_is_a_clear_error(db: Path) -> None:
    with SqliteStore(db) as queue, queue._write() as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueError, match="schema version 99"):
        SqliteStore(db)
    with pytest.raises(QueueError, match="schema version 99"):
        SqliteStore.open_readonly(db)


def test_enqueue_new_files_pending(q: SqliteStore, clock: FakeClock) -> None:
    batch = [found("a.jpg"), found("b/c.png", folder="other")]
    assert q.enqueue_many(batch) == batch
    job = find_job(q, "products", "a.jpg")
    assert job is not None
    assert (job.state, job.attempts, job.resend, job.sha256) == ("pending", 0, False, None)
    assert job.first_seen == job.queued_at == clock.t
    assert get_job(q, job.id) == job
    assert find_job(q, "products", "nope.jpg") is None
    assert get_job(q, 10_000) is None


def test_unchanged_skipped_and_changed_requeued(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many([found("a.jpg")])
    assert q.is_unchanged("products", "a.jpg", 100, 1, 7)
    assert not q.is_unchanged("products", "a.jpg", 101, 1, 7)
    assert not q.is_unchanged("products", "a.jpg", 100, 2, 7)
    assert not q.is_unchanged("products", "a.jpg", 100, 1, 8)
    assert not q.is_unchanged("other", "a.jpg", 100, 1, 7)
    assert q.enqueue_many([found("a.jpg")]) == []

    job = q.claim(60)
    assert job is not None
    q.set_sha256(job, "ab" * 32)
    q.retry_later(job, clock.t + 5, "boom")
    first_seen = job.first_seen
    clock.advance(10)
    changed = found("a.jpg", size=200)
    assert q.enqueue_many([changed]) == [changed]
    again = get_job(q, job.id)
    assert again is not None
    assert (again.state, again.attempts, again.sha256, again.size) == ("pending", 0, None, 200)
    assert again.first_seen == first_seen
    assert again.queued_at == clock.t
    assert again.last_error is None


def test_done_file_with_new_content_is_queued_again(q: SqliteStore) -> None:
    q.enqueue_many([found("a.jpg")])
    job = q.claim(60)
    assert job is not None
    q.complete(job, ["a.png"])
    assert q.enqueue_many([found("a.jpg", mtime_ns=2)]) == [found("a.jpg", mtime_ns=2)]
    assert get_job(q, job.id).state == "pending"  # type: ignore[union-attr]


def test_in_flight_job_not_disturbed_by_enqueue(q: SqliteStore) -> None:
    q.enqueue_many([found("a.jpg")])
    job = q.claim(60)
    assert job is not None
    assert q.enqueue_many([found("a.jpg", size=999)]) == []
    now = get_job(q, job.id)
    assert now is not None
    assert (now.state, now.size) == ("in_flight", 100)


def test_duplicates_in_one_batch_return_once(q: SqliteStore) -> None:
    queued = q.enqueue_many([found("a.jpg"), found("a.jpg", size=5)])
    assert queued == [found("a.jpg", size=5)]
    assert find_job(q, "products", "a.jpg").size == 5  # type: ignore[union-attr]


def test_claim_oldest_first_within_a_folder(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many([found("late.jpg")])
    clock.advance(-5)  # queued earlier, although enqueued after
    q.enqueue_many([found("early.jpg")])
    clock.advance(10)
    q.enqueue_many([found("x.jpg"), found("y.jpg")])  # same time: by id
    order = [q.claim(60).relpath for _ in range(4)]  # type: ignore[union-attr]
    assert order == ["early.jpg", "late.jpg", "x.jpg", "y.jpg"]
    assert q.claim(60) is None


def test_claim_sets_lease(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many([found("a.jpg")])
    job = q.claim(30)
    assert job is not None
    assert job.state == "in_flight"
    assert q._conn.execute("SELECT lease_until FROM jobs").fetchone()[0] == clock.t + 30
    assert q.next_ready_at() is None


def test_round_robin_does_not_starve_a_small_folder(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many(found(f"{i:04}.jpg", folder="A") for i in range(1000))
    clock.advance(1)
    q.enqueue_many([found("one.jpg", folder="B")])
    first_two = [q.claim(60) for _ in range(2)]
    assert "B" in [job.folder for job in first_two if job is not None]


def test_round_robin_cycles_through_folders(q: SqliteStore) -> None:
    for folder in ("c", "a", "b"):
        q.enqueue_many(found(f"{i}.jpg", folder=folder) for i in range(3))
    folders = [q.claim(60).folder for _ in range(9)]  # type: ignore[union-attr]
    assert folders == ["a", "b", "c"] * 3
    assert q.claim(60) is None


def test_retry_wait_promoted_when_due(q: SqliteStore, clock: FakeClock) -> None:
    assert q.next_ready_at() is None
    q.enqueue_many([found("a.jpg")])
    assert q.next_ready_at() == clock.t
    job = q.claim(60)
    assert job is not None
    assert q.retry_later(job, clock.t + 30, "503") == 1
    assert q.next_ready_at() == clock.t + 30
    assert q.claim(60) is None
    clock.advance(29.9)
    assert q.claim(60) is None
    clock.advance(0.1)
    again = q.claim(60)
    assert again is not None
    assert (again.id, again.attempts, again.last_error) == (job.id, 1, "503")
    assert q.retry_later(again, clock.t + 60, "timeout", resend=True) == 2
    waiting = get_job(q, job.id)
    assert waiting is not None
    assert (waiting.state, waiting.next_attempt_at, waiting.resend) == (
        "retry_wait", clock.t + 60, True)  # fmt: skip


def test_complete_quarantine_release(q: SqliteStore) -> None:
    q.enqueue_many([found("a.jpg"), found("b.jpg"), found("c.jpg")])
    a, b, c = (q.claim(60) for _ in range(3))
    assert a and b and c
    q.complete(a, ["a.png", "a.mask.png"])
    done = get_job(q, a.id)
    assert done is not None
    assert (done.state, done.outputs, done.resend) == ("done", ("a.png", "a.mask.png"), False)
    q.quarantine(b, "too_large", "413 from the API", 413)
    bad = get_job(q, b.id)
    assert bad is not None
    assert (bad.state, bad.reason, bad.last_error, bad.http_status) == (
        "quarantined", "too_large", "413 from the API", 413)  # fmt: skip
    q.retry_later(c, 0.0, "500")
    c = q.claim(60)
    assert c is not None
    q.release(c)
    released = get_job(q, c.id)
    assert released is not None
    assert (released.state, released.attempts) == ("pending", 1)
    assert q._conn.execute("SELECT lease_until FROM jobs WHERE id = ?", (c.id,)).fetchone() == (
        None,
    )


def test_recover_after_crash_marks_resend(db: Path, clock: FakeClock) -> None:
    queue = SqliteStore(db, clock=clock)
    queue.enqueue_many([found("a.jpg"), found("b.jpg")])
    claimed = queue.claim(60)
    assert claimed is not None
    assert not claimed.resend
    queue.close()  # the run dies without finishing

    reopened = SqliteStore(db, clock=clock)
    assert get_job(reopened, claimed.id).state == "in_flight"  # type: ignore[union-attr]
    assert reopened.recover() == 1
    job = get_job(reopened, claimed.id)
    assert job is not None
    assert (job.state, job.resend) == ("pending", True)
    resent = reopened.claim(60)
    assert resent is not None
    assert (resent.id, resent.resend) == (claimed.id, True)
    reopened.complete(resent, ["a.png"])
    assert not get_job(reopened, claimed.id).resend  # type: ignore[union-attr]
    assert reopened.recover() == 0
    reopened.close()


def test_claim_output_names(q: SqliteStore, db: Path) -> None:
    q.enqueue_many([found("a.jpg"), found("a.webp")])
    jpg = find_job(q, "products", "a.jpg")
    webp = find_job(q, "products", "a.webp")
    assert jpg and webp
    assert q.claim_output("products", jpg.id, ["a.png", "a.jpg.png"]) == "a.png"
    assert q.claim_output("products", webp.id, ["a.png", "a.webp.png"]) == "a.webp.png"
    # another folder has its own names
    assert q.claim_output("other", webp.id, ["a.png"]) == "a.png"
    q.close()
    with SqliteStore(db) as again:  # stable across a restart, and for reprocessing
        assert again.claim_output("products", webp.id, ["a.png", "a.webp.png"]) == "a.webp.png"
        assert again.claim_output("products", jpg.id, ["a.png", "a.jpg.png"]) == "a.png"


def test_a_database_of_schema_2_keeps_its_claims_as_the_folders_own_tree(db: Path) -> None:
    # A queue written before renditions: its claims are the folder's own outbox's.
    db.parent.mkdir(parents=True)
    old = sqlite3.connect(db)
    for statement in (*queue_sql.MIGRATIONS[0], *queue_sql.MIGRATIONS[1]):
        old.execute(statement)
    old.execute(
        "INSERT INTO jobs (id, folder, relpath, size, mtime_ns, inode, state, first_seen,"
        " queued_at, updated_at, outputs) VALUES (1, 'products', 'a.jpg', 1, 1, 1, 'done',"
        " 0, 0, 0, '[\"a.png\"]')"
    )
    old.execute(
        "INSERT INTO output_claims (folder, outpath, job_id) VALUES ('products', 'a.png', 1)"
    )
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    with SqliteStore(db) as q:
        q.enqueue_many([found("a.webp")])
        webp = find_job(q, "products", "a.webp")
        assert webp is not None
        assert q.claimed_outputs(1) == ["a.png"]
        assert q.claimed_outputs(1, "/srv/amazon") == []
        # The old name is still a.jpg's in the folder's own tree, free in a rendition's.
        assert q.claim_output("products", webp.id, ["a.png", "a.webp.png"]) == "a.webp.png"
        assert q.claim_output("products", webp.id, ["a.png"], "/srv/amazon") == "a.png"
    version = sqlite3.connect(db)
    assert version.execute("PRAGMA user_version").fetchone()[0] == queue_sql.SCHEMA_VERSION
    version.close()


def test_claim_output_reads_an_endless_generator_only_as_far_as_needed(q: SqliteStore) -> None:
    q.enqueue_many([found(f"a{i}.jpg") for i in range(4)])
    ids = [find_job(q, "products", f"a{i}.jpg").id for i in range(4)]  # type: ignore[union-attr]
    taken: list[int] = []

    def names() -> Iterator[str]:
        yield "a.png"
        for n in itertools.count(2):
            taken.append(n)
            yield f"a~{n}.png"

    got = [q.claim_output("products", job_id, names()) for job_id in ids]
    assert got == ["a.png", "a~2.png", "a~3.png", "a~4.png"]
    assert taken == [2, 2, 3, 2, 3, 4]


def test_forget_deletes_job_and_claims(q: SqliteStore) -> None:
    q.enqueue_many([found("a.jpg"), found("b.jpg")])
    a = find_job(q, "products", "a.jpg")
    b = find_job(q, "products", "b.jpg")
    assert a and b
    assert q.claim_output("products", a.id, ["a.png"]) == "a.png"
    a = q.claim(60)
    assert a is not None and a.relpath == "a.jpg"
    q.forget(a)
    assert get_job(q, a.id) is None
    assert q.claim_output("products", b.id, ["a.png"]) == "a.png"
    # changes to a forgotten job change nothing: no claim holds it any more
    for change in (
        lambda: q.complete(a, ["x"]),
        lambda: q.release(a),
        lambda: q.retry_later(a, 0.0, "gone"),
    ):
        with pytest.raises(LeaseLost):
            change()
    assert get_job(q, a.id) is None


def test_counts_and_oldest(q: SqliteStore, clock: FakeClock) -> None:
    assert q.counts() == {}
    assert q.oldest_pending_queued_at() is None
    start = clock.t
    q.enqueue_many([found("x.jpg", folder="other")])
    clock.advance(10)
    q.enqueue_many([found(f"{i}.jpg") for i in range(5)])
    x = q.claim(60)  # "other" comes first in the rotation
    j = [q.claim(60) for _ in range(3)]
    assert x is not None and x.folder == "other"
    assert all(job is not None and job.folder == "products" for job in j)
    q.complete(j[0], [])  # type: ignore[arg-type]
    q.quarantine(j[1], "corrupt_image", "bad", None)  # type: ignore[arg-type]
    q.retry_later(j[2], clock.t + 100, "500")  # type: ignore[arg-type]
    counts = q.counts()
    assert counts == {
        "products": {"pending": 2, "in_flight": 0, "retry_wait": 1, "done": 1, "quarantined": 1},
        "other": {"pending": 0, "in_flight": 1, "retry_wait": 0, "done": 0, "quarantined": 0},
    }
    assert all(list(c) == list(STATES) for c in counts.values())
    assert q.oldest_pending_queued_at() == start  # the in-flight job counts
    q.complete(x, [])
    assert q.oldest_pending_queued_at() == start + 10


def test_quarantined_listing_and_requeue(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many([found("a.jpg"), found("b.jpg", folder="other"), found("c.jpg")])
    for _ in range(3):
        job = q.claim(60)
        assert job is not None
        q.retry_later(job, 0.0, "x")
    for _ in range(3):
        job = q.claim(60)
        assert job is not None
        q.quarantine(job, "retries_exhausted", "500 five times", 500)
    assert [j.relpath for j in q.quarantined()] == ["b.jpg", "a.jpg", "c.jpg"]
    listed = q.quarantined("products")
    assert [j.relpath for j in listed] == ["a.jpg", "c.jpg"]
    assert listed[0].reason == "retries_exhausted"
    assert listed[0].attempts == 1
    clock.advance(50)
    assert q.requeue(listed[0].id)
    assert not q.requeue(listed[0].id)  # no longer quarantined
    back = get_job(q, listed[0].id)
    assert back is not None
    assert (back.state, back.attempts, back.reason, back.last_error, back.http_status) == (
        "pending", 0, None, None, None)  # fmt: skip
    assert back.queued_at == clock.t
    assert [j.relpath for j in q.quarantined("products")] == ["c.jpg"]


def test_state_values(q: SqliteStore, db: Path) -> None:
    assert q.get_state("paused") is None
    q.set_state("paused", "insufficient_credits")
    q.set_state("credits", "12")
    q.set_state("credits", "11")
    assert q.get_state("credits") == "11"
    q.set_state("paused", None)
    assert q.get_state("paused") is None
    with SqliteStore.open_readonly(db) as view:
        assert view.get_state("credits") == "11"


def test_readonly_before_the_daemon_ever_ran_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never" / "queue.sqlite3"
    with SqliteStore.open_readonly(path) as view:
        assert view.counts() == {}
        assert view.oldest_pending_queued_at() is None
        assert view.get_state("paused") is None
        assert view.quarantined() == []
        with pytest.raises(QueueError, match="read-only"):
            view.enqueue_many([found("a.jpg")])
    assert not path.parent.exists()


def test_readonly_answers_while_the_daemon_holds_a_write(q: SqliteStore, db: Path) -> None:
    q.enqueue_many([found("a.jpg")])
    with SqliteStore.open_readonly(db) as view:
        with q._write():  # the daemon is in the middle of a write transaction
            q.enqueue_many([found("b.jpg")])
            start = time.monotonic()
            assert view.counts()["products"]["pending"] == 1  # sees the last commit
            assert time.monotonic() - start < 1.0
        assert view.counts()["products"]["pending"] == 2
        with pytest.raises(QueueError):
            view.set_state("x", "y")


def test_request_log_durable_sorted_and_pruned(db: Path) -> None:
    log = SqliteRequestLog(db)
    for t in (1000.0, 1010.0, 1005.0):
        log.record(t)
    assert log.since(1004.0) == [1005.0, 1010.0]
    log.close()
    log = SqliteRequestLog(db)  # a restart keeps the rate limit
    assert log.since(0.0) == [1000.0, 1005.0, 1010.0]
    for i in range(200):
        log.record(10_000.0 + i)  # more than an hour later: the old starts go
    assert log.since(0.0)[0] >= 10_000.0
    log.close()
    with SqliteStore(db) as queue:  # shares the file with the queue
        assert queue.counts() == {}


def _bad_plan(name: str, details: list[str]) -> list[str]:
    """The plan lines that would mean a full scan (or a sort of a whole set)."""
    bad = []
    for detail in details:
        scan = re.match(r"SCAN (jobs|output_claims|request_log|state)\b", detail)
        if scan and not (name == "counts" and "USING COVERING INDEX" in detail):
            bad.append(detail)
        if "TEMP B-TREE" in detail:
            bad.append(detail)
    return bad


def test_hot_queries_use_indexes(q: SqliteStore, clock: FakeClock) -> None:
    q.enqueue_many(found(f"{i}.jpg", folder=f"f{i % 7}", size=i) for i in range(20_000))
    for _ in range(3000):
        job = q.claim(60)
        assert job is not None
        q.complete(job, [])
    for _ in range(500):
        job = q.claim(60)
        assert job is not None
        q.retry_later(job, clock.t + 60, "x")
    for analyzed in (False, True):  # a fresh database, and one with planner statistics
        if analyzed:
            q._conn.execute("ANALYZE")
        plans = {}
        for name, (sql, params) in query_plans().items():
            rows = q._conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            plans[name] = [row[3] for row in rows]
        bad = {name: _bad_plan(name, details) for name, details in plans.items()}
        assert not any(bad.values()), (analyzed, bad)
    # the checker itself catches a plain scan
    scan = q._conn.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE sha256 = 'x'")
    assert _bad_plan("claim", [row[3] for row in scan])


def test_enqueue_100k_rows(q: SqliteStore) -> None:
    queued = q.enqueue_many(found(f"d{i // 1000}/{i}.jpg", inode=i) for i in range(100_000))
    assert len(queued) == 100_000
    assert q.counts()["products"]["pending"] == 100_000
    assert q.is_unchanged("products", "d99/99999.jpg", 100, 1, 99_999)


def test_threads_and_a_reader_never_see_database_locked(q: SqliteStore, db: Path) -> None:
    batches, per_batch = 10, 50
    errors: list[BaseException] = []
    enqueued = threading.Event()
    processed: list[int] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    @guarded
    def enqueue() -> None:
        for b in range(batches):
            q.enqueue_many(found(f"{b}/{i}.jpg", folder=f"f{b % 3}") for i in range(per_batch))
        enqueued.set()

    @guarded
    def work() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = q.claim(60)
            if job is None:
                if enqueued.is_set():
                    return
                continue
            q.set_sha256(job, "0" * 64)
            q.complete(job, [f"{job.relpath}.png"])
            processed.append(job.id)

    def busy() -> bool:
        return not errors and (not enqueued.is_set() or len(processed) < batches * per_batch)

    @guarded
    def read() -> None:  # the status command: another connection, read-only
        with SqliteStore.open_readonly(db) as view:
            while busy():
                view.counts()
                view.oldest_pending_queued_at()

    @guarded
    def pace() -> None:  # the pacer: a second writer connection to the same file
        log = SqliteRequestLog(db)
        try:
            for _ in range(300):  # a pacer's worth of starts, interleaved with the rest
                if not busy():
                    break
                log.record(time.time())
        finally:
            log.close()

    threads = [threading.Thread(target=f) for f in (enqueue, work, read, pace)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert errors == []
    assert len(processed) == batches * per_batch
    totals = {s: sum(c[s] for c in q.counts().values()) for s in STATES}
    assert totals["done"] == batches * per_batch


def test_enqueued_rows_survive_sigkill(db: Path) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from bgsyncd.storage.contract import Found
        from bgsyncd.storage.sqlite.store import SqliteStore
        q = SqliteStore(Path({str(db)!r}))
        q.enqueue_many(Found("products", f"{{i}}.jpg", 1, 1, i) for i in range(500))
        print("ok", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], check=False, capture_output=True, text=True, timeout=60,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr
    assert proc.returncode == -9
    assert os.path.exists(db)
    with SqliteStore(db) as queue:
        assert queue.counts()["products"]["pending"] == 500
        assert queue.is_unchanged("products", "499.jpg", 1, 1, 499)


def test_claim_skips_folders_that_are_not_configured(tmp_path: Path) -> None:
    q = SqliteStore(tmp_path / "q.sqlite3")
    q.enqueue_many([Found(name, "a.jpg", 1, 1, i) for i, name in enumerate("abcd")])
    allowed = {"b", "d"}
    claimed = [q.claim(60, allowed) for _ in range(3)]
    assert [j.folder for j in claimed if j] == ["b", "d"]
    assert claimed[2] is None
    assert q.claim(60, set()) is None
    assert q.next_ready_at(allowed) is None  # what is left is in other folders
    assert q.next_ready_at({"a"}) is not None
    assert q.claim(60) is not None  # without a filter, the rest are there
    q.close()


def test_the_status_page_s_recent_jobs_read_an_index_not_the_table(q: SqliteStore) -> None:
    q.enqueue_many(found(f"{i}.jpg", inode=i) for i in range(2000))
    q._conn.execute("ANALYZE")
    plan = q._conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs ORDER BY updated_at DESC, id DESC LIMIT 50"
    ).fetchall()
    details = " ".join(str(row[3]) for row in plan)
    assert "jobs_by_updated" in details and "TEMP B-TREE" not in details, details
    assert [r.job.relpath for r in q.recent(3)] == ["1999.jpg", "1998.jpg", "1997.jpg"]
