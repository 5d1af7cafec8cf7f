"""The client against a hostile API, over real loopback HTTP (tests/support/hostile.py).

Whole-request deadlines against a trickle, the answer-size cap against a 500 MB
body, unusable 200s, redirects never followed, and Retry-After values of every kind.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, start_daemon, write_config
from tests.support.helpers import product_image, wait_until
from tests.support.hostile import PNG, Answer, HostileServer, Request

# -- item 2 as an operator saw it: a daemon against a trickling API --------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_trickling_api_no_longer_holds_every_worker(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    # Files named slow* are answered one byte at a time, forever by the old client's
    # measure; everything else is passed to the emulator. As many slow files as
    # workers go first, so before the fix every worker was stuck on one of them.
    def respond(request: Request) -> Answer:
        if b'filename="slow' in request.body:
            return Answer(200, PNG + b"\0" * 100_000, bytes_per_second=20)
        return _forward_to(emulator, request)

    folder = make_folder(tmp_path, "shop")
    port = _free_port()
    with HostileServer(respond) as api:
        config = write_config(
            tmp_path / "c.toml",
            base_url=api.url,
            folders=[folder],
            api={"timeout_seconds": 1.5, "max_in_flight": 2},
            queue={"max_attempts": 2},
            metrics_listen=f"127.0.0.1:{port}",
        )
        d = start_daemon(daemons, config)
        inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
        for i in range(2):  # every file has its own content: no cache hits between them
            (inbox / f"slow{i}.png").write_bytes(product_image(60 + i, 30, "PNG"))
        wait_until(
            lambda: sum(b'filename="slow' in r.body for r in api.requests) >= 2,
            20,
            what="both workers on a trickle",
        )
        for i in range(3):
            (inbox / f"ok{i}.png").write_bytes(product_image(40 + i, 30, "PNG"))
        # Each trickle ends at its deadline, so the workers come back for the others.
        # Three trickles may end in a row before an ok file is answered: that is an
        # api_unreachable pause (SPEC §5), and the credit check 30 s later resumes.
        wait_until(
            lambda: all((outbox / f"ok{i}.png").exists() for i in range(3)),
            75,
            what="the other files processed",
        )
        # Each trickle is cut at its deadline and its file sent again: a timeout is a
        # failure like any other (an attempt while the API answers other files, an
        # api_unreachable pause once nothing else answers: SPEC §5), never a held worker.
        wait_until(
            lambda: sum(b'filename="slow' in r.body for r in api.requests) >= 3,
            30,
            what="a trickled file cut at its deadline and sent again",
        )
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert d.proc.poll() is None
        slow = [r for r in api.requests if b'filename="slow' in r.body]
        assert all(not r.finished for r in slow)  # no trickle was ever waited out
        assert d.stop() == 0


def _forward_to(emulator: Emulator, request: Request) -> Answer:
    """Pass ``request`` to the emulator and hand back its answer."""
    real = httpx.request(
        request.method,
        emulator.url + request.path,
        content=request.body,
        headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        timeout=10,
    )
    content_type = real.headers.get("Content-Type", "application/octet-stream")
    return Answer(real.status_code, real.content, (("Content-Type", content_type),))


@pytest.mark.parametrize("retry_after", ["1e12", "315360000"])
def test_a_daemon_told_to_wait_for_ages_waits_ten_windows_and_goes_on(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], retry_after: str
) -> None:
    # Issue 9 item 4 as seen: 1e12 killed the dispatch thread (OverflowError), ten
    # years stopped dispatch for ten years. Now the wait is 10 windows (here 10 x 0.4 s).
    answers = [Answer(429, b'{"error": "Rate limit exceeded"}', (("Retry-After", retry_after),))]

    def respond(request: Request) -> Answer:
        if request.path.startswith("/v1.0/") and answers:
            return answers.pop()
        return _forward_to(emulator, request)

    folder = make_folder(tmp_path, "shop")
    with HostileServer(respond) as api:
        config = write_config(
            tmp_path / "c.toml",
            base_url=api.url,
            folders=[folder],
            api={"rate_window_seconds": 0.4},
        )
        d = start_daemon(daemons, config)
        (Path(folder["inbox"]) / "a.png").write_bytes(product_image(40, 30, "PNG"))
        wait_until(lambda: not answers, 20, what="the 429")
        limited_at = time.monotonic()
        wait_until((Path(folder["outbox"]) / "a.png").exists, 20, what="the output")
        waited = time.monotonic() - limited_at
        assert 3.0 < waited < 10.0  # the capped 4 s, not ages, and not nothing
        assert d.proc.poll() is None
        assert "Traceback" not in d.output()
        assert d.stop() == 0
