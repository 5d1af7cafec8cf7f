"""``bgsyncd emulator``: serve the emulated API until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from bgsyncd.emulator.account import parse_expiry
from bgsyncd.emulator.service import Emulator


def main(argv: list[str] | None = None) -> int:
    """``bgsyncd emulator``: serve until SIGINT or SIGTERM, then exit 0."""
    parser = argparse.ArgumentParser(
        prog="bgsyncd emulator",
        description="A local WithoutBG-compatible API for tests and demos. "
        "Its --key is a test key of its own, never a real one.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--key", action="append", help="an accepted key (repeatable)")
    parser.add_argument("--credits", type=int, default=1000)
    parser.add_argument("--expires", help="ISO 8601 expiry (default: a year from now)")
    parser.add_argument("--rate-limit", type=int, default=7, help="requests per window per key")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction answering 500")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="fraction charged, unanswered")
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument(
        "--bandwidth",
        type=int,
        default=0,
        metavar="BYTES_PER_S",
        help="read request bodies no faster than this uplink speed (default 0: no limit)",
    )
    parser.add_argument("--seed", type=int)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return exc.code if isinstance(exc.code, int) else 0
    try:
        emulator = Emulator(
            host=args.host, port=args.port, keys=args.key or ["test-key"], credits=args.credits,
            expires=parse_expiry(args.expires) if args.expires else None,
            rate_limit=args.rate_limit, rate_window=args.rate_window, latency=args.latency,
            fail_rate=args.fail_rate, drop_rate=args.drop_rate, max_bytes=args.max_bytes,
            bandwidth=args.bandwidth, seed=args.seed, log=sys.stderr,
        )  # fmt: skip
    except ValueError as exc:
        print(f"bgsyncd emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bgsyncd emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = _on_signals(stop)
    try:
        emulator.start()
        print(f"emulator listening on {emulator.url}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        emulator.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _on_signals(stop: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set ``stop``; return the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may install handlers; the caller stops us

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # a flag only: the main loop does the stopping

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
