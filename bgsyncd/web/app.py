"""The status page's WSGI app (SPEC §11), served by the metrics listener (``ops.server``).

Routes: ``GET /`` the page (or the login form), ``GET /part`` the page's
content for the script's refresh, ``GET /api/status`` the ``status --json``
object, ``GET /thumb/<job id>/<before|after>`` a thumbnail, ``POST /retry``
(``job=<id>`` or ``all=1``), ``POST /login``, ``GET /static/<name>``.

Every answer carries the security headers (:data:`HEADERS`); what may be seen
and done is :mod:`bgsyncd.web.security`'s decision. The work is bounded: at
most :data:`MAX_RENDERS` pages or thumbnails are being made at once (one more
page gets ``503`` at once, never a queue; one more thumbnail waits at most
:data:`THUMB_WAIT_SECONDS` for a slot; a thumbnail already made needs none),
a request body is at most
:data:`MAX_BODY` bytes, and a thumbnail's source at most :data:`MAX_SOURCE_BYTES`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape

from bgsyncd import imaging
from bgsyncd.errors import describe_os_error
from bgsyncd.files.inputs import read_input
from bgsyncd.inbox.returns import quarantined_at, return_quarantined
from bgsyncd.logs import get_logger
from bgsyncd.web.security import Guard
from bgsyncd.web.thumbcache import ThumbCache
from bgsyncd.web.view import RECENT_JOBS, Live, page_model, status_json, thumb_version

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from bgsyncd.storage.contract import Job

_log = get_logger("bgsyncd.page")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
MAX_RENDERS = 4  # pages, parts and thumbnails being made at once
MAX_BODY = 4096  # a POST's body: a form of a few fields
MAX_FIELDS = 10  # ... and at most this many
MAX_SOURCE_BYTES = 64 * 1024 * 1024  # a thumbnail's source read at most
_STATIC = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
THUMB_WAIT_SECONDS = 2.0  # a thumbnail to make waits this long for a render slot, then 503
_WARN_EVERY_SECONDS = 60.0
_JOB_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits, short enough for int() and a SQLite id

Answer = tuple[str, list[tuple[str, str]], bytes]


class PageApp:
    """The status page for one listener; call it as a WSGI app."""

    def __init__(self, live: Live, guard: Guard, thumbs: ThumbCache) -> None:
        self.live = live
        self.guard = guard
        self.thumbs = thumbs
        self._slots = threading.BoundedSemaphore(MAX_RENDERS)
        self._warned = 0.0
        self._env = Environment(
            loader=PackageLoader("bgsyncd.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        static = resources.files("bgsyncd.web") / "static"
        self._static = {name: (static / name).read_bytes() for name in _STATIC}
        off = guard.page_off()
        if off is not None:
            _log.warning("page.off", reason=off)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, headers, body = self._answer(environ)
        except Refused as refused:
            status, headers, body = refused.answer
        except Exception as exc:  # a bug: logged, a 500, never a traceback
            self._log_error(environ, exc)
            status, headers, body = _text("500 Internal Server Error", "internal error\n")
        start_response(status, [*HEADERS, *headers])
        return [body]

    @staticmethod
    def _log_error(environ: WSGIEnvironment, exc: Exception) -> None:
        """``page.error``: the request's method and path, the error's type and where it was
        raised; never its message or the request's headers (a token or cookie may be in them)."""
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        where = f"{Path(last.filename).name}:{last.lineno} {last.name}" if last else ""
        _log.error(
            "page.error",
            method=str(environ.get("REQUEST_METHOD", ""))[:10],
            path=str(environ.get("PATH_INFO", ""))[:100],
            error=type(exc).__name__,
            at=where,
        )

    # -- routing -------------------------------------------------------------------

    def _answer(self, environ: WSGIEnvironment) -> Answer:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        off = self.guard.page_off()
        if off is not None:
            self._warn_off(path, off)
            return _text("404 Not Found", "not found\n")
        if not self.guard.host_allowed(environ):
            return _text("403 Forbidden", "this listener does not answer to that host name\n")
        if path.startswith("/static/") and method == "GET":
            return self._static_file(path.removeprefix("/static/"))
        if path == "/login":
            return self._login(environ) if method == "POST" else self._login_form(environ, "")
        sid = self.guard.session(environ)
        new_cookie: list[tuple[str, str]] = []
        if sid is None:
            if self.guard.needs_login:
                if path == "/" and method == "GET":
                    return self._login_form(environ, "")
                return _text("401 Unauthorized", "log in first\n")
            cookie = self.guard.new_session()
            sid = cookie.partition(".")[0]
            new_cookie = [self.guard.cookie_header(cookie, environ)]
        if method == "POST":
            if path != "/retry":
                return _text("404 Not Found", "not found\n")
            return self._retry(environ, sid)
        if method != "GET":
            return _text("405 Method Not Allowed", "GET or POST\n")
        if path == "/api/status":
            return self._bounded(lambda: _json(status_json(self.live)))
        if path in ("/", "/part"):
            status, headers, body = self._bounded(lambda: self._page(path, sid))
            return status, [*headers, *new_cookie], body
        if path.startswith("/thumb/"):
            return self._thumb(path.removeprefix("/thumb/"), environ.get("QUERY_STRING", ""))
        return _text("404 Not Found", "not found\n")

    def _bounded(self, make: Callable[[], Answer], wait: float = 0.0) -> Answer:
        """``make()`` in one of the render slots, or 503 when none is free within ``wait`` s."""
        got = self._slots.acquire(timeout=wait) if wait > 0 else self._slots.acquire(blocking=False)
        if not got:
            status, headers, body = _text("503 Service Unavailable", "busy; try again\n")
            return status, [*headers, ("Retry-After", "1")], body
        try:
            return make()
        finally:
            self._slots.release()

    def _warn_off(self, path: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_SECONDS:
            self._warned = now
            _log.warning("page.refused", path=path[:100], reason=reason)

    # -- pages ---------------------------------------------------------------------

    def _page(self, path: str, sid: str) -> Answer:
        model = page_model(self.live)
        name = "page.html" if path == "/" else "part.html"
        html = self._env.get_template(name).render(
            **model, csrf=self.guard.csrf_token(sid), login=self.guard.needs_login
        )
        return _html("200 OK", html)

    def _login_form(self, environ: WSGIEnvironment, error: str) -> Answer:
        if not self.guard.needs_login:
            return _redirect("/")
        return _html("200 OK", self._env.get_template("login.html").render(error=error))

    def _login(self, environ: WSGIEnvironment) -> Answer:
        if not self.guard.needs_login:
            return _redirect("/")
        if not self.guard.same_origin(environ):
            return _text("403 Forbidden", "cross-origin login refused\n")
        form = _form(environ)
        client = str(environ.get("REMOTE_ADDR", ""))
        verdict = self.guard.check_token(form.get("token", ""), time.monotonic(), client)
        if verdict is None:
            return _text("429 Too Many Requests", "too many wrong tokens; wait a minute\n")
        if not verdict:
            _log.warning("page.login_failed")
            status, headers, body = self._login_form(environ, "That token is not right.")
            return "403 Forbidden", headers, body
        cookie = self.guard.new_session()
        status, headers, body = _redirect("/")
        return status, [*headers, self.guard.cookie_header(cookie, environ)], body

    def _static_file(self, name: str) -> Answer:
        if name not in self._static:
            return _text("404 Not Found", "not found\n")
        return "200 OK", [("Content-Type", _STATIC[name])], self._static[name]

    # -- actions -------------------------------------------------------------------

    def _retry(self, environ: WSGIEnvironment, sid: str) -> Answer:
        if not self.guard.same_origin(environ):
            return _text("403 Forbidden", "cross-origin request refused\n")
        if not self.guard.csrf_ok(environ, sid):
            return _text("403 Forbidden", "missing or wrong CSRF token\n")
        form = _form(environ)
        everything = form.get("all") == "1"
        wanted = form.get("job", "")
        retried, failed = 0, []
        for job in self.live.queue.quarantined():
            if not everything and str(job.id) != wanted:
                continue
            folder = self.live.folder(job.folder)
            if folder is None:
                continue
            try:
                if return_quarantined(folder, job, self.live.queue):
                    retried += 1
            except OSError as exc:  # the disk's answer: the file stays quarantined
                failed.append(f"{job.relpath}: {describe_os_error(exc)}")
        if retried:
            _log.info("page.retried", files=retried)
            self.live.on_requeued()
        return _json({"retried": retried, "failed": failed})

    # -- thumbnails ----------------------------------------------------------------

    def _thumb(self, rest: str, query: str) -> Answer:
        """A thumbnail: from the cache without a render slot, else made in one (waiting at
        most :data:`THUMB_WAIT_SECONDS` for it). At the URL the page names (``?v=`` the
        job's :func:`~bgsyncd.web.view.thumb_version`) the browser may keep it: the
        version changes whenever the thumbnail could; any other URL is ``no-store``."""
        job_id, _, kind = rest.partition("/")
        if kind not in ("before", "after") or not _JOB_ID.fullmatch(job_id):
            return _text("404 Not Found", "not found\n")
        # Only a job the page lists: a file bgsyncd knows, never a path from the request.
        recent = {r.job.id: r for r in self.live.queue.recent(RECENT_JOBS)}
        entry = recent.get(int(job_id))
        if entry is None:
            return _text("404 Not Found", "not found\n")
        version = thumb_version(entry)
        keep = "private, max-age=86400" if query == f"v={version}" else "no-store"
        headers = [("Content-Type", "image/png"), ("Cache-Control", keep)]
        key = f"{entry.job.id:x}{version}-{kind}"
        data = self.thumbs.get(key)
        if data is not None:
            return "200 OK", headers, data
        return self._bounded(
            lambda: self._make_thumb(entry.job, kind, key, headers), THUMB_WAIT_SECONDS
        )

    def _make_thumb(self, job: Job, kind: str, key: str, headers: list[tuple[str, str]]) -> Answer:
        data = self.thumbs.get(key)  # made meanwhile by a request that had the slot
        if data is None:
            source = self._source(job, kind)
            if source is None:
                return _text("404 Not Found", "not found\n")
            try:
                data = imaging.make_thumbnail(source)
            except imaging.CorruptImage:
                return _text("404 Not Found", "not an image\n")
            self.thumbs.put(key, data)
        return "200 OK", headers, data

    def _source(self, job: Job, kind: str) -> bytes | None:
        """The bytes a thumbnail is made from, read through the folders' descriptors."""
        folder = self.live.folder(job.folder)
        if folder is None:
            return None
        places = []
        if kind == "after" and job.state == "done" and job.outputs:
            if not job.outputs[0].startswith("/"):  # the folder's own tree
                places.append((folder.outbox, job.outputs[0]))
        elif kind == "before" and job.state == "quarantined":
            places.append((folder.quarantine, quarantined_at(job)))
        elif kind == "before":
            places.append((folder.inbox, job.relpath))
            if folder.done is not None:
                places.append((folder.done, job.relpath))
        for root, relpath in places:
            try:
                found = read_input(root, relpath, MAX_SOURCE_BYTES)
            except (OSError, ValueError):
                continue
            if found is not None and found[0] is not None:
                return found[0]
        return None


class Refused(Exception):
    """A request the page answers with ``answer`` (a 4xx) wherever it was found wanting."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer[0])
        self.answer = answer


def _form(environ: WSGIEnvironment) -> dict[str, str]:
    """A POST's url-encoded fields (first value of each); :class:`Refused` for a body too
    large (413) or of too many fields (400)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        raise Refused(_text("413 Content Too Large", "too large\n"))
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=MAX_FIELDS)
    except ValueError:
        raise Refused(_text("400 Bad Request", "too many fields\n")) from None
    return {k: v[0] for k, v in fields.items()}


def _text(status: str, text: str) -> Answer:
    return status, [("Content-Type", "text/plain; charset=utf-8")], text.encode()


def _html(status: str, html: str) -> Answer:
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
    return status, headers, html.encode()


def _json(value: Any) -> Answer:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    return "200 OK", headers, json.dumps(value).encode()


def _redirect(to: str) -> Answer:
    return "303 See Other", [("Location", to), ("Content-Type", "text/plain")], b""
