"""Hostile folders: symlink swaps mid-operation, 255-byte names, a lost queue (issue 9).

Real files, real SQLite, the emulator over loopback HTTP, real daemons; the
swaps are real ``renameat2(RENAME_EXCHANGE)`` calls in a tight loop.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgsyncd.api.client import Client
from bgsyncd.config.schema import FolderSettings
from bgsyncd.emulator import Emulator
from bgsyncd.inbox.adoption import Adopter
from bgsyncd.jobs.worker import Worker, WorkerConfig
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.contract import Found
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import (
    TEST_KEY,
)
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import FakeClock, exchange, product_image
from tests.support.jobs import find_job


class Swapper:
    """Swaps each real folder with a symlink to an outside folder, over and over."""

    def __init__(self, pairs: list[tuple[Path, Path]]) -> None:
        self._pairs = [(os.fsencode(a), os.fsencode(b)) for a, b in pairs]
        self._paths = pairs
        self._stop = threading.Event()
        self.swaps = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _exchange(self, a: bytes, b: bytes) -> None:
        exchange(a, b)
        self.swaps += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            for a, b in self._pairs:
                self._exchange(a, b)

    def __enter__(self) -> Swapper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # Put every real folder back where it belongs.
        for real, link in self._paths:
            if real.is_symlink():
                self._exchange(os.fsencode(real), os.fsencode(link))
            assert not real.is_symlink() and link.is_symlink()


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (not following links) with its sha256."""
    out = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath, name)
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def client(emulator: Emulator) -> Iterator[Client]:
    with Client(emulator.url, TEST_KEY, 10) as opened:
        yield opened


def _worker(
    tmp_path: Path,
    queue: SqliteStore,
    client: Client,
    folders: dict[str, FolderSettings],
    clock: FakeClock,
) -> Worker:
    config = WorkerConfig(
        folders=folders,
        max_upload_bytes=10 * 1024 * 1024,
        max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.1,
    )
    cache = ResultCache(tmp_path / "cache", 0)
    return Worker(queue, cache, Recorder(), config, lambda: client, clock=clock)


def _enqueue_all(queue: SqliteStore, name: str, inbox: Path) -> int:
    found = []
    for path in inbox.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            rel = path.relative_to(inbox).as_posix()
            found.append(Found(name, rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return len(queue.enqueue_many(found))


@pytest.fixture
def hostile(
    tmp_path: Path,
) -> Iterator[tuple[dict[str, FolderSettings], list[tuple[Path, Path]], Path]]:
    """Two folders (delete after success; move to done) and one outside folder per subfolder."""
    outside = tmp_path / "outside"
    folders = {}
    pairs = []
    for name, after in (("del", "delete"), ("mov", "move")):
        base = tmp_path / name
        f = FolderSettings(
            name=name,
            inbox=base / "inbox",
            outbox=base / "outbox",
            quarantine=base / "quarantine",
            done=base / "done" if after == "move" else None,
            after_success=after,
            output="both",
        )
        folders[name] = f
        roots = [("inbox", f.inbox), ("outbox", f.outbox), ("quarantine", f.quarantine)]
        if f.done is not None:
            roots.append(("done", f.done))
        for kind, root in roots:
            (root / "sub").mkdir(parents=True)
            target = outside / name / kind
            target.mkdir(parents=True)
            # Names an attacker would want us to hit: the inputs' and the outputs'.
            for i in range(40):
                (target / f"p{i}.jpg").write_bytes(product_image(50 + i % 7, 40))
                (target / f"p{i}.png").write_bytes(b"outside output %d" % i)
                (target / f"p{i}.mask.png").write_bytes(b"outside mask %d" % i)
                (target / f"bad{i}.jpg").write_bytes(b"outside bad %d" % i)
            link = tmp_path / "links" / name / kind
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
            pairs.append((root / "sub", link))
        for i in range(40):
            (f.inbox / "sub" / f"p{i}.jpg").write_bytes(product_image(64 + i, 48))
            # Quarantine-bound: not an image at all.
            (f.inbox / "sub" / f"bad{i}.jpg").write_bytes(b"not an image %d" % i)
    yield folders, pairs, outside


def test_symlink_swaps_under_every_folder_never_touch_anything_outside(
    tmp_path: Path,
    emulator: Emulator,
    client: Client,
    hostile: tuple[dict[str, FolderSettings], list[tuple[Path, Path]], Path],
) -> None:
    folders, pairs, outside = hostile
    before = _snapshot(outside)
    outside_hashes = set(before.values())
    clock = FakeClock(1_000_000.0)
    queue = SqliteStore(tmp_path / "q.sqlite3", clock=clock)
    worker = _worker(tmp_path, queue, client, folders, clock)
    for name, f in folders.items():
        assert _enqueue_all(queue, name, f.inbox) == 80
    processed = 0
    with Swapper(pairs) as swapper:
        while True:
            job = queue.claim(60)
            if job is None:
                if queue.next_ready_at() is None:
                    break
                clock.advance(10)  # due retries come back without a real wait
                continue
            worker.process(job)
            processed += 1
            assert processed < 5000, "the queue never drained"
        swaps = swapper.swaps
    assert swaps >= 1000, f"only {swaps} swaps: the race was not exercised"

    after = _snapshot(outside)
    assert sorted(after) == sorted(before), "files appeared in or vanished from outside"
    changed = [rel for rel in before if after[rel] != before[rel]]
    assert changed == [], f"outside files were modified: {changed[:5]}"
    # Nothing outside was read and sent either.
    sent = {r.image_sha256 for r in emulator.requests() if r.path in IMAGE_PATHS}
    assert not sent & outside_hashes, "an outside file was uploaded"
    # The test did exercise deletes, moves and quarantines, not just refusals.
    counts = queue.counts()
    assert counts["del"]["done"] + counts["mov"]["done"] > 0, counts
    assert counts["del"]["quarantined"] + counts["mov"]["quarantined"] > 0, counts
    queue.close()


def _found(inbox: Path, folder: str, rel: str) -> Found:
    st = (inbox / rel).stat()
    return Found(folder, rel, st.st_size, st.st_mtime_ns, st.st_ino)


def test_adoption_wants_every_unsuffixed_output_and_none_older_than_the_input(
    tmp_path: Path,
) -> None:
    folder = FolderSettings(
        name="f",
        inbox=tmp_path / "in",
        outbox=tmp_path / "out",
        quarantine=tmp_path / "q",
        output="both",
    )
    folder.inbox.mkdir()
    folder.outbox.mkdir()
    for name in ("both.jpg", "nomask.jpg", "oldmask.jpg", "suffixed.jpg"):
        (folder.inbox / name).write_bytes(product_image())
        os.utime(folder.inbox / name, ns=(5_000_000_000, 5_000_000_000))
    outs = {
        "both.png": 6,
        "both.mask.png": 5,  # as new as the input counts
        "nomask.png": 6,
        "oldmask.png": 6,
        "oldmask.mask.png": 4,
        "suffixed.jpg.png": 6,  # another name's output: never looked for
        "suffixed.jpg.mask.png": 6,
    }
    for name, seconds in outs.items():
        (folder.outbox / name).write_bytes(b"x")
        os.utime(folder.outbox / name, ns=(seconds * 10**9, seconds * 10**9))
    queue = SqliteStore(tmp_path / "new.sqlite3")
    assert queue.created
    adopter = Adopter(queue, lambda: {"f": folder}, made_ns=10**19)
    found = [_found(folder.inbox, "f", n) for n in sorted(os.listdir(folder.inbox))]
    rest = adopter.adopt(found)
    assert sorted(f.relpath for f in rest) == ["nomask.jpg", "oldmask.jpg", "suffixed.jpg"]
    job = find_job(queue, "f", "both.jpg")
    assert job is not None and job.state == "done" and job.attempts == 0
    assert queue.claimed_outputs(job.id) == ["both.mask.png", "both.png"]
    # Found again by a rescan: the same file is known and not queued again.
    assert queue.enqueue_many([found[0]]) == []
    assert find_job(queue, "f", "nomask.jpg") is None  # the rest is for the caller to queue
    queue.close()
    assert not SqliteStore(tmp_path / "new.sqlite3").created  # opened again: not new


def test_adoption_wants_outputs_older_than_the_queue(tmp_path: Path) -> None:
    """Only outputs that were there before the queue was made are adopted.

    An output written since is this daemon's own work, for some version of some
    input: a file rewritten while it was processed, then gone and back, must be
    processed again, not adopted with its old version's cut-out (the fuzz test
    found exactly that).
    """
    folder = FolderSettings(
        name="f", inbox=tmp_path / "in", outbox=tmp_path / "out", quarantine=tmp_path / "q"
    )
    folder.inbox.mkdir()
    folder.outbox.mkdir()
    made_ns = 10 * 10**9  # the queue was made at 10 s
    for name, input_s, output_s in (("before.jpg", 5, 8), ("since.jpg", 5, 12)):
        (folder.inbox / name).write_bytes(product_image())
        os.utime(folder.inbox / name, ns=(input_s * 10**9, input_s * 10**9))
        out = folder.outbox / name.replace(".jpg", ".png")
        out.write_bytes(b"x")
        os.utime(out, ns=(output_s * 10**9, output_s * 10**9))
    queue = SqliteStore(tmp_path / "new.sqlite3")
    adopter = Adopter(queue, lambda: {"f": folder}, made_ns=made_ns)
    rest = adopter.adopt([_found(folder.inbox, "f", n) for n in ("before.jpg", "since.jpg")])
    assert [f.relpath for f in rest] == ["since.jpg"]
    assert find_job(queue, "f", "since.jpg") is None  # left to be queued and processed
    job = find_job(queue, "f", "before.jpg")
    assert job is not None and job.state == "done"
    queue.close()


def test_adoption_wants_every_renditions_outputs_too(tmp_path: Path) -> None:
    web = {"outbox": tmp_path / "web", "format": "webp", "name_template": "{stem}-web"}
    folder = FolderSettings.model_validate(
        {
            "name": "f",
            "inbox": tmp_path / "in",
            "outbox": tmp_path / "out",
            "quarantine": tmp_path / "q",
            "rendition": [web],
        }
    )
    for path in (folder.inbox, folder.outbox, tmp_path / "web"):
        path.mkdir()
    for name in ("all.jpg", "own.jpg"):
        (folder.inbox / name).write_bytes(product_image())
        os.utime(folder.inbox / name, ns=(5 * 10**9, 5 * 10**9))
    for out in ("out/all.png", "web/all-web.webp", "out/own.png"):
        (tmp_path / out).write_bytes(b"x")
        os.utime(tmp_path / out, ns=(6 * 10**9, 6 * 10**9))
    queue = SqliteStore(tmp_path / "new.sqlite3")
    adopter = Adopter(queue, lambda: {"f": folder}, made_ns=10**19)
    rest = adopter.adopt([_found(folder.inbox, "f", n) for n in ("all.jpg", "own.jpg")])
    assert [f.relpath for f in rest] == ["own.jpg"]  # its rendition is missing: made as usual
    job = find_job(queue, "f", "all.jpg")
    assert job is not None and job.state == "done"
    queue.close()


def test_adoption_never_takes_a_name_another_input_owns(tmp_path: Path) -> None:
    queue = SqliteStore(tmp_path / "q.sqlite3")
    queue.enqueue_many([Found("f", "a.webp", 1, 1, 1)])
    other = find_job(queue, "f", "a.webp")
    assert other is not None
    assert queue.claim_output("f", other.id, iter(["a.png"])) == "a.png"
    assert not queue.adopt(Found("f", "a.jpg", 1, 1, 2), ["a.png"])
    assert find_job(queue, "f", "a.jpg") is None  # rolled back: no job, no claim
    assert queue.adopt(Found("f", "b.jpg", 1, 1, 3), ["b.png"])
    assert not queue.adopt(Found("f", "b.jpg", 1, 1, 3), ["b.png"])  # known already
    queue.close()
