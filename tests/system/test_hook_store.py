"""Hooks in the store, on a real SQLite file and a real PostgreSQL: recorded with the
job's transition (never without it), claimed by one claimer at a time, deleted once."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgsyncd.storage.contract import Found, HookEvent, LeaseLost, Store
from bgsyncd.storage.sqlite.store import SqliteStore


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []
    counter = itertools.count(1)

    def make() -> Store:
        store: Store
        if request.param == "postgresql":
            from bgsyncd.storage.postgres.store import PostgresStore

            store = PostgresStore(request.getfixturevalue("pg_dsn"), host_id=f"h{next(counter)}")
        else:
            store = SqliteStore(tmp_path / "q.sqlite3")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _hook(event_id: str, kind: str = "command") -> HookEvent:
    return HookEvent(event_id, "f", kind, '{"event": "done"}')


def test_hooks_come_with_the_transition_and_go_once_delivered(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.enqueue_many([Found("f", "a.jpg", 1, 1, 1), Found("f", "b.jpg", 1, 1, 2)])
    a = store.claim(60)
    b = store.claim(60)
    assert a is not None and b is not None
    store.complete(a, ["a.png"], [_hook("e-a"), _hook("e-a", "webhook")])
    store.quarantine(b, "corrupt_image", "bad", None, "b.jpg", [_hook("e-b")])
    with pytest.raises(LeaseLost):  # a refused transition records nothing
        store.complete(a, ["a.png"], [_hook("e-lost")])
    assert store.hooks_pending() == 3
    other = make_store()  # another host (or handle) on the same database
    first = store.claim_hooks(2, 60, ["f"])
    assert [h.event.event_id for h in first] == ["e-a", "e-a"]
    rest = other.claim_hooks(5, 60, ["f"])
    assert [h.event.event_id for h in rest] == ["e-b"]  # never one already claimed
    assert store.claim_hooks(5, 60, ["f"]) == [] and other.claim_hooks(5, 60, ["f"]) == []
    for hook in first:
        store.hook_delivered(hook)
    other.hook_failed(rest[0], at=0.0)  # due again at once, one try counted
    (again,) = store.claim_hooks(5, 60, ["f"])
    assert again.event.event_id == "e-b" and again.attempts == 1
    other.hook_delivered(rest[0])  # a stale claim changes nothing
    assert store.hooks_pending() == 1
    store.drop_hook(again)
    assert store.hooks_pending() == 0


def test_a_dead_claimers_hooks_are_given_back_at_its_start(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.enqueue_many([Found("f", "a.jpg", 1, 1, 1)])
    job = store.claim(60)
    assert job is not None
    store.complete(job, [], [_hook("e-1")])
    assert len(store.claim_hooks(5, 600, ["f"])) == 1  # then this process dies
    assert store.claim_hooks(5, 600, ["f"]) == []
    assert store.release_hooks() == 1
    (hook,) = store.claim_hooks(5, 600, ["f"])
    assert hook.event.event_id == "e-1"


def test_a_host_claims_only_the_hooks_of_the_folders_it_serves(
    make_store: Callable[[], Store],
) -> None:
    # Host A serves its private folder "a"; host B serves "b" only. A hook of "a"
    # taken by B would be dropped there (no such folder) or run on the wrong machine.
    a_host = make_store()
    b_host = make_store()
    a_host.enqueue_many([Found("a", "x.jpg", 1, 1, 1)])
    job = a_host.claim(60, ["a"])
    assert job is not None
    a_host.complete(job, ["x.png"], [HookEvent("e-a", "a", "command", '{"event": "done"}')])
    assert b_host.claim_hooks(5, 60, ["b"]) == []
    assert b_host.claim_hooks(5, 60, []) == []
    (hook,) = a_host.claim_hooks(5, 60, ["b", "a"])
    assert hook.event.event_id == "e-a"
