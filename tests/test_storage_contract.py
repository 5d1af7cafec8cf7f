"""One contract, two engines: the queue on a real SQLite file and a real PostgreSQL.

Every test here runs against both backends and asserts only what the
contract promises, so a daemon cannot tell which one it runs on (SPEC §8).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.queue import Found, Queue, QueueError


def _found(relpath: str, folder: str = "f", size: int = 10, mtime_ns: int = 1, inode: int = 7):
    return Found(folder, relpath, size, mtime_ns, inode)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of queue handles on ONE database (a second handle: another host)."""
    opened: list[Any] = []
    if backend == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        from bgsyncd.pgqueue import PgQueue

        counter = itertools.count(1)

        def make() -> Any:
            store = PgQueue(dsn, host_id=f"host-{next(counter)}")
            opened.append(store)
            return store
    else:

        def make() -> Any:
            store = Queue(tmp_path / "queue.sqlite3")
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Any) -> Any:
    return make_store()


def test_new_and_changed_files_are_queued_and_unchanged_ones_are_not(store):
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


def test_a_job_in_flight_is_not_queued_again_when_its_file_changes(store):
    store.enqueue_many([_found("a.jpg")])
    job = store.claim(60)
    assert job is not None and job.state == "in_flight"
    assert store.enqueue_many([_found("a.jpg", size=99)]) == []
    assert store.counts()["f"]["in_flight"] == 1


def test_claims_go_round_robin_over_folders_and_oldest_first_within_one(store):
    store.enqueue_many([_found("a1", "a"), _found("a2", "a"), _found("a3", "a")])
    store.enqueue_many([_found("b1", "b")])
    store.enqueue_many([_found("c1", "c")])
    taken = []
    while (job := store.claim(60)) is not None:
        taken.append(job.relpath)
    assert taken == ["a1", "b1", "c1", "a2", "a3"]


def test_claims_keep_to_the_folders_asked_for(store):
    store.enqueue_many([_found("x", "gone"), _found("y", "here")])
    job = store.claim(60, ["here"])
    assert job is not None and job.relpath == "y"
    assert store.claim(60, ["here"]) is None
    assert store.next_ready_at(["here"]) is None
    assert store.next_ready_at(["gone"]) is not None


def test_a_retry_waits_for_its_time_and_counts_attempts(store):
    store.enqueue_many([_found("a.jpg")])
    job = store.claim(60)
    assert store.retry_later(job.id, time.time() + 3600, "boom") == 1
    assert store.claim(60) is None
    later = store.next_ready_at()
    assert later is not None and later > time.time() + 3000
    assert store.counts()["f"]["retry_wait"] == 1
    # Due now: promoted by the next claim.
    store.release(job.id)
    job = store.claim(60)
    assert store.retry_later(job.id, time.time() - 1, "again", resend=True) == 2
    again = store.claim(60)
    assert again is not None and again.id == job.id and again.attempts == 2 and again.resend


def test_done_and_quarantined_jobs_keep_what_they_need(store):
    store.enqueue_many([_found("a.jpg"), _found("b.jpg")])
    a, b = store.claim(60), store.claim(60)
    store.set_sha256(a.id, "ab" * 32)
    store.complete(a.id, ["a.png", "a.mask.png"])
    store.quarantine(b.id, "corrupt_image", "bad bytes", None, "b~2.jpg")
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


def test_recover_returns_jobs_in_flight_marked_as_resends(make_store):
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


def test_output_names_are_claimed_once_and_stay_their_owners(store):
    store.enqueue_many([_found("a.jpg"), _found("a.webp")])
    a, b = store.claim(60), store.claim(60)
    assert store.claim_output("f", a.id, iter(["a.png", "a.jpg.png"])) == "a.png"
    assert store.claim_output("f", b.id, iter(["a.png", "a.webp.png"])) == "a.webp.png"
    assert store.claim_output("f", a.id, iter(["a.png"])) == "a.png"
    assert store.claimed_outputs(a.id) == ["a.png"]
    store.forget(a.id)
    assert store.claimed_outputs(a.id) == []
    assert store.claim_output("f", b.id, iter(["a.png"])) == "a.png"
    with pytest.raises(QueueError):
        store.claim_output("f", 10**9, iter([]))


def test_state_values_and_the_oldest_open_job(store):
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


def test_a_name_that_is_not_utf8_is_a_queue_error_not_a_crash(store):
    with pytest.raises(QueueError):
        store.enqueue_many([_found("caf\udce9.jpg")])
    assert store.counts() == {}


def test_two_handles_claiming_at_once_never_take_one_job_twice(make_store):
    handles = [make_store() for _ in range(4)]
    handles[0].enqueue_many([_found(f"{i:03}.jpg", f"f{i % 3}") for i in range(60)])
    taken: list[int] = []
    lock = threading.Lock()

    def drain(store: Any) -> None:
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
