"""The client against a hostile API, over real loopback HTTP (tests/support/hostile.py).

Whole-request deadlines against a trickle, the answer-size cap against a 500 MB
body, unusable 200s, redirects never followed, and Retry-After values of every kind.
"""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bgsyncd import errors
from bgsyncd.api.answers import MATTE_LIMIT, answer_limit
from bgsyncd.api.client import Client
from bgsyncd.errors import ConfigError
from bgsyncd.service.backends import load_settings
from tests.support.helpers import noisy_image
from tests.support.hostile import PNG, Answer, HostileServer

KEY = "sk-hostile-5e1d2c3b4a"
BIG = 500 * 1024 * 1024  # never stored: generated as the server sends it
MARGIN = 0.75  # seconds a deadline may be overshot by (thread wake-ups on a busy box)


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as s:
        yield s


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(url: str, timeout: float = 5.0, **kwargs: Any) -> Client:
        clients.append(Client(url, KEY, timeout, **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _no_key(exc: BaseException) -> None:
    assert KEY not in str(exc) and KEY not in repr(exc)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


# -- item 2: every request ends within timeout_seconds ---------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, PNG + b"\0" * 100_000, bytes_per_second=2_000),
        Answer(200, PNG + b"\0" * 100_000, bytes_per_second=2_000, content_length=-1),
        Answer(500, b"x" * 20_000, bytes_per_second=2_000),
    ],
    ids=["200-with-length", "200-until-close", "500-error-body"],
)
def test_a_trickled_answer_ends_within_the_timeout(
    server: HostileServer, make_client: Callable[..., Client], answer: Answer
) -> None:
    server.push(answer)
    client = make_client(server.url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeout) as caught:
        client.remove_background(PNG)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + MARGIN
    assert caught.value.outcome_unknown is True  # the upload was sent: may be charged
    assert server.requests[0].sent > 0  # it really was trickling, not silent
    assert "deadline" in str(caught.value)
    _no_key(caught.value)


def test_a_trickle_over_a_reused_connection_ends_within_the_timeout(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    # The deadline belongs to the request, not to the connection it happens to get.
    server.push(Answer(200, PNG), Answer(200, PNG + b"\0" * 50_000, bytes_per_second=1_000))
    client = make_client(server.url, timeout=1.0)
    assert client.alpha_channel(PNG) == PNG
    started = time.monotonic()
    with pytest.raises(errors.RequestTimeout):
        client.alpha_channel(PNG)
    assert time.monotonic() - started < 1.0 + MARGIN


def test_a_slow_but_timely_answer_is_taken(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    server.push(Answer(200, PNG, bytes_per_second=len(PNG) * 4))  # about a quarter second
    assert make_client(server.url, timeout=3.0).alpha_channel(PNG) == PNG


# -- item 3: the answer cap -----------------------------------------------------------


@pytest.mark.parametrize("length", [None, -1], ids=["declared", "undeclared"])
def test_a_500_mb_answer_is_abandoned_unread(
    server: HostileServer, make_client: Callable[..., Client], length: int | None
) -> None:
    server.push(Answer(200, PNG, filler=BIG, content_length=length))
    client = make_client(server.url, timeout=30.0)
    started = time.monotonic()
    with pytest.raises(errors.UnusableAnswer) as caught:
        client.alpha_channel(PNG)
    assert time.monotonic() - started < 5.0
    assert caught.value.status == 200
    assert str(MATTE_LIMIT) in str(caught.value)
    # The client stopped reading: the server got no further than the cap and the
    # socket buffers, far from the 500 MB it had to send.
    assert server.requests[0].sent < MATTE_LIMIT + 8 * 1024 * 1024
    assert not server.requests[0].finished


_RSS_PROBE = """
import re, sys
from bgsyncd import errors
from bgsyncd.api.client import Client
with Client(sys.argv[1], "k", 60.0) as client:
    for _ in range(3):
        try:
            client.alpha_channel(b"\\x89PNG\\r\\n\\x1a\\n")
        except errors.UnusableAnswer:
            pass
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec).
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
"""


def test_memory_stays_bounded_while_refusing_huge_answers(server: HostileServer) -> None:
    # A matte gets the automatic 16 MiB cap; an answer of 1 GB without a length, three
    # times over, must leave the process small (before the fix it held all of it).
    server.respond = lambda _: Answer(200, PNG, filler=2 * BIG, content_length=-1)
    probe = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    peak_mib = int(probe.stdout.strip())
    assert peak_mib < 150, f"peak RSS {peak_mib} MiB for a cap of 16 MiB"
    assert all(not r.finished for r in server.requests)
    assert len(server.requests) == 3


def test_max_bytes_caps_one_call(server: HostileServer, make_client: Callable[..., Client]) -> None:
    matte = noisy_image(300, 300)  # about 270 kB, incompressible
    server.push(Answer(200, matte), Answer(200, matte))
    client = make_client(server.url)
    with pytest.raises(errors.UnusableAnswer):
        client.alpha_channel(PNG, max_bytes=len(matte) - 1)
    assert client.alpha_channel(PNG, max_bytes=len(matte)) == matte


def test_the_configured_cap_applies_to_base64_answers_after_decoding(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    import base64

    matte = noisy_image(100, 100)
    body = json.dumps({"alpha_channel": base64.b64encode(matte).decode()})
    server.push(Answer.json(body), Answer.json(body))
    with pytest.raises(errors.UnusableAnswer):
        make_client(server.url, max_response_bytes=len(matte) - 1).alpha_channel_base64(PNG)
    assert make_client(server.url, max_response_bytes=len(matte)).alpha_channel_base64(PNG)


def test_answers_are_asked_for_uncompressed(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    server.push(Answer(200, PNG))
    make_client(server.url).alpha_channel(PNG)
    assert server.requests[0].headers["Accept-Encoding"] == "identity"


def test_a_compressed_answer_is_capped_as_it_inflates(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    import gzip

    bomb = gzip.compress(PNG + b"\0" * (64 * 1024 * 1024))  # about 64 kB on the wire
    server.push(Answer(200, bomb, (("Content-Encoding", "gzip"),)))
    with pytest.raises(errors.UnusableAnswer):
        make_client(server.url).alpha_channel(PNG)
    assert server.requests[0].finished  # all of it was sent; the cap held after inflating


def test_answer_limit_is_configured_or_automatic() -> None:
    assert answer_limit(5000, matte=True) == 5000
    assert answer_limit(5000, matte=False, pixels=10**6) == 5000
    assert answer_limit(0, matte=True) == 16 * 1024 * 1024
    assert answer_limit(0, matte=False, pixels=1000 * 800) == 4 * 800_000 + 1024 * 1024
    assert answer_limit(0, matte=False) >= 4 * 80_000_000  # unknown: Pillow's pixel limit


def test_a_negative_max_response_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="max_response_bytes"):
        Client("http://127.0.0.1:9", KEY, 1.0, max_response_bytes=-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", 0), ("max_response_bytes = 0", 0), ("max_response_bytes = 1048576", 1048576)],
)
def test_the_max_response_bytes_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.delenv("BGSYNCD_API__MAX_RESPONSE_BYTES", raising=False)
    path = tmp_path / "bgsyncd.toml"
    path.write_text(f"[api]\n{value}\n", encoding="utf-8")
    assert load_settings(path, create_folders=False).api.max_response_bytes == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [("-1", "greater than or equal to 0"), ("1000", "at least 1048576"), ('"big"', "integer")],
)
def test_a_bad_max_response_bytes_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.delenv("BGSYNCD_API__MAX_RESPONSE_BYTES", raising=False)
    path = tmp_path / "bgsyncd.toml"
    path.write_text(f"[api]\nmax_response_bytes = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, create_folders=False)
    assert "api.max_response_bytes" in str(caught.value)
    assert says in str(caught.value)


# -- unusable 200s ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("alpha_channel", Answer(200, b"<html>hello</html>")),
        ("alpha_channel", Answer(200, b"BMW is a car, not a bitmap " * 4)),  # "BM" alone
        ("alpha_channel", Answer(200, PNG, close_after=len(PNG) // 2)),  # cut off
        ("alpha_channel", Answer(200, PNG[: len(PNG) // 2])),  # a truncated PNG, whole
        ("alpha_channel", Answer(200, PNG, content_length=len(PNG) // 2)),  # length lies short
        ("alpha_channel_base64", Answer.json('{"alpha": "AAAA"}')),  # wrong field
        ("alpha_channel_base64", Answer.json("[1, 2]")),  # wrong JSON
        ("alpha_channel_base64", Answer.json('{"alpha_base64": "!!!"}')),  # not base64
        ("remove_background_base64", Answer.json('{"image": 12}')),
        ("available_credits", Answer.json('{"credits": 5}')),  # missing field
        ("available_credits", Answer(200, b"{" * 2_000_000)),  # over the JSON cap
    ],
)
def test_every_unusable_200_is_an_unusable_answer(
    server: HostileServer, make_client: Callable[..., Client], method: str, answer: Answer
) -> None:
    server.push(answer)
    call = getattr(make_client(server.url), method)
    with pytest.raises(errors.UnusableAnswer) as caught:
        call() if method == "available_credits" else call(PNG)
    assert caught.value.status == 200
    assert caught.value.outcome_unknown is False
    _no_key(caught.value)


def test_uploads_are_labelled_by_the_one_sniffer_bigtiff_included(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    server.push(Answer(200, PNG))
    bigtiff = b"II+\x00" + bytes(60)
    make_client(server.url).alpha_channel(bigtiff)
    [request] = server.requests
    assert b"Content-Type: image/tiff" in request.body


# -- item 10: a redirect is never followed ---------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed(
    server: HostileServer, make_client: Callable[..., Client], status: int
) -> None:
    with HostileServer(respond=lambda _: Answer(200, PNG)) as elsewhere:
        target = f"{elsewhere.url}/steal?from=bgsyncd"
        server.push(Answer.redirect(target, status))
        with pytest.raises(errors.UnexpectedRedirect) as caught:
            make_client(server.url).remove_background(PNG)
        assert len(server.requests) == 1
        assert elsewhere.requests == []  # the key never left for the other host
    assert caught.value.status == status
    assert caught.value.location == target
    assert caught.value.reason == "unexpected_redirect"
    assert target in str(caught.value)
    _no_key(caught.value)


def test_a_redirect_on_the_credit_check_is_not_followed_either(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    server.push(Answer.redirect("http://127.0.0.1:9/available-credit"))
    with pytest.raises(errors.UnexpectedRedirect):
        make_client(server.url).available_credits()
    assert server.paths() == ["/available-credit"]


def test_a_redirect_that_echoes_the_key_is_scrubbed(
    server: HostileServer, make_client: Callable[..., Client]
) -> None:
    server.push(Answer.redirect(f"http://evil.example/?key={KEY}"))
    with pytest.raises(errors.UnexpectedRedirect) as caught:
        make_client(server.url).alpha_channel(PNG)
    assert KEY not in caught.value.location
    _no_key(caught.value)


# -- item 4: Retry-After, whatever it says ---------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12", 12.0),
        ("0.25", 0.25),
        ("315360000", 315360000.0),  # ten years: the pacer caps it
        ("1e12", 1e12),
        ("-5", None),
        ("garbage", None),
        ("inf", None),
        ("nan", None),
        ("9" * 400, None),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW),
        ("Mon, 99 Foo 20200 99:99:99 GMT", None),
        ("", None),
    ],
)
def test_retry_after_of_every_kind_is_read_without_raising(
    server: HostileServer,
    make_client: Callable[..., Client],
    header: str,
    expected: float | None,
) -> None:
    server.push(Answer(429, b'{"error": "Rate limit exceeded"}', (("Retry-After", header),)))
    with pytest.raises(errors.RateLimited) as caught:
        make_client(server.url, clock=lambda: NOW).alpha_channel(PNG)
    assert caught.value.retry_after == expected
