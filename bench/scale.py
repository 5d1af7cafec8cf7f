"""Scale and overhead: discovery rate, restart with a large history, memory, idle CPU, status.

Run from the repository root (see bench/README.md)::

    .venv/bin/python -m bench.scale [--files 100000] [--folders 50] [--quick] [--dir DIR]

Real ``bgsyncd run`` subprocesses against the in-process emulator; their RSS
and CPU come from ``/proc/<pid>``. Phases, in order:

A. inotify: 50 empty inboxes, dispatch paused (the account has 0 credits), a
   separate writer process drops the files at once; files/s = files / (last
   ``queued_at`` in the database - the writer's first write). Then peak RSS
   with every job pending, idle CPU while paused, and ``status`` latency.
B. start-up scan: the same files, a fresh database; files/s from process start.
C. restart with history: every job marked done straight in the database (a
   bench set-up shortcut: one UPDATE, not the claim/complete API), credits
   restored; time from process start to ``daemon.ready``, inbox files opened
   meanwhile (an inotify watch of our own sees every open), idle CPU.
D. long run: 1,000 unique images through the emulator at a high rate limit;
   RSS after the first 100 done against RSS at the end.

Prints each figure beside its budget and exits 1 if any misses it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bgsyncd.commands.status import collect_status
from bgsyncd.emulator import Emulator
from bgsyncd.service.backends import load_settings

KEY = "bench-scale-key-0123456789"
MIB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
LONG_RUN_FILES = 1000
RESCAN_SECONDS = 300.0  # the default queue.rescan_interval_seconds


@dataclass
class Figure:
    """One measured figure; ``budget`` None means informative only."""

    name: str
    value: float
    unit: str
    budget: float | None = None
    at_least: bool = False  # the budget is a minimum (a rate), not a maximum

    @property
    def ok(self) -> bool | None:
        """Within budget; None without one."""
        if self.budget is None:
            return None
        return self.value >= self.budget if self.at_least else self.value < self.budget

    def row(self) -> tuple[str, str, str, str]:
        """The table's cells."""
        budget = "-"
        if self.budget is not None:
            budget = f"{'>=' if self.at_least else '<'} {_num(self.budget)} {self.unit}"
        verdict = {None: "info", True: "OK", False: "FAIL"}[self.ok]
        return self.name, f"{_num(self.value)} {self.unit}", budget, verdict


def _num(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) or abs(x) >= 100 else f"{x:.2f}"


# -- inputs -----------------------------------------------------------------------------


def png_bytes(i: int, side: int = 8) -> bytes:
    """A tiny valid RGB PNG (about 100 bytes), different for every ``i``."""
    r, g, b = i & 255, (i >> 8) & 255, (i >> 16) & 255
    rows = b"".join(b"\0" + bytes((r, g, (b + 16 * y) & 255)) * side for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def write_files(count: int, roots: list[str], start: int = 0) -> tuple[float, float]:
    """Write ``count`` PNGs round-robin into ``roots``; return wall-clock (first, last)."""
    t0 = time.time()
    for i in range(start, start + count):
        path = f"{roots[i % len(roots)]}/img{i:07d}.png"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, png_bytes(i))
        finally:
            os.close(fd)
    return t0, time.time()


def write_config(path: Path, base_url: str, inboxes: list[Path], state: Path, **api: int) -> Path:
    """A daemon configuration: product defaults except loopback API and no metrics port."""
    lines = [
        "[api]", f'base_url = "{base_url}"', "timeout_seconds = 30",
        *(f"{k} = {v}" for k, v in api.items()),
        "[queue]", f'database = "{state}/queue.sqlite3"',
        "[metrics]", 'listen = ""', "[logging]", 'format = "json"', 'level = "info"',
    ]  # fmt: skip
    for inbox in inboxes:
        out = inbox.parent
        lines += [
            "[[folder]]", f'name = "{inbox.parent.name}"', f'inbox = "{inbox}"',
            f'outbox = "{out}/outbox"', f'quarantine = "{out}/quarantine"',
            'after_success = "keep"',
        ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- observing processes and the database ------------------------------------------------


class Daemon:
    """``bgsyncd run`` as a subprocess, its log in a file we read incrementally."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self._offset = 0
        self._tail = b""
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BGSYNCD_API_KEY": KEY},
        )
        self.pid = self.proc.pid

    def wait_event(self, event: str, timeout: float) -> float:
        """Wait for a log line with ``event``; return seconds since start."""
        needle = f'"{event}"'.encode()
        deadline = time.monotonic() + timeout
        with self.log_path.open("rb") as f:
            while time.monotonic() < deadline:
                f.seek(self._offset)
                chunk = self._tail + f.read()
                self._offset = f.tell()
                if needle in chunk:
                    return time.monotonic() - self.started
                self._tail = chunk[-len(needle) :]
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited; see {self.log_path}")
                time.sleep(0.01)
        raise RuntimeError(f"no {event} within {timeout:.0f} s; see {self.log_path}")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def cpu_percent(self, seconds: float) -> float:
        """CPU use over the next ``seconds``, in percent of one core."""
        c0, t0 = self.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        return 100.0 * (self.cpu_seconds() - c0) / (time.monotonic() - t0)

    def stop(self) -> None:
        """SIGTERM, then wait (kill after 60 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def db_row(db: Path, sql: str) -> tuple[float, ...]:
    """One row of a read-only query (bench bookkeeping, not product code)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        return tuple(conn.execute(sql).fetchone())
    finally:
        conn.close()


def count(db: Path, states: str) -> int:
    """Jobs in any of ``states`` (an SQL list literal body, e.g. "'done','quarantined'")."""
    return int(db_row(db, f"SELECT COUNT(*) FROM jobs WHERE state IN ({states})")[0])


def poll(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    """Wait for ``check()`` with a deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


class _OpenCounter(FileSystemEventHandler):
    """Counts opens of files (not folders) in the inboxes: a read needs an open."""

    def __init__(self) -> None:
        self.opened = 0

    def dispatch(self, event: FileSystemEvent) -> None:
        """Count one inotify IN_OPEN of a file."""
        if isinstance(event, FileOpenedEvent) and not event.is_directory:
            self.opened += 1


# -- the phases -------------------------------------------------------------------------


class Bench:
    """The shared set-up: work folder, inboxes, emulator, options."""

    def __init__(self, work: Path, files: int, folders: int, idle: float) -> None:
        self.work, self.files, self.idle = work, files, idle
        self.inboxes = [work / "folders" / f"f{k:02d}" / "inbox" for k in range(folders)]
        for inbox in self.inboxes:
            inbox.mkdir(parents=True)
        self.emu = Emulator(keys=[KEY], credits=0, rate_limit=100_000, rate_window=60.0).start()
        self.figures: list[Figure] = []

    def daemon(self, name: str, inboxes: list[Path] | None = None, **api: int) -> Daemon:
        """Start a daemon with its own state folder ``work/name``."""
        state = self.work / name
        state.mkdir()
        cfg = write_config(
            state / "config.toml", self.emu.url, inboxes or self.inboxes, state, **api
        )
        return Daemon(cfg, state / "daemon.log")

    def add(self, *figures: Figure) -> None:
        """Record and show figures as they come."""
        for f in figures:
            self.figures.append(f)
            print("  " + " | ".join(f.row()), flush=True)

    def inotify_phase(self) -> None:
        """Phase A: the burst, then idle and status beside the pending jobs."""
        d = self.daemon("a-inotify", rate_limit=100_000)
        try:
            self.discovery_inotify(d)
            self.paused_idle_and_status(d)
        finally:
            d.stop()

    def discovery_inotify(self, d: Daemon) -> None:
        """Phase A: files landing at once in watched, paused inboxes."""
        d.wait_event("daemon.ready", 60)
        idle_rss = d.memory()["VmRSS"]
        db = db_of(self.work / "a-inotify")
        writer = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--write", str(self.files),
             *map(str, self.inboxes)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        first, last = json.loads(writer.stdout)
        deadline = time.monotonic() + 60 + self.files / 200
        while (n := count(db, "'pending'")) < self.files:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {n} of {self.files} queued; see {d.log_path}")
            time.sleep(0.5)
        end = db_row(db, "SELECT MAX(queued_at) FROM jobs")[0]
        mem = d.memory()
        self.add(
            Figure("writer (not the daemon), files/s", self.files / (last - first), "files/s"),
            Figure("discovery, inotify burst", self.files / (end - first), "files/s", 2000, True),
            Figure("  RSS at READY, before the burst", idle_rss / MIB, "MiB"),
            Figure("peak RSS, burst until all pending", mem["VmHWM"] / MIB, "MiB", 150),
        )

    def paused_idle_and_status(self, d: Daemon) -> None:
        """Phase A continued: idle CPU while paused, status latency with every row."""
        time.sleep(2)  # let the last log lines and the refresh after the burst pass
        self.add(Figure("idle CPU, paused, all pending", d.cpu_percent(self.idle), "%", 1.0))
        cfg = self.work / "a-inotify" / "config.toml"
        settings = load_settings(cfg, create_folders=False)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            result = collect_status(settings)
            runs.append(time.perf_counter() - t0)
        assert result["jobs"]["pending"] == self.files, result["jobs"]
        self.add(Figure("status, collect_status in-process", 1000 * median(runs), "ms", 200))
        cli = [sys.executable, "-m", "bgsyncd", "status", "--json", "--config", str(cfg)]
        # Baseline, same run: the same command against a configuration whose
        # database does not exist yet. It pays the same interpreter start and
        # imports (pydantic-settings alone is ~0.2 s of CPU) and no query.
        empty = self.work / "status-baseline.toml"
        assert str(settings.queue.database) in cfg.read_text(), "baseline needs the path"
        empty.write_text(
            cfg.read_text().replace(str(settings.queue.database), str(self.work / "none.db"))
        )
        base = [*cli[:-1], str(empty)]
        runs = []
        bases: list[float] = []
        for _ in range(5):
            for command, into in ((cli, runs), (base, bases)):
                t0 = time.perf_counter()
                subprocess.run(command, capture_output=True, check=True)
                into.append(time.perf_counter() - t0)
        total, start = 1000 * median(runs), 1000 * median(bases)
        self.add(
            Figure("status, `bgsyncd status --json` CLI, total", total, "ms"),
            Figure("  baseline: the same CLI with no database", start, "ms"),
            Figure("status, CLI minus its start-up baseline", total - start, "ms", 200),
        )
        if runs and median(runs) >= 0.2:
            print(slowest_imports([*cli[:1], "-X", "importtime", *cli[1:]]))

    def discovery_scan(self) -> None:
        """Phase B: the files are there before the daemon starts (fresh database)."""
        d = self.daemon("b-scan", rate_limit=100_000)
        t0 = time.time() - (time.monotonic() - d.started)
        db = db_of(self.work / "b-scan")
        try:
            ready = d.wait_event("daemon.ready", 60 + self.files / 200)
            poll("start-up scan", lambda: count(db, "'pending'") >= self.files, 60)
            end = db_row(db, "SELECT MAX(queued_at) FROM jobs")[0]
            self.add(
                Figure("discovery, start-up scan", self.files / (end - t0), "files/s", 2000, True),
                Figure("  start to READY, scan of new files", ready, "s"),
                Figure("  peak RSS", d.memory()["VmHWM"] / MIB, "MiB", 150),
            )
        finally:
            d.stop()

    def restart(self) -> None:
        """Phase C: every file done and unchanged; restart to READY; then idle."""
        state = self.work / "b-scan"
        db = db_of(state)
        conn = sqlite3.connect(db, isolation_level=None)  # bench set-up: all done at once
        conn.execute("UPDATE jobs SET state = 'done', outputs = '[]'")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        self.emu.configure(credits=10**9)
        opens = _OpenCounter()
        watch = Observer()
        for inbox in self.inboxes:
            watch.schedule(opens, str(inbox), event_filter=[FileOpenedEvent])
        watch.start()
        d = Daemon(state / "config.toml", state / "restart.log")
        try:
            ready = d.wait_event("daemon.ready", 120)
            time.sleep(0.5)  # IN_OPEN events reach the observer asynchronously
            watch.stop()
            watch.join()
            self.add(
                Figure("restart to READY, all done", ready, "s", 10),
                Figure("  inbox files opened during it", opens.opened, "files", 1),
                Figure("  peak RSS", d.memory()["VmHWM"] / MIB, "MiB", 150),
            )
            poll("no new work", lambda: count(db, "'done'") == self.files, 10)
            time.sleep(2)
            idle = d.cpu_percent(self.idle)
            self.add(Figure("idle CPU, nothing to do, all done", idle, "%", 1))
            rescan = self.rescan_cpu(d)
            self.add(
                Figure("  CPU of one rescan (SIGHUP) of all files", rescan, "s"),
                Figure(
                    f"idle CPU + rescan every {RESCAN_SECONDS:.0f} s",
                    idle + 100 * rescan / RESCAN_SECONDS,
                    "%",
                    1,
                ),
            )
        finally:
            if watch.is_alive():
                watch.stop()
            d.stop()

    @staticmethod
    def rescan_cpu(d: Daemon) -> float:
        """CPU seconds of the reconciliation scan a SIGHUP asks for (until quiet again)."""
        c0 = d.cpu_seconds()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_event("config.reloaded", 30)
        before = d.cpu_seconds()
        while True:  # the scan runs in its own thread: wait until the CPU stops moving
            time.sleep(1)
            now = d.cpu_seconds()
            if now - before < 0.02:
                return now - c0
            before = now

    def long_run(self) -> None:
        """Phase D: 1,000 images through the emulator; RSS after 100 against the end."""
        inbox = self.work / "long" / "run" / "inbox"
        inbox.mkdir(parents=True)
        d = self.daemon("d-long", [inbox], rate_limit=100_000)
        db = db_of(self.work / "d-long")
        try:
            d.wait_event("daemon.ready", 60)
            write_files(LONG_RUN_FILES, [str(inbox)], start=10**7)
            finished = "'done','quarantined'"
            poll("100 done", lambda: count(db, finished) >= 100, 120, 0.05)
            first = d.memory()["VmRSS"]
            poll(f"{LONG_RUN_FILES} done", lambda: count(db, finished) >= LONG_RUN_FILES, 600)
            last = d.memory()["VmRSS"]
            bad = count(db, "'quarantined'")
            self.add(
                Figure(f"long run: RSS after 100 of {LONG_RUN_FILES}", first / MIB, "MiB"),
                Figure("long run: RSS growth to the end", 100 * (last - first) / first, "%", 10),
            )
            if bad:
                print(f"  note: {bad} quarantined in the long run; see {d.log_path}")
        finally:
            d.stop()


def db_of(state: Path) -> Path:
    """The queue database in a state folder."""
    return state / "queue.sqlite3"


def median(values: list[float]) -> float:
    """The median (statistics' own, typed for mypy)."""
    return float(statistics.median(values))


def slowest_imports(command: list[str], top: int = 8) -> str:
    """The top-level imports of ``command`` that cost most (``-X importtime``)."""
    err = subprocess.run(command, capture_output=True, text=True, check=False).stderr
    costs = []
    for line in err.splitlines():
        _, cumulative, name = [*line.split("|"), "", ""][:3]
        depth = (len(name) - len(name.lstrip())) // 2  # one space, then two per level
        if cumulative.strip().isdigit() and depth <= 2:
            costs.append((int(cumulative), name.strip()))
    costs.sort(reverse=True)
    return "  slowest imports: " + ", ".join(f"{n} {c / 1000:.0f} ms" for c, n in costs[:top])


def print_table(figures: list[Figure]) -> bool:
    """The final table; True when every budget is met."""
    rows = [("figure", "measured", "budget", "OK/FAIL"), *(f.row() for f in figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    return all(f.ok is not False for f in figures)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 if a figure misses its budget."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--files", type=int, default=None, help="default 100000 (10000 --quick)")
    parser.add_argument("--folders", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="10,000 files, 5 s idle windows")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("roots", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write is not None:  # the writer subprocess
        print(json.dumps(write_files(args.write, args.roots)))
        return 0
    files = args.files or (10_000 if args.quick else 100_000)
    work = Path(tempfile.mkdtemp(prefix="bgsyncd-scale-", dir=args.dir))
    print(f"bench.scale: {files:,} files in {args.folders} folders, work folder {work}")
    bench = Bench(work, files, args.folders, 5.0 if args.quick else 10.0)
    failed = []
    try:
        for phase in (bench.inotify_phase, bench.discovery_scan, bench.restart, bench.long_run):
            try:
                phase()
            except Exception as exc:  # a phase that cannot finish is a failure, not a crash
                print(f"  {phase.__name__} FAILED: {exc}", flush=True)
                failed.append(phase.__name__)
    finally:
        bench.emu.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    ok = print_table(bench.figures) and not failed
    print("all within budget" if ok else f"SOME FIGURES MISS THEIR BUDGET {' '.join(failed)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
