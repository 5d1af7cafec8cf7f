"""One contract, two engines: the queue on a real SQLite file and a real PostgreSQL.

Every test here runs against both backends and asserts only what the
contract promises, so a daemon cannot tell which one it runs on (SPEC §8).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgsyncd.storage.contract import Found, Job, LeaseLost, QueueError, Store
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.helpers import wait_until
from tests.support.jobs import find_job, get_job


def _found(
    relpath: str, folder: str = "f", size: int = 10, mtime_ns: int = 1, inode: int = 7
) -> Found:
    return Found(folder, relpath, size, mtime_ns, inode)


def _claimed(store: Store, folders: list[str] | None = None) -> Job:
    """Claim the next job, which the test knows is there."""
    job = store.claim(60, folders)
    assert job is not None
    return job


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Store]]:
    """A factory of queue handles on ONE database (a second handle: another host)."""
    opened: list[Store] = []
    if backend == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        from bgsyncd.storage.postgres.store import PostgresStore

        counter = itertools.count(1)

        def make() -> Store:
            store = PostgresStore(dsn, host_id=f"host-{next(counter)}")
            opened.append(store)
            return store
    else:

        def make() -> Store:
            store = SqliteStore(tmp_path / "queue.sqlite3")
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def open_view(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Store]]:
    """Open the read-only view ``status`` uses on the same database."""
    opened: list[Store] = []

    def view() -> Store:
        store: Store
        if backend == "postgresql":
            from bgsyncd.storage.postgres.store import PostgresStore

            store = PostgresStore.open_readonly(request.getfixturevalue("pg_dsn"))
        else:
            store = SqliteStore.open_readonly(tmp_path / "queue.sqlite3")
        opened.append(store)
        return store

    yield view
    for store in opened:
        store.close()


@pytest.fixture
def bump_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[int], None]:
    """Write a schema version newer than this bgsyncd knows into the store's database."""

    def bump(version: int) -> None:
        if backend == "postgresql":
            import psycopg

            with psycopg.connect(request.getfixturevalue("pg_dsn"), autocommit=True) as conn:
                conn.execute("UPDATE bgsyncd_schema SET version = %s", (version,))
        else:
            import sqlite3

            db = sqlite3.connect(tmp_path / "queue.sqlite3")
            db.execute(f"PRAGMA user_version = {version}")
            db.close()

    return bump


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()


def test_new_and_changed_files_are_queued_and_unchanged_ones_are_not(store: Store) -> None:
    assert [f.relpath for f in store.enqueue_many([_found("a.jpg"), _found("b.jpg")])] == [
        "a.jpg",
        "b.jpg",
    ]
    assert store.is_unchanged("f", "a.jpg", 10, 1, 7)
    assert not store.is_unchanged("f", "a.jpg", 11, 1, 7)
    assert store.enqueue_many([_found("a.jpg")]) == []
    assert [f.size for f in store.enqueue_many([_found("a.jpg", size=11)])] == [11]
    assert store.counts() == {
        "f": {"pending": 2, "in_flight": 0, "retry_wait": 0, "done": 0, "quarantined": 0}
    }


def test_a_job_in_flight_is_not_queued_again_when_its_file_changes(store: Store) -> None:
    store.enqueue_many([_found("a.jpg")])
    job = _claimed(store)
    assert job is not None and job.state == "in_flight"
    assert store.enqueue_many([_found("a.jpg", size=99)]) == []
    assert store.counts()["f"]["in_flight"] == 1


def test_claims_go_round_robin_over_folders_and_oldest_first_within_one(store: Store) -> None:
    store.enqueue_many([_found("a1", "a"), _found("a2", "a"), _found("a3", "a")])
    store.enqueue_many([_found("b1", "b")])
    store.enqueue_many([_found("c1", "c")])
    taken = []
    while (job := store.claim(60)) is not None:
        taken.append(job.relpath)
    assert taken == ["a1", "b1", "c1", "a2", "a3"]


def test_claims_keep_to_the_folders_asked_for(store: Store) -> None:
    store.enqueue_many([_found("x", "gone"), _found("y", "here")])
    job = _claimed(store, ["here"])
    assert job is not None and job.relpath == "y"
    assert store.claim(60, ["here"]) is None
    assert store.next_ready_at(["here"]) is None
    assert store.next_ready_at(["gone"]) is not None


def test_a_retry_waits_for_its_time_and_counts_attempts(store: Store) -> None:
    store.enqueue_many([_found("a.jpg")])
    job = _claimed(store)
    assert store.retry_later(job, time.time() + 3600, "boom") == 1
    assert store.claim(60) is None
    later = store.next_ready_at()
    assert later is not None and later > time.time() + 3000
    assert store.counts()["f"]["retry_wait"] == 1
    # Due now: promoted by the next claim.
    store.enqueue_many([_found("b.jpg")])
    job = _claimed(store)
    assert job.relpath == "b.jpg" and store.retry_later(job, time.time() - 1, "boom") == 1
    job = _claimed(store)
    assert store.retry_later(job, time.time() - 1, "again", resend=True) == 2
    again = _claimed(store)
    assert again is not None and again.id == job.id and again.attempts == 2 and again.resend


def test_the_version_a_claim_read_is_the_one_known(store: Store) -> None:
    """Queued as one version, read as a newer one (rewritten before the claim): once
    done, finding the version that was read again is nothing new; another is."""
    store.enqueue_many([Found("f", "a.jpg", 10, 1, 5)])
    job = _claimed(store)
    store.record_version(job, 20, 2, 5)
    store.complete(job, ["a.png"])
    assert store.is_unchanged("f", "a.jpg", 20, 2, 5)
    assert store.enqueue_many([Found("f", "a.jpg", 20, 2, 5)]) == []
    assert not store.is_unchanged("f", "a.jpg", 10, 1, 5)
    done = get_job(store, job.id)
    assert done is not None and done.state == "done" and done.size == 20


def test_done_and_quarantined_jobs_keep_what_they_need(store: Store) -> None:
    store.enqueue_many([_found("a.jpg"), _found("b.jpg")])
    a, b = _claimed(store), _claimed(store)
    store.set_sha256(a, "ab" * 32)
    store.complete(a, ["a.png", "a.mask.png"])
    store.quarantine(b, "corrupt_image", "bad bytes", None, "b~2.jpg")
    counts = store.counts()["f"]
    assert (counts["done"], counts["quarantined"]) == (1, 1)
    [q] = store.quarantined()
    assert (q.relpath, q.reason, q.last_error, q.outputs) == (
        "b.jpg",
        "corrupt_image",
        "bad bytes",
        ("b~2.jpg",),
    )
    assert store.quarantined("other") == []
    assert store.requeue(q.id) is True
    assert store.requeue(q.id) is False
    assert store.counts()["f"]["pending"] == 1


def test_recover_returns_jobs_in_flight_marked_as_resends(make_store: Callable[[], Store]) -> None:
    first = make_store()
    first.enqueue_many([_found("a.jpg")])
    assert first.claim(60) is not None
    first.close()
    again = make_store()
    if hasattr(again, "host_id"):  # PostgreSQL: a host recovers its own claims
        again.host_id = "host-1"
    assert again.recover() == 1
    job = again.claim(60)
    assert job is not None and job.resend


def test_output_names_are_claimed_once_and_stay_their_owners(store: Store) -> None:
    store.enqueue_many([_found("a.jpg"), _found("a.webp")])
    a, b = _claimed(store), _claimed(store)
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.png"
    assert store.claim_output("f", b.id, iter(["a.png", "a.webp.png"])) == "a.webp.png"
    assert store.claim_output("f", a.id, iter(["a.png"])) == "a.png"
    assert store.claimed_outputs(a.id) == ["a.png"]
    store.forget(a)
    assert store.claimed_outputs(a.id) == []
    assert store.claim_output("f", b.id, iter(["a.png"])) == "a.png"
    with pytest.raises(QueueError):
        store.claim_output("f", 10**9, iter([]))


def test_output_names_are_claimed_per_tree(store: Store) -> None:
    # A folder's own outbox and each rendition's are trees of their own (SPEC §9).
    amazon, web = "/srv/amazon", "/srv/web"
    store.enqueue_many([_found("a.jpg"), _found("a.webp"), _found("q.jpg")])
    a, b, q = _claimed(store), _claimed(store), _claimed(store)
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.png"
    assert store.claim_output("f", b.id, iter(["a.png", "a.webp.png"])) == "a.webp.png"
    # b claims first in the rendition's tree: a.png is b's there, a's at home.
    assert store.claim_output("f", b.id, iter(["a.png", "a.webp.png"]), amazon) == "a.png"
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"]), amazon) == "a.jpg.png"
    assert store.claim_output("f", a.id, iter(["a.png"]), web) == "a.png"
    # An output folder in one tree takes no file name in another.
    assert store.claim_output("f", q.id, iter(["q/q.png"]), web) == "q/q.png"
    assert store.claim_output("f", q.id, iter(["q", "q.png"]), amazon) == "q"
    assert store.claimed_outputs(a.id) == ["a.png"]
    assert store.claimed_outputs(a.id, amazon) == ["a.jpg.png"]
    assert store.claimed_outputs(a.id, web) == ["a.png"]
    assert store.claimed_outputs(b.id, web) == []
    # Each tree's names stay their owners' (the same answer again), and go with the job.
    assert store.claim_output("f", b.id, iter(["a.png", "a.webp.png"]), amazon) == "a.png"
    store.forget(a)
    assert store.claimed_outputs(a.id, amazon) == []
    assert store.claim_output("f", q.id, iter(["a.jpg.png"]), amazon) == "a.jpg.png"


def test_an_inbox_folder_keeps_its_name_from_an_output_file(store: Store) -> None:
    # `a.png/` in the inbox is the folder `a.png/` in the outbox: a.jpg's
    # output cannot be the file `a.png`, whichever input is claimed first.
    store.enqueue_many([_found("a.jpg"), _found("a.png/b.jpg"), _found("x.jpg")])
    store.enqueue_many([_found("x.mask.png/deep/y.jpg")])
    a = find_job(store, "f", "a.jpg")
    b = find_job(store, "f", "a.png/b.jpg")
    x = find_job(store, "f", "x.jpg")
    assert a is not None and b is not None and x is not None
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.jpg.png"
    assert store.claim_output("f", b.id, iter(["a.png/b.png"])) == "a.png/b.png"
    assert store.claim_output("f", x.id, iter(["x.png"])) == "x.png"
    mask = iter(["x.mask.png", "x.mask~2.png"])
    assert store.claim_output("f", x.id, mask) == "x.mask~2.png"
    # Another folder's inputs take nothing here.
    store.enqueue_many([_found("c.png/d.jpg", folder="g"), _found("c.jpg")])
    c = find_job(store, "f", "c.jpg")
    assert c is not None and store.claim_output("f", c.id, iter(["c.png"])) == "c.png"
    # A name that merely starts like a folder is not inside it.
    store.enqueue_many([_found("e.png0/f.jpg"), _found("e.png-x/f.jpg"), _found("e.jpg")])
    e = find_job(store, "f", "e.jpg")
    assert e is not None and store.claim_output("f", e.id, iter(["e.png"])) == "e.png"


def test_an_output_folder_and_an_output_file_never_share_a_path(store: Store) -> None:
    store.enqueue_many([_found("a.jpg"), _found("q.jpg")])
    a = find_job(store, "f", "a.jpg")
    q = find_job(store, "f", "q.jpg")
    assert a is not None and q is not None
    # q's output goes into a folder `q/`: the file name `q` is then no output's.
    assert store.claim_output("f", q.id, iter(["q/q.png"])) == "q/q.png"
    assert store.claim_output("f", a.id, iter(["q", "a.png"])) == "a.png"
    assert store.claimed_outputs(a.id) == ["a.png"]


def test_a_folder_found_after_a_file_took_its_name_goes_to_the_next_free_name(
    store: Store,
) -> None:
    store.enqueue_many([_found("a.jpg")])
    a = find_job(store, "f", "a.jpg")
    assert a is not None
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.png"
    # The folder `a.png/` shows up later: its outputs cannot go inside the
    # file `a.png`, so the folder gets the next free name, the same for all.
    store.enqueue_many([_found("a.png/b.jpg"), _found("a.png/sub/c.jpg")])
    b = find_job(store, "f", "a.png/b.jpg")
    c = find_job(store, "f", "a.png/sub/c.jpg")
    assert b is not None and c is not None
    assert store.claim_output("f", b.id, iter(["a.png/b.png"])) == "a.png~2/b.png"
    assert store.claim_output("f", c.id, iter(["a.png/sub/c.png"])) == "a.png~2/sub/c.png"
    # Names stay their owners'.
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.png"
    assert store.claim_output("f", b.id, iter(["a.png/b.png"])) == "a.png~2/b.png"
    assert store.claimed_outputs(b.id) == ["a.png~2/b.png"]


def test_state_values_and_the_oldest_open_job(store: Store) -> None:
    assert store.get_state("paused") is None
    store.set_state("paused", "credit_floor")
    assert store.get_state("paused") == "credit_floor"
    store.set_state("paused", None)
    assert store.get_state("paused") is None
    assert store.oldest_pending_queued_at() is None
    before = time.time()
    store.enqueue_many([_found("a.jpg")])
    oldest = store.oldest_pending_queued_at()
    assert oldest is not None and before - 5 <= oldest <= time.time() + 5


def test_a_name_that_is_not_utf8_is_a_queue_error_not_a_crash(store: Store) -> None:
    with pytest.raises(QueueError):
        store.enqueue_many([_found("caf\udce9.jpg")])
    assert store.counts() == {}


def test_two_handles_claiming_at_once_never_take_one_job_twice(
    make_store: Callable[[], Store],
) -> None:
    handles = [make_store() for _ in range(4)]
    handles[0].enqueue_many([_found(f"{i:03}.jpg", f"f{i % 3}") for i in range(60)])
    taken: list[int] = []
    lock = threading.Lock()

    def drain(store: Store) -> None:
        while True:
            try:
                job = store.claim(60)
            except QueueError:  # SQLite: busy past its timeout under contention
                continue
            if job is None:
                return
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=drain, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 60


def test_a_new_database_is_created_once_and_a_second_handle_finds_it(
    make_store: Callable[[], Store],
) -> None:
    first = make_store()
    assert first.created is True
    first.enqueue_many([_found("a.jpg")])
    second = make_store()
    assert second.created is False
    assert find_job(second, "f", "a.jpg") is not None


def test_a_newer_schema_is_refused_with_a_clear_message(
    make_store: Callable[[], Store], bump_schema: Callable[[int], None]
) -> None:
    make_store().close()
    bump_schema(99)
    with pytest.raises(QueueError, match=r"schema version 99.*upgrade bgsyncd"):
        make_store()


def test_an_open_store_is_not_lost_and_is_writable(store: Store) -> None:
    assert store.lost() is None
    store.check_writable()
    store.check_writable()
    assert store.lost() is None


def test_a_queued_file_is_recorded_pending_and_forget_deletes_it(store: Store) -> None:
    assert len(store.enqueue_many([_found("a.jpg", size=12, mtime_ns=5, inode=9)])) == 1
    job = find_job(store, "f", "a.jpg")
    assert job is not None
    assert (job.folder, job.relpath, job.size, job.mtime_ns, job.inode) == ("f", "a.jpg", 12, 5, 9)
    assert (job.state, job.attempts, job.resend, job.sha256, job.outputs) == (
        "pending",
        0,
        False,
        None,
        (),
    )
    assert get_job(store, job.id) == job
    assert find_job(store, "f", "b.jpg") is None and find_job(store, "g", "a.jpg") is None
    store.forget(_claimed(store))
    assert get_job(store, job.id) is None and find_job(store, "f", "a.jpg") is None


def test_adopt_records_done_with_its_names_and_refuses_a_known_path_or_a_taken_name(
    store: Store,
) -> None:
    assert store.adopt(_found("a.jpg"), ["a.png", "a.mask.png"]) is True
    job = find_job(store, "f", "a.jpg")
    assert job is not None and job.state == "done" and job.outputs == ("a.png", "a.mask.png")
    assert store.claimed_outputs(job.id) == ["a.mask.png", "a.png"]
    assert store.adopt(_found("a.jpg"), ["other.png"]) is False  # the path is known
    # b wants a name a owns: nothing of b is recorded.
    assert store.adopt(_found("b.jpg"), ["b.png", "a.png"]) is False
    assert find_job(store, "f", "b.jpg") is None
    store.enqueue_many([_found("c.jpg")])
    c = _claimed(store)
    assert store.claim_output("f", c.id, iter(["b.png", "c.png"])) == "b.png"  # b.png stayed free
    assert store.counts()["f"]["done"] == 1 and store.claim(60) is None


def test_defer_waits_without_counting_an_attempt(store: Store) -> None:
    store.enqueue_many([_found("a.jpg")])
    job = _claimed(store)
    store.defer(job, time.time() + 3600, "not quiet yet")
    deferred = get_job(store, job.id)
    assert deferred is not None
    assert (deferred.state, deferred.attempts, deferred.last_error) == (
        "retry_wait",
        0,
        "not quiet yet",
    )
    assert store.claim(60) is None
    at = store.next_ready_at()
    assert at is not None and time.time() + 3500 < at < time.time() + 3700
    store.enqueue_many([_found("b.jpg")])
    job = _claimed(store)
    store.defer(job, time.time() - 1, "quiet now")
    again = _claimed(store)
    assert again is not None and again.id == job.id and again.attempts == 0


def test_release_puts_a_job_back_without_an_attempt_and_marks_a_possible_resend(
    store: Store,
) -> None:
    store.enqueue_many([_found("a.jpg")])
    job = _claimed(store)
    store.release(job)
    again = _claimed(store)
    assert again.id == job.id and again.attempts == 0 and not again.resend
    store.release(again, resend=True)
    third = _claimed(store)
    assert third.id == job.id and third.resend


def test_next_ready_at_is_none_when_empty_and_now_when_work_is_pending(store: Store) -> None:
    assert store.next_ready_at() is None
    store.enqueue_many([_found("a.jpg")])
    before = time.time()
    at = store.next_ready_at()
    assert at is not None and before - 1 <= at <= time.time() + 1
    assert store.next_ready_at(["f"]) is not None and store.next_ready_at(["g"]) is None


def test_quarantined_jobs_list_oldest_first_across_folders(store: Store) -> None:
    store.enqueue_many([_found("b1", "b")])
    store.enqueue_many([_found("a1", "a")])
    store.enqueue_many([_found("a2", "a")])
    while (job := store.claim(60)) is not None:
        store.quarantine(job, "corrupt_image", f"bad {job.relpath}", 415)
    listed = store.quarantined()
    assert [(j.folder, j.relpath) for j in listed] == [("a", "a1"), ("a", "a2"), ("b", "b1")]
    assert [j.relpath for j in store.quarantined("a")] == ["a1", "a2"]
    assert listed[0].http_status == 415 and listed[0].outputs == ()
    assert store.oldest_pending_queued_at() is None  # quarantined jobs are not open


def test_output_claims_racing_for_one_name_give_it_to_one_job(
    make_store: Callable[[], Store],
) -> None:
    handles = [make_store() for _ in range(6)]
    handles[0].enqueue_many([_found(f"x.{i}.jpg") for i in range(6)])
    jobs = [j for i in range(6) if (j := find_job(handles[0], "f", f"x.{i}.jpg")) is not None]
    assert len(jobs) == 6
    start = threading.Barrier(len(handles))
    got: dict[int, str] = {}

    def race(store: Store, job_id: int) -> None:
        start.wait(10)
        for _ in range(50):
            try:
                got[job_id] = store.claim_output("f", job_id, iter(["x.png", f"x.{job_id}.png"]))
                return
            except QueueError:  # SQLite: busy past its timeout under contention
                continue

    pairs = zip(handles, jobs, strict=True)
    threads = [threading.Thread(target=race, args=(h, j.id)) for h, j in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 6
    winners = [job_id for job_id, name in got.items() if name == "x.png"]
    assert len(winners) == 1
    for job_id, name in got.items():
        assert handles[0].claimed_outputs(job_id) == [name]
        assert job_id in winners or name == f"x.{job_id}.png"


def test_concurrent_claims_limited_to_folders_take_only_those_and_each_once(
    make_store: Callable[[], Store],
) -> None:
    handles = [make_store() for _ in range(4)]
    handles[0].enqueue_many([_found(f"{i:03}.jpg", f"f{i % 3}") for i in range(60)])
    taken: list[tuple[int, str]] = []
    lock = threading.Lock()

    def drain(store: Store) -> None:
        while True:
            try:
                job = store.claim(60, ["f0", "f1"])
            except QueueError:
                continue
            if job is None:
                return
            with lock:
                taken.append((job.id, job.folder))

    threads = [threading.Thread(target=drain, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [job_id for job_id, _ in taken]
    assert len(ids) == len(set(ids)) == 40
    assert {folder for _, folder in taken} == {"f0", "f1"}
    assert handles[0].counts()["f2"]["pending"] == 20


def test_a_read_only_view_answers_beside_a_writer_and_refuses_writes(
    store: Store, open_view: Callable[[], Store]
) -> None:
    store.enqueue_many([_found("a.jpg"), _found("b.jpg")])
    store.set_state("paused", "credit_floor")
    view = open_view()
    assert view.counts() == store.counts()
    assert view.get_state("paused") == "credit_floor"
    assert find_job(view, "f", "a.jpg") == find_job(store, "f", "a.jpg")
    assert view.created is False and view.lost() is None
    with pytest.raises(QueueError):
        view.enqueue_many([_found("c.jpg")])
    with pytest.raises(QueueError):
        view.set_state("paused", None)
    assert store.get_state("paused") == "credit_floor" and find_job(store, "f", "c.jpg") is None


def test_jobs_waiting_on_a_retry_are_listed_soonest_first(store: Store) -> None:
    store.enqueue_many([_found("late.jpg"), _found("soon.jpg"), _found("done.jpg")])
    jobs = {j.relpath: j for j in (_claimed(store), _claimed(store), _claimed(store))}
    store.retry_later(jobs["late.jpg"], time.time() + 7200, "later")
    store.retry_later(jobs["soon.jpg"], time.time() + 3600, "sooner")
    store.complete(jobs["done.jpg"], ["done.png"])
    assert [j.relpath for j in store.retry_waiting()] == ["soon.jpg", "late.jpg"]


# -- fencing: a stale claim changes nothing (SPEC §8) ------------------------------------------


@pytest.fixture
def take_over(backend: str) -> Callable[[Store, Job], Job]:
    """Another handle takes ``job`` over, as the engine allows, and returns its own claim.

    PostgreSQL: the job's (short) lease runs out and the other host's heartbeat
    hands it back (``pgfleet.Hosts``). SQLite: the other handle is a restart,
    which gives back every job in flight (``recover``).
    """

    def take(taker: Store, job: Job) -> Job:
        if backend == "postgresql":
            from bgsyncd.fleet.hosts import Hosts
            from bgsyncd.storage.postgres.store import PostgresStore

            assert isinstance(taker, PostgresStore)
            hosts = Hosts(taker, lease_seconds=0.2)
            wait_until(lambda: hosts.take_over_expired([job.folder]) == 1, 10, what="expiry")
        else:
            assert taker.recover() == 1
        taken = taker.claim(60)
        assert taken is not None and taken.id == job.id and taken.resend
        return taken

    return take


STALE_CHANGES: dict[str, Callable[[Store, Job], object]] = {
    "complete": lambda s, job: s.complete(job, ["stale.png"]),
    "retry_later": lambda s, job: s.retry_later(job, time.time(), "stale", resend=True),
    "release": lambda s, job: s.release(job, resend=True),
    "defer": lambda s, job: s.defer(job, time.time(), "stale"),
    "quarantine": lambda s, job: s.quarantine(job, "corrupt_image", "stale", None, "x.jpg"),
    "forget": lambda s, job: s.forget(job),
    "set_sha256": lambda s, job: s.set_sha256(job, "0" * 64),
    "record_version": lambda s, job: s.record_version(job, 7, 7, 7),
}


@pytest.mark.parametrize("change", sorted(STALE_CHANGES))
def test_a_stale_claim_changes_nothing_the_taker_holds(
    make_store: Callable[[], Store], take_over: Callable[[Store, Job], Job], change: str
) -> None:
    stale_host, taker = make_store(), make_store()
    stale_host.enqueue_many([_found("a.jpg")])
    stale = stale_host.claim(0.2)
    assert stale is not None and stale_host.holds(stale)
    mine = take_over(taker, stale)
    before = get_job(taker, stale.id)
    assert not stale_host.holds(stale) and taker.holds(mine)
    with pytest.raises(LeaseLost):
        STALE_CHANGES[change](stale_host, stale)
    assert get_job(taker, stale.id) == before  # not one column changed
    assert taker.holds(mine)
    taker.complete(mine, ["a.png"])  # the taker's own claim still counts
    done = get_job(taker, stale.id)
    assert done is not None and (done.state, done.outputs) == ("done", ("a.png",))


@pytest.mark.parametrize("change", sorted(STALE_CHANGES))
def test_a_job_finished_by_the_taker_stays_finished(
    make_store: Callable[[], Store], take_over: Callable[[Store, Job], Job], change: str
) -> None:
    stale_host, taker = make_store(), make_store()
    stale_host.enqueue_many([_found("a.jpg")])
    stale = stale_host.claim(0.2)
    assert stale is not None
    taker.complete(take_over(taker, stale), ["a.png"])
    finished = get_job(taker, stale.id)
    with pytest.raises(LeaseLost):
        STALE_CHANGES[change](stale_host, stale)
    assert get_job(taker, stale.id) == finished
    assert finished is not None and finished.state == "done"
    assert taker.claim(60) is None and stale_host.claim(60) is None  # nothing to send again
    assert not stale_host.holds(stale)


def test_a_claim_given_back_holds_nothing_and_a_new_claim_of_the_same_job_is_its_own(
    store: Store,
) -> None:
    store.enqueue_many([_found("a.jpg")])
    first = _claimed(store)
    store.release(first)
    assert not store.holds(first)
    second = _claimed(store)
    assert second.id == first.id and second.claim_token != first.claim_token
    with pytest.raises(LeaseLost):  # the earlier run of the same host is stale too
        store.complete(first, ["a.png"])
    assert store.holds(second) and not store.holds(first)
    store.complete(second, ["a.png"])
    with pytest.raises(LeaseLost):  # a job never claimed, or no longer, changes nothing
        store.release(second)


def test_a_lease_run_out_that_no_one_took_over_still_holds(store: Store) -> None:
    """A host that stalled past its lease in a folder no other host serves finishes its job."""
    store.enqueue_many([_found("a.jpg")])
    job = store.claim(0.05)
    assert job is not None
    time.sleep(0.2)
    assert store.holds(job)
    store.complete(job, ["a.png"])
    done = get_job(store, job.id)
    assert done is not None and done.state == "done"


def test_a_job_is_claimed_by_its_path_only_when_it_may_start_now(store: Store) -> None:
    store.enqueue_many([_found("a.jpg"), _found("b.jpg"), _found("c.jpg")])
    job = store.claim_path("f", "b.jpg", 60)
    assert job is not None and (job.relpath, job.state) == ("b.jpg", "in_flight")
    assert store.holds(job)  # a claim by path is fenced like any claim
    assert store.claim_path("f", "b.jpg", 60) is None  # in flight already: never twice
    assert store.claim_path("f", "nope.jpg", 60) is None
    assert store.claim_path("other", "a.jpg", 60) is None
    store.defer(job, time.time() + 3600, "not quiet yet")
    assert store.claim_path("f", "b.jpg", 60) is None  # its wait is not over
    quiet = store.claim_path("f", "c.jpg", 60)
    assert quiet is not None
    store.defer(quiet, time.time() - 1, "quiet now")
    again = store.claim_path("f", "c.jpg", 60)
    assert again is not None and again.id == quiet.id and again.next_attempt_at is None
    assert again.claim_token != quiet.claim_token
    store.complete(again, ["c.png"])
    assert store.claim_path("f", "c.jpg", 60) is None  # done
    first = store.claim(60)
    assert first is not None and first.relpath == "a.jpg"
    assert store.counts()["f"] == {
        "pending": 0, "in_flight": 1, "retry_wait": 1, "done": 1, "quarantined": 0,
    }  # fmt: skip


def test_the_status_pages_reads_list_recent_jobs_newest_first_and_count_done_ones(
    store: Store,
) -> None:
    """recent, done_since and last_done (SPEC §11), on this host's clock in both engines."""
    before = time.time() - 1.0
    store.enqueue_many([_found("a.jpg"), _found("b.jpg"), _found("c.jpg", folder="g")])
    first = _claimed(store)
    store.complete(first, ["a.png"])
    second = _claimed(store)
    store.quarantine(second, "corrupt_image", "broken", None, location=second.relpath)
    after = time.time() + 1.0

    recent = store.recent(10)
    assert [r.job.id for r in recent][:2] == [second.id, first.id]
    assert {r.job.relpath for r in recent} == {"a.jpg", "b.jpg", "c.jpg"}
    assert recent[0].job.state == "quarantined" and recent[1].job.state == "done"
    assert all(before <= r.at <= after for r in recent)
    assert len(store.recent(1)) == 1

    assert store.done_since(before) == {first.folder: 1}
    assert store.done_since(after) == {}
    done_at = store.last_done()
    assert set(done_at) == {first.folder}
    assert before <= done_at[first.folder] <= after
