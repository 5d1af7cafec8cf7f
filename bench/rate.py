"""How much of the account's rate limit bgsyncd uses, against a serial client.

One emulator on loopback, its latency 1.5 times the pacing interval
(window / limit), serves two keys at once, each with its own sliding window:

- ``bgsyncd run`` (a real subprocess) fed more files than it can send in the run;
- a serial client: the API reference's own Python example
  (``requests.post(url, headers=..., files={"image": f})``) in a loop.

Both are measured from the emulator's request log over the same run, after a
first window of warm-up: achieved rate / limit, the most requests starting in
any window, and the 429s. A serial client can reach only interval / latency of
the limit (about 0.67 here); bgsyncd, with requests in flight side by side,
should reach the limit less the pacer's safety margin.

Run: ``.venv/bin/python -m bench.rate`` (or ``python bench/rate.py``);
``--window 60`` runs at the production window (about 5 minutes). Exit status
1 when bgsyncd misses 0.97 of the limit, sees a 429 or exceeds the limit.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image, ImageDraw

from bgsyncd.emulator import Emulator, RecordedRequest

ROOT = Path(__file__).resolve().parent.parent
DAEMON_KEY = "bench-daemon-key-0001"
SERIAL_KEY = "bench-serial-key-0002"
MAX_IN_FLIGHT = 3


@dataclass(frozen=True)
class Measure:
    """One client's numbers, from the emulator's log."""

    requests: int
    ratio: float  # achieved rate / limit over the steady-state part
    peak: int  # most requests starting in any window
    rejected: int  # 429 answers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="bench.rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=7, help="requests per window (7)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds (20; production 60)")
    parser.add_argument("--windows", type=int, default=4, help="steady-state windows measured")
    parser.add_argument("--latency-factor", type=float, default=1.5, help="x pacing interval")
    parser.add_argument("--verbose", action="store_true", help="print every request start")
    args = parser.parse_args(argv)
    interval = args.window / args.limit
    latency = args.latency_factor * interval
    print(
        f"limit {args.limit} per {args.window:g} s window (pacing interval {interval:.3f} s), "
        f"emulator latency {latency:.3f} s ({args.latency_factor:g} x interval), "
        f"bgsyncd max_in_flight {MAX_IN_FLIGHT}; warm-up 1 window, then "
        f"{args.windows} measured",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bgsyncd-bench-") as tmp:
        daemon, serial = run(
            Path(tmp), args.limit, args.window, args.windows, latency, args.verbose
        )
    return 0 if print_table(args.limit, daemon, serial) else 1


def run(
    tmp: Path, limit: int, window: float, windows: int, latency: float, verbose: bool = False
) -> tuple[Measure, Measure]:
    """Run both clients side by side on one emulator; measure each."""
    # The daemon's requests: one credit check, then images. Enough files that
    # it never runs dry before the warm-up window and the measured ones end.
    wanted = limit * (windows + 1) + 1
    inbox = tmp / "inbox"
    inbox.mkdir()
    daemon_shas = {_write_image(inbox / f"p{i:03}.png", i) for i in range(wanted + limit)}
    serial_files = [tmp / f"serial{i}.png" for i in range(8)]
    serial_shas = {_write_image(p, 1000 + i) for i, p in enumerate(serial_files)}
    with Emulator(
        keys=[DAEMON_KEY, SERIAL_KEY],
        credits=1_000_000,
        rate_limit=limit,
        rate_window=window,
        latency=latency,
    ) as emu:
        config = _write_config(tmp, emu.url, limit, window)
        log = (tmp / "daemon.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BGSYNCD_API_KEY": DAEMON_KEY},
        )
        stop = threading.Event()
        client = threading.Thread(
            target=serial_client, args=(emu.url, serial_files, tmp / "serial-out.png", stop)
        )
        client.start()
        try:
            deadline = time.monotonic() + (windows + 3) * (window + 1.0) + 60.0
            while sum(1 for r in emu.requests() if r.image_sha256 not in serial_shas) < wanted:
                if proc.poll() is not None:
                    raise SystemExit(f"bgsyncd exited early: see {log.name}")
                if time.monotonic() > deadline:
                    raise SystemExit("bgsyncd made too few requests before the deadline")
                time.sleep(0.2)
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=latency + 60)
            log.close()
            client.join(timeout=latency + 30)
        recorded = emu.requests()
    daemon_reqs = [r for r in recorded if r.image_sha256 in daemon_shas or r.method == "GET"]
    serial_reqs = [r for r in recorded if r.image_sha256 in serial_shas]
    if verbose:
        origin = min(r.started for r in recorded)
        for name, reqs in (("bgsyncd", daemon_reqs), ("serial", serial_reqs)):
            starts = " ".join(f"{r.started - origin:.3f}" for r in reqs)
            print(f"{name} starts (s): {starts}")
    return measure(daemon_reqs, limit, window), measure(serial_reqs, limit, window)


def serial_client(url: str, images: list[Path], out: Path, stop: threading.Event) -> None:
    """The reference's Python example, in a loop over ``images``."""
    url = url + "/v1.0/image-without-background"
    headers = {"X-API-Key": SERIAL_KEY}
    n = 0
    while not stop.is_set():
        with images[n % len(images)].open("rb") as image_file:
            files = {"image": image_file}
            response = requests.post(url, headers=headers, files=files, timeout=120)
            if response.status_code == 200:
                out.write_bytes(response.content)
            else:
                print(f"serial client: error: {response.json()}", file=sys.stderr)
        n += 1


def measure(reqs: list[RecordedRequest], limit: int, window: float) -> Measure:
    """Achieved rate / limit after one warm-up window, peak per window, 429s."""
    starts = sorted(r.started for r in reqs)
    rejected = sum(1 for r in reqs if r.status == 429)
    first = next((i for i, s in enumerate(starts) if s >= starts[0] + window), len(starts))
    spans = len(starts) - 1 - first
    # A whole number of `limit`-request periods: a paced client starts in bursts
    # of up to `limit`, and a period boundary anywhere else would count a burst
    # in part. A slower client (fewer requests than a period) uses them all.
    if spans >= limit:
        spans -= spans % limit
    ratio = 0.0
    if spans > 0:
        rate = spans / (starts[first + spans] - starts[first])
        ratio = rate / (limit / window)
    return Measure(len(reqs), ratio, peak(starts, window), rejected)


def peak(starts: Iterable[float], window: float) -> int:
    """The most starts in any window ``[s, s + window)`` (``starts`` in any order)."""
    starts = sorted(starts)
    best, j = 0, 0
    for i, s in enumerate(starts):
        while j < len(starts) and starts[j] < s + window:
            j += 1
        best = max(best, j - i)
    return best


def print_table(limit: int, daemon: Measure, serial: Measure) -> bool:
    """Print the results and whether they meet the issue's "done when"; True if all do."""
    rows = [("bgsyncd run", daemon), ("serial client (reference)", serial)]
    print()
    print(f"{'client':<26} {'requests':>8} {'achieved/limit':>14} {'peak/window':>11} {'429s':>5}")
    for name, m in rows:
        print(
            f"{name:<26} {m.requests:>8} {m.ratio:>14.3f} {f'{m.peak}/{limit}':>11} {m.rejected:>5}"
        )
    if serial.ratio > 0:
        print(f"\nbgsyncd / serial: {daemon.ratio / serial.ratio:.2f}x")
    checks = {
        "bgsyncd >= 0.97 of the limit": daemon.ratio >= 0.97,
        "no 429": daemon.rejected == 0 and serial.rejected == 0,
        "peak never above the limit": daemon.peak <= limit,
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return all(checks.values())


def _write_image(path: Path, n: int) -> str:
    """A small distinct PNG (no two alike, so no cache hit); return its sha256."""
    img = Image.new("RGB", (48 + n % 17, 40 + n // 17 % 13), (235, 235, 230))
    ImageDraw.Draw(img).ellipse((10, 8, 30 + n % 11, 28), fill=(150, 30 + n % 200, 40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _write_config(tmp: Path, url: str, limit: int, window: float) -> Path:
    folder = tmp / "inbox"
    text = f"""
[api]
base_url = "{url}"
rate_limit = {limit}
rate_window_seconds = {window}
max_in_flight = {MAX_IN_FLIGHT}
timeout_seconds = 120

[queue]
database = "{tmp / "state" / "queue.sqlite3"}"
settle_seconds = 0.3

[metrics]
listen = ""

[logging]
level = "info"

[[folder]]
name = "bench"
inbox = "{folder}"
outbox = "{tmp / "outbox"}"
quarantine = "{tmp / "quarantine"}"
"""
    path = tmp / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
