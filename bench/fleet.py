"""How much of one key's rate limit a fleet of bgsyncd hosts uses, and how fast it takes over.

One emulator on loopback (latency 1.5 times the pacing interval, window /
limit), one throwaway PostgreSQL server (tests/support/pgserver.py: initdb and pg_ctl
of Debian's ``postgresql`` package), and real ``bgsyncd run`` subprocesses:

- one host on SQLite, then one, two and three hosts on PostgreSQL, each fed
  more files than it can send in the run; the fleet's requests are measured
  from the emulator's log after one warm-up window (``bench.rate.measure``):
  achieved rate / limit, the most starts in any window, 429s;
- takeover: two hosts serving one shared polled folder, the one holding jobs
  killed with kill -9; the time until the other has written their outputs;
- frozen host (``--only-frozen`` runs this row alone): the host holding jobs
  is stopped (SIGSTOP) past its lease while its requests are in flight, the
  other takes them over and finishes, then it is let go (SIGCONT) and its
  requests time out: the takeover time, each output written once, nothing
  sent again, every job done (SPEC §8 fencing);
- a hung database: three hosts on a fixed set of files, PostgreSQL frozen
  (SIGSTOP on every process of it) for 20 s once the first window is full;
  the requests made, whether every file was written, each paid once.

Budgets (issue 12): three hosts >= 0.97 of the limit, no 429, peak <= the
limit; one host on PostgreSQL within 0.01 of one host on SQLite; takeover
within lease_seconds + 10 s; the frozen host's too, and it changes nothing;
a hung database: every file written, one request each, no 429. Exit status 1
on a miss.

Run: ``.venv/bin/python -m bench.fleet`` (about five minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.rate import ROOT, Measure, _write_image, measure, peak
from bgsyncd.emulator import Emulator

KEY = "bench-fleet-key-0001"
MAX_IN_FLIGHT = 3
LEASE = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=7, help="requests per window (7)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds (20)")
    parser.add_argument("--windows", type=int, default=3, help="steady-state windows measured")
    parser.add_argument("--latency-factor", type=float, default=1.5, help="x pacing interval")
    parser.add_argument("--only-frozen", action="store_true", help="the frozen-host row alone")
    args = parser.parse_args(argv)
    from tests.support.pgserver import PgServer, require_server

    if args.only_frozen:
        return main_frozen()

    latency = args.latency_factor * args.window / args.limit
    print(
        f"limit {args.limit} per {args.window:g} s window, emulator latency {latency:.3f} s"
        f" ({args.latency_factor:g} x interval), max_in_flight {MAX_IN_FLIGHT} per host;"
        f" warm-up 1 window, then {args.windows} measured",
        flush=True,
    )
    server = PgServer(require_server())
    rows: list[tuple[str, int, Measure]] = []
    try:
        server.start()
        with tempfile.TemporaryDirectory(prefix="bgsyncd-bench-fleet-") as tmp:
            root = Path(tmp)
            plan = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3)]
            for backend, hosts in plan:
                dsn = server.create_database()
                where = root / f"{backend}-{hosts}"
                m = run_rate(where, backend, hosts, dsn, args.limit, args.window, args.windows)
                rows.append((backend, hosts, m))
                print(f"  {backend} x {hosts}: {m.ratio:.3f} of the limit", flush=True)
            took = run_takeover(root / "takeover", server.create_database())
            frozen = run_frozen(root / "frozen", server.create_database())
            hung = run_hung_database(
                root / "hung", server, server.create_database(), args.limit, args.window
            )
    finally:
        server.destroy()
    fleet_ok = print_table(args.limit, rows, took)
    frozen_ok = print_frozen(frozen)
    return 0 if print_hung_database(hung, args.limit) and fleet_ok and frozen_ok else 1


def run_rate(
    tmp: Path, backend: str, hosts: int, dsn: str, limit: int, window: float, windows: int
) -> Measure:
    """``hosts`` daemons on one key; the fleet's requests measured."""
    wanted = limit * (windows + 1) + hosts
    latency = 1.5 * window / limit
    with Emulator(
        keys=[KEY], credits=1_000_000, rate_limit=limit, rate_window=window, latency=latency
    ) as emu:
        procs = []
        for h in range(hosts):
            inbox = tmp / f"h{h}" / "inbox"
            inbox.mkdir(parents=True)
            for i in range(wanted + limit):
                _write_image(inbox / f"p{i:03}.png", 10_000 * (h + 1) + i)
            config = _write_config(
                tmp / f"h{h}", emu.url, limit, window, backend=backend, dsn=dsn, host=f"h{h}"
            )
            procs.append(_start(config))
        try:
            deadline = time.monotonic() + (windows + 3) * (window + 1.0) + 60.0
            while len(emu.requests()) < wanted + hosts:
                for proc, log in procs:
                    if proc.poll() is not None:
                        raise SystemExit(f"bgsyncd exited early: see {log}")
                if time.monotonic() > deadline:
                    raise SystemExit("the fleet made too few requests before the deadline")
                time.sleep(0.2)
        finally:
            for proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in procs:
                proc.wait(timeout=latency + 60)
        return measure(emu.requests(), limit, window)


def run_takeover(tmp: Path, dsn: str) -> float:
    """Seconds from kill -9 of the host holding jobs to their outputs, written by the other."""
    folder = {"name": "shared", "shared": True, "polling": True}
    with Emulator(keys=[KEY], credits=1_000_000, rate_limit=1000, latency=2.0) as emu:
        inbox, outbox = tmp / "inbox", tmp / "outbox"
        inbox.mkdir(parents=True)
        for i in range(2):
            _write_image(inbox / f"t{i}.png", 90_000 + i)
        a_config = _write_config(
            tmp / "a", emu.url, 1000, 60.0, backend="postgresql", dsn=dsn, host="a",
            folder=folder, inbox=inbox, outbox=outbox,
        )  # fmt: skip
        a, a_log = _start(a_config)
        held: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + 60.0
        while len(held) < 2:
            if time.monotonic() > deadline or a.poll() is not None:
                raise SystemExit(f"host a never held the jobs: see {a_log}")
            time.sleep(0.05)
            try:
                with psycopg.connect(dsn) as conn:
                    held = conn.execute(
                        "SELECT relpath FROM jobs WHERE state = 'in_flight' AND owner = 'a'"
                    ).fetchall()
            except psycopg.errors.UndefinedTable:
                continue  # host a has not created the schema yet
        a.kill()
        a.wait()
        killed = time.monotonic()
        b_config = _write_config(
            tmp / "b", emu.url, 1000, 60.0, backend="postgresql", dsn=dsn, host="b",
            folder=folder, inbox=inbox, outbox=outbox,
        )  # fmt: skip
        b, b_log = _start(b_config)
        try:
            want = {Path(str(r[0])).with_suffix(".png").name for r in held}
            while not all((outbox / name).exists() for name in want):
                if time.monotonic() - killed > LEASE + 60 or b.poll() is not None:
                    raise SystemExit(f"host b never wrote them: see {b_log}")
                time.sleep(0.05)
            return time.monotonic() - killed
        finally:
            b.send_signal(signal.SIGTERM)
            b.wait(timeout=60)


FROZEN_FILES = 4
FROZEN_TIMEOUT = 4.0  # the frozen host's api.timeout_seconds: its requests time out asleep


@dataclass(frozen=True)
class Frozen:
    """What the frozen-host row measured."""

    takeover: float  # seconds from SIGSTOP to every output written by the other host
    rewritten: int  # outputs written again after the frozen host woke (inode or mtime changed)
    sent_after: int  # image requests after it woke
    dropped: int  # results it dropped (job.lease_lost)
    all_done: bool  # every job done in the database, none claimed


def main_frozen() -> int:
    """Run the frozen-host row alone and print it."""
    from tests.support.pgserver import PgServer, require_server

    server = PgServer(require_server())
    try:
        server.start()
        with tempfile.TemporaryDirectory(prefix="bgsyncd-bench-frozen-") as tmp:
            row = run_frozen(Path(tmp), server.create_database())
    finally:
        server.destroy()
    return 0 if print_frozen(row) else 1


def run_frozen(tmp: Path, dsn: str) -> Frozen:
    """Host a holds jobs, is stopped past its lease; b takes over and finishes; a wakes."""
    folder = {"name": "shared", "shared": True, "polling": True}
    inbox, outbox = tmp / "inbox", tmp / "outbox"
    inbox.mkdir(parents=True)
    with Emulator(keys=[KEY], credits=1_000_000, rate_limit=1000) as emu:
        a_config = _write_config(
            tmp / "a", emu.url, 1000, 60.0, backend="postgresql", dsn=dsn, host="a",
            folder=folder, inbox=inbox, outbox=outbox, timeout=FROZEN_TIMEOUT,
        )  # fmt: skip
        a, a_log = _start(a_config)
        procs = [a]
        try:
            _wait(lambda: "credits.checked" in a_log.read_text(), 60, f"host a: see {a_log}")
            emu.configure(latency=60.0)  # a's requests hang until a is stopped
            for i in range(FROZEN_FILES):
                _write_image(inbox / f"f{i}.png", 70_000 + i)
            _wait(lambda: _held_by(dsn, "a") == MAX_IN_FLIGHT, 60, f"host a: see {a_log}")
            a.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            emu.configure(latency=2.0)
            b_config = _write_config(
                tmp / "b", emu.url, 1000, 60.0, backend="postgresql", dsn=dsn, host="b",
                folder=folder, inbox=inbox, outbox=outbox,
            )  # fmt: skip
            b, b_log = _start(b_config)
            procs.append(b)
            names = [f"f{i}.png" for i in range(FROZEN_FILES)]
            _wait(
                lambda: all((outbox / n).exists() for n in names) and _all_done(dsn),
                LEASE + 90,
                f"host b never finished: see {b_log}",
            )
            takeover = time.monotonic() - stopped
            before = {
                n: ((outbox / n).stat().st_ino, (outbox / n).stat().st_mtime_ns) for n in names
            }
            sent = len(emu.requests())
            _wait(lambda: time.monotonic() > stopped + FROZEN_TIMEOUT + 1, 30, "")
            a.send_signal(signal.SIGCONT)
            _wait(lambda: a_log.read_text().count('"job.lease_lost"') >= MAX_IN_FLIGHT, 30, "")
            time.sleep(3.0)  # would a write, send or claim anything more?
            after = {
                n: ((outbox / n).stat().st_ino, (outbox / n).stat().st_mtime_ns) for n in names
            }
            return Frozen(
                takeover=takeover,
                rewritten=sum(1 for n in names if before[n] != after[n]),
                sent_after=len(emu.requests()) - sent,
                dropped=a_log.read_text().count('"job.lease_lost"'),
                all_done=_all_done(dsn),
            )
        finally:
            a.send_signal(signal.SIGCONT)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)


def print_frozen(row: Frozen) -> bool:
    """Print the frozen-host row and whether its budgets hold."""
    print(
        f"\nfrozen host (SIGSTOP past lease_seconds {LEASE:g}, {MAX_IN_FLIGHT} requests in"
        f" flight): takeover {row.takeover:.1f} s, outputs rewritten {row.rewritten},"
        f" requests after it woke {row.sent_after}, results dropped {row.dropped}"
    )
    checks = {
        f"frozen host's jobs taken over within lease_seconds + 10 s ({LEASE + 10:g} s)": (
            row.takeover <= LEASE + 10
        ),
        "each output written once, nothing sent again": row.rewritten == 0 and row.sent_after == 0,
        "the woken host dropped its results; every job done": (
            row.dropped == MAX_IN_FLIGHT and row.all_done
        ),
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return all(checks.values())


HUNG_SECONDS = 20.0
HUNG_HOSTS = 3


@dataclass
class Hung:
    """The fleet's run through a hung database."""

    files: int
    written: int
    requests: int  # image requests (credit checks aside)
    peak: int  # most requests starting in any window, credit checks included
    rejected: int  # 429 answers
    took: float  # seconds from the first start to the last output


def run_hung_database(tmp: Path, server: Any, dsn: str, limit: int, window: float) -> Hung:
    """Three hosts, ``limit`` files each; the database hung for ``HUNG_SECONDS`` mid-run."""
    latency = 1.5 * window / limit
    with Emulator(
        keys=[KEY], credits=1_000_000, rate_limit=limit, rate_window=window, latency=latency
    ) as emu:
        procs, outboxes = [], []
        for h in range(HUNG_HOSTS):
            inbox = tmp / f"h{h}" / "inbox"
            inbox.mkdir(parents=True)
            for i in range(limit):
                _write_image(inbox / f"p{i:03}.png", 50_000 + 1_000 * h + i)
            config = _write_config(
                tmp / f"h{h}", emu.url, limit, window, backend="postgresql", dsn=dsn, host=f"h{h}"
            )
            procs.append(_start(config))
            outboxes.append(tmp / f"h{h}" / "outbox")
        files = HUNG_HOSTS * limit
        started = time.monotonic()

        def written() -> int:
            return sum(
                1 for o in outboxes if o.exists() for f in o.iterdir() if not f.name.startswith(".")
            )

        def wait(done: Any, seconds: float, what: str) -> None:
            deadline = time.monotonic() + seconds
            while not done():
                for proc, log in procs:
                    if proc.poll() is not None:
                        raise SystemExit(f"bgsyncd exited early: see {log}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"hung database: {what} did not happen in {seconds:g} s")
                time.sleep(0.2)

        try:
            wait(lambda: len(emu.requests()) > limit, 3 * window + 60, "a first window full")
            with server.frozen():
                time.sleep(HUNG_SECONDS)
            wait(lambda: written() >= files, (files / limit + 2) * window + 120, "every output")
            took = time.monotonic() - started
        finally:
            for proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in procs:
                proc.wait(timeout=latency + 60)
        seen = emu.requests()
    return Hung(
        files=files,
        written=written(),
        requests=len([r for r in seen if r.path != "/available-credit"]),
        peak=peak([r.started for r in seen], window),
        rejected=len([r for r in seen if r.status == 429]),
        took=took,
    )


def print_hung_database(hung: Hung, limit: int) -> bool:
    """Print the hung-database row and whether its budgets hold."""
    print(
        f"\nhung database ({HUNG_HOSTS} hosts, PostgreSQL SIGSTOPped {HUNG_SECONDS:g} s mid-run):"
        f" {hung.requests} image requests for {hung.files} files, {hung.written} written,"
        f" peak {hung.peak}/{limit}, {hung.rejected} x 429, in {hung.took:.1f} s"
    )
    checks = {
        "hung database: every file written, each paid once": hung.written == hung.files
        and hung.requests == hung.files,
        "hung database: no 429, peak never above the limit": hung.rejected == 0
        and hung.peak <= limit,
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return all(checks.values())


def _wait(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(failure or "timed out")
        time.sleep(0.05)


def _held_by(dsn: str, host: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'in_flight' AND owner = %s", (host,)
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return 0 if row is None else int(row[0])


def _all_done(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, owner FROM jobs").fetchall()
    return len(rows) == FROZEN_FILES and all(tuple(r) == ("done", None) for r in rows)


def print_table(limit: int, rows: list[tuple[str, int, Measure]], took: float) -> bool:
    """Print the results and whether the budgets hold; True if all do."""
    print()
    print(f"{'backend':<11} {'hosts':>5} {'requests':>8} {'achieved/limit':>14} {'peak/window':>11}"
          f" {'429s':>5}")  # fmt: skip
    for backend, hosts, m in rows:
        print(
            f"{backend:<11} {hosts:>5} {m.requests:>8} {m.ratio:>14.3f}"
            f" {f'{m.peak}/{limit}':>11} {m.rejected:>5}"
        )
    print(f"\ntakeover after kill -9 (lease_seconds {LEASE:g}): outputs in {took:.1f} s")
    by = {(b, h): m for b, h, m in rows}
    three, one_pg, one_sqlite = by[("postgresql", 3)], by[("postgresql", 1)], by[("sqlite", 1)]
    checks = {
        "three hosts >= 0.97 of the limit": three.ratio >= 0.97,
        "no 429": all(m.rejected == 0 for _, _, m in rows),
        "peak never above the limit": all(m.peak <= limit for _, _, m in rows),
        "one host on PostgreSQL within 0.01 of SQLite": abs(one_pg.ratio - one_sqlite.ratio)
        <= 0.01,
        f"takeover within lease_seconds + 10 s ({LEASE + 10:g} s)": took <= LEASE + 10,
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return all(checks.values())


def _start(config: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = config.parent / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BGSYNCD_API_KEY": KEY},
        )
    return proc, log


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _write_config(
    home: Path,
    url: str,
    limit: int,
    window: float,
    *,
    backend: str,
    dsn: str,
    host: str,
    folder: dict[str, Any] | None = None,
    inbox: Path | None = None,
    outbox: Path | None = None,
    timeout: float = 120.0,
) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    inbox = inbox or home / "inbox"
    outbox = outbox or home / "outbox"
    extra = "".join(f"{k} = {_toml(v)}\n" for k, v in (folder or {"name": host}).items())
    text = f"""
[api]
base_url = "{url}"
rate_limit = {limit}
rate_window_seconds = {window}
max_in_flight = {MAX_IN_FLIGHT}
timeout_seconds = {timeout}

[queue]
backend = "{backend}"
database = "{home / "state" / "queue.sqlite3"}"
dsn = "{dsn}"
host_id = "{host}"
lease_seconds = {LEASE}
settle_seconds = 0.3

[metrics]
listen = ""

[logging]
level = "info"

[[folder]]
{extra}inbox = "{inbox}"
outbox = "{outbox}"
quarantine = "{home / "quarantine"}"
"""
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
