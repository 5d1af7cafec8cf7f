"""Several ``bgsyncd run`` processes, one emulator key, one real PostgreSQL (SPEC §8).

Each host is a real daemon subprocess with its own ``host_id`` and config; the
emulator records every request it saw (the referee for the rate limit and the
credits), and the database is the one the test server started.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.rate import peak
from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    make_folder,
    outputs,
    run_cli,
    start_daemon,
    write_config,
)
from tests.support.emulated import image_requests
from tests.support.fleet import db_rows, drop, host_config
from tests.support.helpers import wait_until

CREDIT_PATH = "/available-credit"


# -- one rate limit, one floor ---------------------------------------------------------------


def test_three_hosts_never_start_more_than_the_limit_in_any_window(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    limit, window = 4, 2.0
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=limit, rate_window=window) as emu:
        folders = [make_folder(tmp_path, f"f{i}") for i in range(3)]
        api = {"rate_limit": limit, "rate_window_seconds": window, "max_in_flight": 2}
        for i, folder in enumerate(folders):
            start_daemon(daemons, host_config(tmp_path, f"h{i}", emu, pg_dsn, [folder], api=api))
        for i, folder in enumerate(folders):
            for n in range(4):
                drop(Path(folder["inbox"]), f"p{n}.jpg", 30 + 10 * i + n)
        wait_until(
            lambda: all(len(outputs(f)) == 4 for f in folders), 60, what="12 outputs on 3 hosts"
        )
        seen = emu.requests()
    assert not [r for r in seen if r.status == 429]
    # Every request counts, the three start-up credit checks included.
    assert len([r for r in seen if r.path == CREDIT_PATH]) >= 3
    assert peak([r.started for r in seen], window) <= limit
    assert all(d.proc.poll() is None for d in daemons)


def test_the_floor_holds_exactly_across_hosts(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=13, rate_limit=1000, latency=0.3) as emu:
        folders = [make_folder(tmp_path, f"f{i}") for i in range(3)]
        hosts = [
            start_daemon(
                daemons,
                host_config(tmp_path, f"h{i}", emu, pg_dsn, [f], credits={"floor": 10}),
            )
            for i, f in enumerate(folders)
        ]
        for i, folder in enumerate(folders):
            for n in range(3):
                drop(Path(folder["inbox"]), f"p{n}.jpg", 30 + 10 * i + n)
        wait_until(
            lambda: all(h.saw("dispatch.paused", reason="credit_floor") for h in hosts),
            30,
            what="every host paused at the floor",
        )
        wait_until(lambda: sum(len(outputs(f)) for f in folders) == 3, 10, what="three outputs")
        assert emu.credits == 10
        assert len([r for r in image_requests(emu) if r.status == 200]) == 3


# -- a shared folder, one host killed ---------------------------------------------------------


def test_a_killed_hosts_jobs_in_a_shared_folder_are_finished_by_another(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    lease, max_in_flight, files = 3.0, 2, 6
    folder = make_folder(tmp_path, "shared", shared=True, polling=True)
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000, latency=2.0) as emu:
        api = {"max_in_flight": max_in_flight}
        a = start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [folder], api=api))
        for n in range(files):
            drop(Path(folder["inbox"]), f"p{n}.jpg", 30 + n)

        def held_by_a() -> int:
            sql = "SELECT COUNT(*) FROM jobs WHERE state = 'in_flight' AND owner = 'a'"
            return int(db_rows(pg_dsn, sql)[0][0])

        wait_until(lambda: held_by_a() == max_in_flight, 20, what="host a holds two jobs")
        a.kill9()
        b = start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [folder], api=api))
        ready = time.monotonic()  # b's start-up is not what is measured (a loaded machine)
        wait_until(lambda: len(outputs(folder)) == files, 60, what="every output, by host b")
        took = time.monotonic() - ready
        # b serves the rest at once; a's two come back after the lease (+ a 2 s request).
        assert took <= lease + 2.0 + 8.0, took
        assert b.saw("fleet.takeover")
        assert outputs(folder) == sorted(f"p{n}.png" for n in range(files))  # each once
        resends = [e for e in b.events() if e.get("event") == "job.resend"]
        assert 1 <= len(resends) <= max_in_flight
        done = [e["path"] for e in b.events() if e.get("event") == "job.done"]
        assert len(done) == len(set(done))


# -- one pause for the fleet ------------------------------------------------------------------


def test_a_revoked_key_pauses_every_host_and_a_sighup_to_one_resumes_all(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        a = start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa]))
        b = start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [fb]))
        emu.configure(keys=["somebody-else"])
        drop(Path(fa["inbox"]), "refused.jpg", 33)
        wait_until(
            lambda: (
                a.saw("dispatch.paused", reason="invalid_api_key")
                and b.saw("dispatch.paused", reason="invalid_api_key")
            ),
            20,
            what="both hosts paused on a 401 one of them saw",
        )
        drop(Path(fb["inbox"]), "waiting.jpg", 34)
        emu.configure(keys=[TEST_KEY])
        b.signal(signal.SIGHUP)  # b never saw the 401 itself
        wait_until(
            lambda: outputs(fa) == ["refused.png"] and outputs(fb) == ["waiting.png"],
            20,
            what="both hosts resumed",
        )
        assert a.saw("dispatch.resumed") and b.saw("dispatch.resumed")


# -- the database away for ten seconds --------------------------------------------------------


def test_the_database_stopped_mid_run_loses_nothing(
    tmp_path: Path, pg_server: Any, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    limit, window = 6, 2.0
    with Emulator(
        keys=[TEST_KEY], credits=1000, rate_limit=limit, rate_window=window, latency=0.5
    ) as emu:
        api = {"rate_limit": limit, "rate_window_seconds": window}
        folders = [make_folder(tmp_path, f"f{i}") for i in range(2)]
        hosts = [
            start_daemon(daemons, host_config(tmp_path, f"h{i}", emu, pg_dsn, [f], api=api))
            for i, f in enumerate(folders)
        ]
        # A host with nothing to do notices too (SPEC §8: whether or not work is waiting).
        idle_config = host_config(tmp_path, "idle", emu, pg_dsn, [make_folder(tmp_path, "idle")])
        idle = start_daemon(daemons, idle_config)
        for i, folder in enumerate(folders):
            for n in range(6):
                drop(Path(folder["inbox"]), f"p{n}.jpg", 30 + 10 * i + n)
        wait_until(lambda: len(image_requests(emu)) >= 2, 20, what="work under way")
        pg_server.stop()
        try:
            down_until = time.monotonic() + 10.0
            # Files arriving while it is down are found later.
            for i, folder in enumerate(folders):
                drop(Path(folder["inbox"]), "late.jpg", 90 + i)
            wait_until(
                lambda: all(
                    h.saw("dispatch.paused", reason="queue_unavailable") for h in [*hosts, idle]
                ),
                15,
                what="every host paused queue_unavailable, the idle one too",
            )
            during = len(image_requests(emu))
            wait_until(lambda: time.monotonic() >= down_until, 15, what="ten seconds down")
            # Fail closed: no request began while the database was away (those in
            # flight at the stop may have finished).
            assert len(image_requests(emu)) <= during + 2 * 3
        finally:
            pg_server.start()
        wait_until(
            lambda: all(len(outputs(f)) == 7 for f in folders), 90, what="every output after"
        )
        seen = emu.requests()
    assert not [r for r in seen if r.status == 429]
    assert all(h.proc.poll() is None for h in hosts)
    assert all(h.saw("queue.available") for h in hosts)
    wait_until(lambda: idle.saw("queue.available"), 30, what="the idle host resumed")


# -- the shared cache, status, one host_id --------------------------------------------------------


def test_identical_content_on_two_hosts_costs_one_credit(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa]))
        start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [fb]))
        drop(Path(fa["inbox"]), "same.jpg", 41)
        wait_until(lambda: outputs(fa) == ["same.png"], 20, what="host a's output")
        drop(Path(fb["inbox"]), "same.jpg", 41)
        wait_until(lambda: outputs(fb) == ["same.png"], 20, what="host b's output")
        assert len(image_requests(emu)) == 1
        assert emu.credits == 999
        a_out = (Path(fa["outbox"]) / "same.png").read_bytes()
        assert (Path(fb["outbox"]) / "same.png").read_bytes() == a_out


def test_status_lists_the_hosts_of_the_fleet(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        config = host_config(tmp_path, "a", emu, pg_dsn, [fa])
        start_daemon(daemons, config)
        start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [fb]))
        drop(Path(fb["inbox"]), "b.jpg", 40)
        wait_until(lambda: outputs(fb) == ["b.png"], 20, what="host b's output")
        result = run_cli("status", "--json", "--config", str(config))
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        hosts = {h["id"]: h for h in status["hosts"]}
        assert set(hosts) == {"a", "b"}
        assert hosts["a"]["folders"] == ["fa"] and hosts["b"]["folders"] == ["fb"]
        assert all(
            abs(h["last_seen"] - time.time()) < 30 and h["in_flight"] == 0 for h in hosts.values()
        )
        assert status["jobs"]["done"] == 1  # the fleet's counts: b's job, seen from a
        table = run_cli("status", "--config", str(config))
        assert "host a:" in table.stdout and "host b:" in table.stdout


def test_a_second_live_daemon_with_one_host_id_is_refused_but_a_restart_after_kill9_is_not(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        fa, fb = make_folder(tmp_path, "fa"), make_folder(tmp_path, "fb")
        first = start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa], lease=60))
        # Another configuration (its own folder) with the same host_id "a".
        twin_config = host_config(tmp_path, "a2", emu, pg_dsn, [fb], lease=60)
        twin_config.write_text(
            twin_config.read_text().replace('host_id = "a2"', 'host_id = "a"'), encoding="utf-8"
        )
        refused = run_cli("run", "--config", str(twin_config), timeout=60)
        assert refused.returncode != 0
        message = refused.stderr
        assert "host_id 'a'" in message and f"pid {first.proc.pid}" in message, message
        assert "this one" in message and "pid " in message.split("this one", 1)[1]
        first.kill9()
        # Well within the 60 s lease: the dead session's lock is gone, so no refusal.
        again = start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [fa], lease=60))
        drop(Path(fa["inbox"]), "after.jpg", 44)
        wait_until(lambda: outputs(fa) == ["after.png"], 20, what="the restarted host works")
        assert again.proc.poll() is None


def test_hosts_disagreeing_on_a_shared_folder_are_refused_naming_both(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        shared = make_folder(tmp_path, "shared", shared=True, polling=True)
        start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [shared]))
        other = {**shared, "format": "webp"}
        config = host_config(tmp_path, "b", emu, pg_dsn, [other])
        refused = run_cli("run", "--config", str(config), timeout=60)
        assert refused.returncode != 0
        assert "'shared'" in refused.stderr and "'a'" in refused.stderr
        assert "'b'" in refused.stderr and "format" in refused.stderr


# -- configuration -------------------------------------------------------------------------


def test_a_dsn_carrying_a_password_is_refused_naming_the_key(tmp_path: Path) -> None:
    secret = "s3cr3t-pw"
    folder = make_folder(tmp_path, "f")
    for dsn in (
        f"postgresql://bgsyncd:{secret}@db.internal/bgsyncd",
        f"host=db.internal user=bgsyncd password={secret}",
        f"postgresql://bgsyncd@db.internal/bgsyncd?password={secret}",
    ):
        config = write_config(
            tmp_path / "c.toml",
            base_url="http://127.0.0.1:9",
            folders=[folder],
            queue={"backend": "postgresql", "dsn": dsn},
        )
        result = run_cli("check-config", "--config", str(config))
        assert result.returncode == 2
        assert "queue.dsn" in result.stderr and "password" in result.stderr
        assert secret not in result.stderr + result.stdout


def test_check_config_shows_the_dsn(tmp_path: Path) -> None:
    dsn = "postgresql://bgsyncd@db.internal/bgsyncd?sslmode=verify-full"
    config = write_config(
        tmp_path / "c.toml",
        base_url="http://127.0.0.1:9",
        folders=[make_folder(tmp_path, "f", shared=True)],
        queue={"backend": "postgresql", "dsn": dsn, "host_id": "studio-1"},
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f'dsn = "{dsn}"' in result.stdout and 'host_id = "studio-1"' in result.stdout


def test_without_psycopg_the_postgresql_backend_is_one_clear_line(
    tmp_path: Path, pg_dsn: str
) -> None:
    blocker = tmp_path / "blocker" / "psycopg"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('psycopg is not installed')\n")
    config = write_config(
        tmp_path / "c.toml",
        base_url="http://127.0.0.1:9",
        folders=[make_folder(tmp_path, "f")],
        queue={"backend": "postgresql", "dsn": pg_dsn},
    )
    result = run_cli("run", "--config", str(config), env={"PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bgsyncd[postgresql]" in lines[0], result.stderr


def test_a_shared_folder_needs_the_postgresql_backend(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        base_url="http://127.0.0.1:9",
        folders=[make_folder(tmp_path, "f", shared=True)],
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "folder[0].shared" in result.stderr


# -- a claim lost while the request ran -----------------------------------------------------


def test_a_host_that_lost_its_claim_drops_its_result_instead_of_writing_it(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Host a's lease runs out mid-request and b takes the job over: a writes nothing."""
    from bgsyncd.api.client import Client
    from bgsyncd.config.schema import FolderSettings
    from bgsyncd.fleet.hosts import Hosts
    from bgsyncd.jobs.outcomes import Transition
    from bgsyncd.jobs.worker import Worker, WorkerConfig
    from bgsyncd.ops.metrics import Recorder
    from bgsyncd.storage.cache import ResultCache
    from bgsyncd.storage.contract import Found
    from bgsyncd.storage.postgres.store import PostgresStore

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    drop(inbox, "p.jpg", 50)
    st = (inbox / "p.jpg").stat()
    a, b = PostgresStore(pg_dsn, "a"), PostgresStore(pg_dsn, "b")
    try:
        Hosts(a, 0.5).join(["f"], "a-run")
        b_hosts = Hosts(b, 0.5)
        b_hosts.join(["f"], "b-run")
        a.enqueue_many([Found("f", "p.jpg", st.st_size, st.st_mtime_ns, st.st_ino)])
        job = a.claim(0.5)
        assert job is not None
        folder = FolderSettings(
            name="f", inbox=inbox, outbox=tmp_path / "outbox", quarantine=tmp_path / "q"
        )
        config = WorkerConfig(
            folders={"f": folder},
            max_upload_bytes=10 * 1024 * 1024,
            max_attempts=5,
            retry_base_seconds=0.01,
            retry_max_seconds=0.1,
        )
        with (
            Emulator(keys=[TEST_KEY], credits=100, rate_limit=1000, latency=1.5) as emu,
            Client(emu.url, TEST_KEY, 10) as client,
        ):
            worker = Worker(
                a,
                ResultCache(tmp_path / "cache", 0),
                Recorder(),
                config,
                lambda: client,
            )

            def b_takes_over() -> None:
                wait_until(lambda: b_hosts.take_over_expired(["f"]) == 1, 5, what="takeover")

            taker = threading.Thread(target=b_takes_over)
            taker.start()
            capsys.readouterr()
            result = worker.process(job)
            taker.join(10)
        assert result.transition is Transition.RELEASE and result.charged
        assert '"event": "job.lease_lost"' in capsys.readouterr().err
        assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())
        taken = b.claim(60)  # the job is b's to do again, pending, marked resend
        assert taken is not None and taken.id == job.id and taken.resend
    finally:
        a.close()
        b.close()


def test_a_credit_check_from_the_command_line_is_recorded_in_the_fleets_log(
    tmp_path: Path, pg_dsn: str
) -> None:
    with Emulator(keys=[TEST_KEY], credits=77, rate_limit=1000) as emu:
        config = host_config(tmp_path, "cli", emu, pg_dsn, [make_folder(tmp_path, "f")])
        result = run_cli("credits", "--json", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["available_credits"] == 77
    assert len(db_rows(pg_dsn, "SELECT t FROM request_log")) == 1
    assert not (tmp_path / "host-cli" / "state").exists()  # no SQLite file made beside it


def test_a_folder_not_shared_cannot_take_a_name_another_host_uses(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        start_daemon(daemons, host_config(tmp_path, "a", emu, pg_dsn, [make_folder(tmp_path, "x")]))
        other = make_folder(tmp_path / "elsewhere", "x")
        refused = run_cli("run", "--config", str(host_config(tmp_path, "b", emu, pg_dsn, [other])))
        assert refused.returncode == 2
        assert "'x'" in refused.stderr and "'a'" in refused.stderr and "'b'" in refused.stderr


def test_a_reload_is_checked_against_the_fleet_as_a_start_is(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    x, y, z = (make_folder(tmp_path / d, d) for d in ("x", "y", "z"))
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        a_config = host_config(tmp_path, "a", emu, pg_dsn, [x])
        b_config = host_config(tmp_path, "b", emu, pg_dsn, [y])
        a = start_daemon(daemons, a_config)
        b = start_daemon(daemons, b_config)
        # b takes a's folder name: refused as a start would be, b goes on as it was.
        host_config(tmp_path, "b", emu, pg_dsn, [make_folder(tmp_path / "b-x", "x")])
        b.signal(signal.SIGHUP)
        wait_until(lambda: b.saw("config.reload_failed"), 20, what="b's reload refused")
        (refused,) = [e for e in b.events() if e.get("event") == "config.reload_failed"]
        assert "'x'" in refused["error"] and "'a'" in refused["error"], refused
        assert not b.saw("config.reloaded")
        # b takes a new name: accepted, and the fleet knows b serves it now.
        host_config(tmp_path, "b", emu, pg_dsn, [z])
        b.signal(signal.SIGHUP)
        wait_until(lambda: b.saw("config.reloaded", folders=["z"]), 20, what="b's reload")
        host_config(tmp_path, "a", emu, pg_dsn, [x, make_folder(tmp_path / "a-z", "z")])
        a.signal(signal.SIGHUP)
        wait_until(lambda: a.saw("config.reload_failed"), 20, what="a's reload refused")
        (refused,) = [e for e in a.events() if e.get("event") == "config.reload_failed"]
        assert "'z'" in refused["error"] and "'b'" in refused["error"], refused
        assert a.stop() == 0 and b.stop() == 0


def test_a_host_starting_leaves_another_hosts_write_in_a_shared_folder_alone(
    tmp_path: Path, pg_dsn: str, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "shared", shared=True, polling=True)
    outbox = Path(folder["outbox"])
    outbox.mkdir()
    # Host a, on another machine, is writing an output (its temp file, just
    # made); a crash long ago left another temp file behind.
    writing = outbox / ".p.png.bgsyncd-0123456789abcdef.tmp"
    writing.write_bytes(b"half an output")
    stale = outbox / ".q.png.bgsyncd-fedcba9876543210.tmp"
    stale.write_bytes(b"left by a crash")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    with Emulator(keys=[TEST_KEY], credits=1000, rate_limit=1000) as emu:
        b = start_daemon(daemons, host_config(tmp_path, "b", emu, pg_dsn, [folder]))
        assert writing.read_bytes() == b"half an output"
        assert not stale.exists()
        assert b.stop() == 0
