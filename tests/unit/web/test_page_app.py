"""The status page's WSGI app without a browser (SPEC §11): escaping, headers, who may act.

A real SQLite store, real folders and real images; requests are WSGI calls.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bgsyncd.service.backends import load_settings
from bgsyncd.storage.contract import Found, Store
from bgsyncd.storage.sqlite.store import SqliteStore
from bgsyncd.web import app as web_app
from bgsyncd.web.app import PageApp
from bgsyncd.web.security import COOKIE, LOGIN_FAILURES_PER_MINUTE, MAX_CLIENTS, Guard
from bgsyncd.web.thumbcache import ThumbCache
from bgsyncd.web.view import Live
from tests.support.helpers import product_image

EVIL = "<img src=x onerror=alert(1)>.jpg"
HOST = "127.0.0.1:9808"


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.code = int(status.split(maxsplit=1)[0])
        self.headers = dict(headers)
        self.cookies = [v for k, v in headers if k == "Set-Cookie"]
        self.body = body
        self.text = body.decode("utf-8", "replace")


def call(
    app: PageApp,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    remote_addr: str = "127.0.0.1",
    **headers: str,
) -> Answer:
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": HOST,
        "REMOTE_ADDR": remote_addr,
    }
    environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    got: list[Any] = []
    out = b"".join(app(environ, lambda s, h, exc=None: got.append((s, h))))  # type: ignore[arg-type]
    return Answer(got[0][0], got[0][1], out)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Store, Any]:
    for name in ("in", "out", "q"):
        (tmp_path / name).mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[queue]\ndatabase = "{tmp_path}/state/queue.sqlite3"\n'
        '[[folder]]\nname = "f"\ninbox = "in"\noutbox = "out"\nquarantine = "q"\n'
    )
    settings = load_settings(cfg)
    store = SqliteStore(settings.queue.database)
    return tmp_path, store, settings


def make_app(
    setup: tuple[Path, Store, Any], host: str = "127.0.0.1", token: str | None = None, **live: Any
) -> PageApp:
    root, store, settings = setup
    return PageApp(
        Live(store, lambda: settings, **live),
        Guard(host, 9808, token),
        ThumbCache(root / "state" / "thumbs"),
    )


def quarantine(store: Store, root: Path, name: str, data: bytes = b"junk") -> int:
    store.enqueue_many([Found("f", name, len(data), 1, 1)])
    job = store.claim(60)
    assert job is not None
    (root / "q" / name).write_bytes(data)
    store.quarantine(job, "corrupt_image", f"{name} is <b>broken</b>", None, location=name)
    return job.id


def session(app: PageApp) -> tuple[str, str]:
    """(cookie header value, csrf token) of a fresh loopback session."""
    page = call(app, "/")
    cookie = page.cookies[0].split(";")[0]
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    return cookie, csrf


def test_names_are_text_and_every_answer_carries_the_security_headers(setup: Any) -> None:
    root, store, _ = setup
    quarantine(store, root, EVIL)
    app = make_app(setup)
    page = call(app, "/")
    assert page.code == 200
    assert EVIL not in page.text and "<b>" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page.text
    assert 'data-quarantined="&lt;img src=x onerror=alert(1)&gt;.jpg"' in page.text
    assert "<script>" not in page.text and "onclick" not in page.text
    for answer in (page, call(app, "/api/status"), call(app, "/nothing")):
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
    (cookie,) = page.cookies
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_api_status_is_the_status_json(setup: Any) -> None:
    root, store, settings = setup
    quarantine(store, root, "a.jpg")
    from bgsyncd.commands.status import collect_status

    got = json.loads(call(make_app(setup), "/api/status").body)
    want = collect_status(settings)
    got.pop("oldest_pending_seconds"), want.pop("oldest_pending_seconds")
    assert got == want and got["jobs"]["quarantined"] == 1


def test_retry_needs_post_the_csrf_token_and_a_same_origin(setup: Any) -> None:
    root, store, _ = setup
    job_id = quarantine(store, root, "a.jpg")
    woken = threading.Event()
    app = make_app(setup, on_requeued=woken.set)
    cookie, csrf = session(app)
    form = f"job={job_id}".encode()
    origin = f"http://{HOST}"
    assert call(app, "/retry", cookie=cookie).code == 404  # GET is no action
    no_token = call(app, "/retry", "POST", form, cookie=cookie, origin=origin)
    assert no_token.code == 403
    wrong = call(app, "/retry", "POST", form, cookie=cookie, origin=origin, x_csrf_token="x" * 64)
    assert wrong.code == 403
    cross = call(
        app, "/retry", "POST", form, cookie=cookie, origin="http://evil.test", x_csrf_token=csrf
    )
    assert cross.code == 403
    assert store.quarantined() != [] and not woken.is_set()
    ok = call(app, "/retry", "POST", form, cookie=cookie, origin=origin, x_csrf_token=csrf)
    assert ok.code == 200 and json.loads(ok.body)["retried"] == 1
    assert store.quarantined() == [] and (root / "in" / "a.jpg").exists() and woken.is_set()


def test_a_rebound_host_name_is_refused_on_loopback(setup: Any) -> None:
    app = make_app(setup)
    assert call(app, "/", host="evil.test:9808").code == 403
    assert call(app, "/api/status", host="evil.test:9808").code == 403
    assert call(app, "/", host="localhost:9808").code == 200


def test_off_loopback_without_a_token_the_page_is_404_and_the_log_says_why(
    setup: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(setup, host="0.0.0.0")
    for path in ("/", "/api/status", "/thumb/1/before", "/login"):
        assert call(app, path, host="10.0.0.5:9808").code == 404
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert "page.off" in text and "page.refused" in text and "no page token" in text


def test_off_loopback_the_token_login_sets_a_strict_http_only_cookie(setup: Any) -> None:
    app = make_app(setup, host="0.0.0.0", token="s3cret-token")
    h = {"host": "bg.example:443", "origin": "https://bg.example:443"}
    assert "password" in call(app, "/", host=h["host"]).text  # the login form
    assert call(app, "/api/status", host=h["host"]).code == 401
    wrong = call(app, "/login", "POST", b"token=nope", **h)
    assert wrong.code == 403 and not wrong.cookies
    cross = call(app, "/login", "POST", b"token=s3cret-token", host=h["host"], origin="http://x")
    assert cross.code == 403 and not cross.cookies
    ok = call(app, "/login", "POST", b"token=s3cret-token", **h)
    assert ok.code == 303
    (cookie,) = ok.cookies
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    assert call(app, "/api/status", host=h["host"], cookie=value).code == 200
    forged = value[:-4] + "0000"
    assert call(app, "/api/status", host=h["host"], cookie=forged).code == 401


def test_thumbnails_only_for_known_jobs_through_real_folders(setup: Any, tmp_path: Path) -> None:
    root, store, _ = setup
    job_id = quarantine(store, root, "a.jpg", product_image(600, 400))
    app = make_app(setup)
    thumb = call(app, f"/thumb/{job_id}/before")
    assert thumb.code == 200 and thumb.headers["Content-Type"] == "image/png"
    from PIL import Image

    with Image.open(io.BytesIO(thumb.body)) as img:
        assert max(img.size) <= 256
    assert call(app, f"/thumb/{job_id + 1}/before").code == 404  # not a job bgsyncd knows
    assert call(app, "/thumb/../../etc/passwd").code == 404
    # A quarantine folder swapped for a symlink to elsewhere serves nothing.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.jpg").write_bytes(product_image(50, 50))
    (root / "q" / "sub").symlink_to(outside)
    other = quarantine(store, root, "sub/b.jpg", product_image(50, 50))
    assert call(app, f"/thumb/{other}/before").code == 404


def test_the_thumbnail_cache_stays_within_its_bound(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path / "thumbs", max_bytes=10_000)
    for i in range(10):
        cache.put(f"{i:x}-before", os.urandom(3000))
    assert cache.total_bytes() <= 10_000
    assert cache.get("9-before") is not None and cache.get("0-before") is None
    with pytest.raises(ValueError):
        cache.put("../x-before", b"")


def test_requests_are_bounded_a_large_body_and_too_many_at_once_are_refused(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(setup)
    cookie, csrf = session(app)
    big = b"job=" + b"1" * (web_app.MAX_BODY + 1)
    origin = f"http://{HOST}"
    too_big = call(app, "/retry", "POST", big, cookie=cookie, origin=origin, x_csrf_token=csrf)
    assert too_big.code == 413
    for _ in range(web_app.MAX_RENDERS):  # every render slot taken
        assert app._slots.acquire(blocking=False)
    busy = call(app, "/")
    assert busy.code == 503 and busy.headers["Retry-After"] == "1"


def _has_security_headers(answer: Answer) -> bool:
    return (
        "script-src 'self'" in answer.headers.get("Content-Security-Policy", "")
        and answer.headers.get("X-Content-Type-Options") == "nosniff"
        and answer.headers.get("Referrer-Policy") == "no-referrer"
    )


def test_malformed_requests_get_a_clear_answer_never_a_crash(
    setup: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root, store, _ = setup
    job_id = quarantine(store, root, "a.jpg", product_image(60, 40))
    app = make_app(setup)
    cookie, csrf = session(app)
    origin = f"http://{HOST}"
    form = f"job={job_id}".encode()
    many = b"&".join(b"a%d=1" % i for i in range(11)) + b"&" + form
    answers = {
        "non-ASCII CSRF token": (
            call(app, "/retry", "POST", form, cookie=cookie, origin=origin, x_csrf_token="\xe9"),
            403,
        ),
        "non-ASCII cookie": (call(app, "/api/status", cookie=f"{COOKIE}=a.\xe9"), 200),
        "too many fields": (
            call(app, "/retry", "POST", many, cookie=cookie, origin=origin, x_csrf_token=csrf),
            400,
        ),
        "a 5000-digit id": (call(app, "/thumb/" + "9" * 5000 + "/before", cookie=cookie), 404),
        "a non-ASCII digit": (call(app, f"/thumb/\u0660{job_id}/before", cookie=cookie), 404),
    }
    for what, (answer, code) in answers.items():
        assert answer.code == code, what
        assert _has_security_headers(answer), what
    assert store.quarantined() != []  # none of them did anything
    assert "Traceback" not in capsys.readouterr().err


def test_an_unexpected_error_is_a_logged_500_with_the_security_headers(
    setup: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_hosts() -> None:
        raise RuntimeError("the fleet table is gone; token=s3cret")

    app = make_app(setup, hosts=broken_hosts)
    answer = call(app, "/api/status", cookie="x=s3cret")
    assert answer.code == 500 and _has_security_headers(answer)
    assert "s3cret" not in answer.text
    logged = capsys.readouterr()
    assert "page.error" in logged.err and "RuntimeError" in logged.err
    assert "Traceback" not in logged.err and "s3cret" not in logged.err + logged.out


def test_wrong_tokens_from_one_address_do_not_lock_out_another(setup: Any) -> None:
    app = make_app(setup, host="0.0.0.0", token="s3cret-token")
    h = {"host": "bg.example:443", "origin": "https://bg.example:443"}
    attacker, user = "203.0.113.9", "198.51.100.7"
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        assert call(app, "/login", "POST", b"token=guess", attacker, **h).code == 403
    assert call(app, "/login", "POST", b"token=guess", attacker, **h).code == 429
    # The attacker stays refused, even with the right token (else 429 would not slow guessing).
    assert call(app, "/login", "POST", b"token=s3cret-token", attacker, **h).code == 429
    ok = call(app, "/login", "POST", b"token=s3cret-token", user, **h)
    assert ok.code == 303 and ok.cookies


def test_the_login_throttle_remembers_a_bounded_number_of_addresses() -> None:
    guard = Guard("0.0.0.0", 9808, "s3cret-token")
    for i in range(MAX_CLIENTS * 2):
        assert guard.check_token("guess", 1000.0 + i / 1000, f"10.0.{i // 256}.{i % 256}") is False
    assert guard.clients_remembered() <= MAX_CLIENTS
    # A minute on, every failure has expired: a new one leaves one address remembered.
    assert guard.check_token("guess", 1100.0, "10.9.9.9") is False
    assert guard.clients_remembered() == 1


def test_an_address_is_refused_only_while_its_failures_are_recent() -> None:
    guard = Guard("0.0.0.0", 9808, "s3cret-token")
    for i in range(LOGIN_FAILURES_PER_MINUTE - 1):
        assert guard.check_token("guess", 1000.0 + i / 100, "10.0.0.1") is False
    assert guard.check_token("guess", 1030.0, "10.0.0.2") is False  # another, failing later
    assert guard.check_token("guess", 1059.0, "10.0.0.1") is False  # the tenth in a minute
    assert guard.check_token("s3cret-token", 1059.5, "10.0.0.1") is None
    # A minute after its first nine, 10.0.0.1 has one recent failure: it may try again.
    assert guard.check_token("s3cret-token", 1061.0, "10.0.0.1") is True


def _thumb_urls(app: PageApp) -> list[str]:
    return re.findall(r'<img src="(/thumb/[^"]+)"', call(app, "/").text)


def test_cached_thumbnails_need_no_render_slot_and_may_be_kept_by_the_browser(
    setup: Any,
) -> None:
    root, store, _ = setup
    for i in range(8):
        quarantine(store, root, f"p{i}.jpg", product_image(60 + i, 40))
    app = make_app(setup)
    urls = _thumb_urls(app)
    assert len(urls) == 8 and all("?v=" in url for url in urls)
    assert all(call(app, url).code == 200 for url in urls)  # made once, now cached
    for _ in range(web_app.MAX_RENDERS):  # every render slot taken (pages being made)
        assert app._slots.acquire(blocking=False)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda url: call(app, url), urls))
    assert [a.code for a in answers] == [200] * 8
    for answer in answers:
        assert answer.headers["Content-Type"] == "image/png" and _has_security_headers(answer)
        assert answer.headers["Cache-Control"].startswith("private, max-age=")
    # Without the version the page names (an old or made-up URL): served, never kept.
    bare = call(app, urls[0].partition("?")[0])
    assert bare.code == 200 and bare.headers["Cache-Control"] == "no-store"
    assert call(app, urls[0] + "0").headers["Cache-Control"] == "no-store"


def test_a_thumbnail_url_changes_when_its_job_does(setup: Any) -> None:
    root, store, _ = setup
    job_id = quarantine(store, root, "a.jpg", product_image(60, 40))
    app = make_app(setup)
    cookie, csrf = session(app)
    (before,) = _thumb_urls(app)
    origin = f"http://{HOST}"
    form = f"job={job_id}".encode()
    assert (
        call(app, "/retry", "POST", form, cookie=cookie, origin=origin, x_csrf_token=csrf).code
        == 200
    )
    job = store.claim(60)
    assert job is not None and job.id == job_id
    # Mended and sent again (the worker records the new version), then quarantined again.
    mended = root / "q" / "a.jpg"
    mended.write_bytes(product_image(80, 50))
    st = mended.stat()
    store.record_version(job, st.st_size, st.st_mtime_ns, st.st_ino)
    store.quarantine(job, "corrupt_image", "again", None, location="a.jpg")
    (after,) = _thumb_urls(app)
    assert after != before and after.startswith(f"/thumb/{job_id}/before?v=")


def test_an_uncached_thumbnail_waits_a_bounded_while_for_a_render_slot(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, store, _ = setup
    quarantine(store, root, "a.jpg", product_image(60, 40))
    monkeypatch.setattr(web_app, "THUMB_WAIT_SECONDS", 0.05)
    app = make_app(setup)
    (url,) = _thumb_urls(app)
    for _ in range(web_app.MAX_RENDERS):
        assert app._slots.acquire(blocking=False)
    busy = call(app, url)
    assert busy.code == 503 and busy.headers["Retry-After"] == "1"
    app._slots.release()
    assert call(app, url).code == 200
