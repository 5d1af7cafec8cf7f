"""The runner on a real SQLite store with real commands; time injected, no sleeps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bgsyncd.config.schema import FolderSettings
from bgsyncd.hooks import events
from bgsyncd.hooks.runner import HookConfig, HookRunner, backoff
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage.contract import Found
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.helpers import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Counted(Recorder):
    """Records what the runner reports (the runner's own output, not a stand-in for it)."""

    def __init__(self) -> None:
        self.tries: list[tuple[str, str, str]] = []
        self.pending: list[int] = []

    def hook_finished(self, folder: str, kind: str, result: str) -> None:
        self.tries.append((folder, kind, result))

    def hooks_pending(self, pending: int) -> None:
        self.pending.append(pending)


def _folder(tmp_path: Path, argv: list[str]) -> FolderSettings:
    for name in ("inbox", "outbox", "quarantine"):
        (tmp_path / name).mkdir(exist_ok=True)
    return FolderSettings(
        name="f", inbox=tmp_path / "inbox", outbox=tmp_path / "outbox",
        quarantine=tmp_path / "quarantine", on_done=tuple(argv),
    )  # fmt: skip


def _done(store: SqliteStore, folder: FolderSettings, names: list[str]) -> list[str]:
    """Jobs marked done with their hooks, as the worker records them; their event ids."""
    store.enqueue_many([Found("f", n, 1, 1, i) for i, n in enumerate(names)])
    ids = []
    for _ in names:
        job = store.claim(60)
        assert job is not None
        hooks = events.done_hooks(job, folder, [job.relpath + ".png"], events.new_event_id())
        store.complete(job, [job.relpath + ".png"], hooks)
        ids.append(hooks[0].event_id)
    return ids


def test_never_more_than_max_running_at_once(tmp_path: Path) -> None:
    # Each command marks that it started, then waits for the test's release file.
    script = (
        "import os, sys, time, json; d = json.load(sys.stdin);"
        " open('started.' + d['event_id'], 'w').close();"
        " [time.sleep(0.02) for _ in iter(lambda: os.path.exists('release'), True)]"
    )
    folder = _folder(tmp_path, [sys.executable, "-c", script])
    store = SqliteStore(tmp_path / "q.sqlite3")
    _done(store, folder, [f"{i}.jpg" for i in range(5)])
    recorder = Counted()
    runner = HookRunner(store, recorder, lambda: HookConfig({"f": folder}, max_running=2))
    outbox = tmp_path / "outbox"
    assert runner.step() == 2
    assert runner.step() == 0  # both places taken
    wait_until(lambda: len(list(outbox.glob("started.*"))) == 2, 20, what="two started")
    assert runner.running() == 2
    (outbox / "release").touch()

    def all_done() -> bool:
        runner.step()
        return store.hooks_pending() == 0 and runner.running() == 0

    wait_until(all_done, 30, what="every hook delivered")
    assert len(list(outbox.glob("started.*"))) == 5
    assert recorder.tries == [("f", "command", "ok")] * 5
    runner.stop()


def test_a_failing_hook_is_retried_with_backoff_then_dropped(tmp_path: Path) -> None:
    clock = Clock()
    # Each try appends the event id it was given, then fails.
    script = (
        "import json, sys; d = json.load(sys.stdin);"
        " open('tries', 'a').write(d['event_id'] + '\\n'); sys.exit(1)"
    )
    folder = _folder(tmp_path, [sys.executable, "-c", script])
    store = SqliteStore(tmp_path / "q.sqlite3", clock=clock)
    (event_id,) = _done(store, folder, ["a.jpg"])
    recorder = Counted()
    config = HookConfig({"f": folder}, max_attempts=3, retry_base=5.0, retry_max=300.0)
    runner = HookRunner(store, recorder, lambda: config, clock=clock, rng=lambda: 0.0)
    tries = tmp_path / "outbox" / "tries"

    def tried(n: int) -> None:
        assert runner.step() == 1
        wait_until(lambda: runner.running() == 0, 20, what=f"try {n} over")
        assert tries.read_text().split() == [event_id] * n

    tried(1)
    clock.now += 4.9
    assert runner.step() == 0  # 5 s after the first failure
    clock.now += 0.1
    tried(2)
    clock.now += 9.9
    assert runner.step() == 0  # then 10 s
    clock.now += 0.1
    tried(3)  # the last of max_attempts: dropped
    assert store.hooks_pending() == 0
    clock.now += 1000
    assert runner.step() == 0
    assert recorder.tries == [("f", "command", "failed")] * 3
    runner.stop()


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    assert backoff(1, 5, 300, lambda: 0.0) == 5
    assert backoff(2, 5, 300, lambda: 0.0) == 10
    assert backoff(3, 5, 300, lambda: 1.0) == 25
    assert backoff(20, 5, 300, lambda: 1.0) == 300
    assert backoff(5000, 5, 300, lambda: 1.0) == 300  # a huge max_attempts is no crash


def test_a_killed_runs_claims_are_given_back_at_start(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["true"])
    store = SqliteStore(tmp_path / "q.sqlite3")
    _done(store, folder, ["a.jpg"])
    (claimed,) = store.claim_hooks(5, 600, ["f"])  # a run that died with this claim
    assert store.claim_hooks(5, 600, ["f"]) == []
    runner = HookRunner(store, Counted(), lambda: HookConfig({"f": folder}))
    runner.start()  # gives it back, then delivers it
    wait_until(lambda: store.hooks_pending() == 0, 20, what="delivered after the restart")
    runner.stop()
    assert json.loads(claimed.event.payload)["relpath"] == "a.jpg"


def test_a_hook_of_a_folder_not_configured_here_is_left_never_dropped(tmp_path: Path) -> None:
    clock = Clock()
    folder = _folder(tmp_path, ["true"])
    store = SqliteStore(tmp_path / "q.sqlite3", clock=clock)
    _done(store, folder, ["a.jpg"])
    recorder = Counted()
    # Not configured at all: never claimed.
    runner = HookRunner(store, recorder, lambda: HookConfig({}), clock=clock)
    assert runner.step() == 0
    assert store.hooks_pending() == 1
    # Configured when claimed, removed by a reload before it runs: left under its
    # claim (due again when the lease runs out), not dropped.
    configs = iter([HookConfig({"f": folder}, timeout=10), HookConfig({})])
    runner = HookRunner(store, recorder, lambda: next(configs), clock=clock)
    assert runner.step() == 1
    wait_until(lambda: runner.running() == 0, 20, what="the try over")
    assert store.hooks_pending() == 1 and recorder.tries == []
    assert store.claim_hooks(5, 600, ["f"]) == []  # still under its lease
    clock.now += 10 + 30
    (hook,) = store.claim_hooks(5, 600, ["f"])
    assert hook.attempts == 0


def test_a_try_that_raises_is_a_failed_try_counted_then_dropped(tmp_path: Path) -> None:
    # An argv with a NUL (refused at load; here as if it slipped through) makes
    # Popen raise ValueError: a failed try, counted, never a dead thread.
    clock = Clock()
    folder = _folder(tmp_path, ["/bin/echo", "a\0b"])
    store = SqliteStore(tmp_path / "q.sqlite3", clock=clock)
    _done(store, folder, ["a.jpg"])
    recorder = Counted()
    config = HookConfig({"f": folder}, max_attempts=2, retry_base=5.0)
    runner = HookRunner(store, recorder, lambda: config, clock=clock, rng=lambda: 0.0)
    for _ in range(2):
        assert runner.step() == 1
        wait_until(lambda: runner.running() == 0, 20, what="the try over")
        clock.now += 5
    assert recorder.tries == [("f", "command", "failed")] * 2
    assert store.hooks_pending() == 0
