"""Who may see the page and act on it (SPEC §11 "Security").

- On a loopback listener the page needs no login, but the ``Host`` a request
  names must be a loopback name with this port: a page of another site whose
  name an attacker pointed at 127.0.0.1 (DNS rebinding) names its own host and
  is refused.
- On any other address the page is served only with a token
  (``metrics.page_token_file``): a login form checks it and sets an
  ``HttpOnly``, ``SameSite=Strict`` session cookie. Without a token configured
  the page is off there: 404, and the log says why (:meth:`Guard.page_off`).
- Every action is a ``POST`` carrying the session's CSRF token (an HMAC of the
  session id under a secret made at start), whose ``Origin`` names the host the
  request was sent to.

Sessions are signed, not stored: ``<id>.<hmac>``; a restart makes a new secret,
and every browser logs in again (on loopback: gets a new session at once).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections import OrderedDict, deque
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

COOKIE = "bgsyncd_session"
CSRF_HEADER = "HTTP_X_CSRF_TOKEN"
LOGIN_FAILURES_PER_MINUTE = 10  # per client address: more in a minute and it is refused a while
MAX_CLIENTS = 1024  # client addresses whose recent wrong tokens are remembered
_FAILURE_WINDOW = 60.0


def is_loopback(host: str) -> bool:
    """True for a listener address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison of any text a request sent (``compare_digest`` on
    ``str`` refuses non-ASCII with a TypeError; bytes it compares)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _forget_old(failures: deque[float], now: float) -> None:
    while failures and now - failures[0] > _FAILURE_WINDOW:
        failures.popleft()


class Guard:
    """The page's checks for one listener (``host``:``port``), with or without a token."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.loopback = is_loopback(host)
        self.port = port
        self._token = token.encode() if token else None
        self._secret = secrets.token_bytes(32)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # oldest failure first
        self._lock = threading.Lock()

    # -- the page on or off ------------------------------------------------------

    def page_off(self) -> str | None:
        """Why the page is not served on this listener (404), or None when it is."""
        if self.loopback or self._token is not None:
            return None
        return (
            "the listener is not on loopback and no page token is set"
            " (metrics.page_token_file or the credential page_token)"
        )

    @property
    def needs_login(self) -> bool:
        """True when a session must come from the token's login form."""
        return not self.loopback

    # -- hosts and origins -------------------------------------------------------

    def host_allowed(self, environ: WSGIEnvironment) -> bool:
        """On loopback, the request's Host must be a loopback name with our port."""
        if not self.loopback:
            return True  # behind a proxy the name is the proxy's; the token guards it
        host = environ.get("HTTP_HOST", "")
        name, _, port = host.rpartition(":")
        if not name or port != str(self.port):
            return False
        return is_loopback(name.strip("[]"))

    def same_origin(self, environ: WSGIEnvironment) -> bool:
        """True when the request's ``Origin`` names the host it was sent to."""
        origin = environ.get("HTTP_ORIGIN", "")
        host = environ.get("HTTP_HOST", "")
        if not origin or not host:
            return False
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc == host

    # -- sessions ----------------------------------------------------------------

    def _sign(self, what: str) -> str:
        return hmac.new(self._secret, what.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A fresh signed session id, the cookie's value."""
        sid = secrets.token_hex(16)
        return f"{sid}.{self._sign('session:' + sid)}"

    def session(self, environ: WSGIEnvironment) -> str | None:
        """The request's valid session id, or None."""
        try:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        if morsel is None:
            return None
        sid, _, mac = morsel.value.partition(".")
        if not sid or not _same(mac, self._sign("session:" + sid)):
            return None
        return sid

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of session ``sid`` (put into the page, sent back with each action)."""
        return self._sign("csrf:" + sid)

    def csrf_ok(self, environ: WSGIEnvironment, sid: str) -> bool:
        """True when the request carries ``sid``'s CSRF token."""
        return _same(environ.get(CSRF_HEADER, ""), self.csrf_token(sid))

    @staticmethod
    def cookie_header(value: str, environ: WSGIEnvironment) -> tuple[str, str]:
        """The ``Set-Cookie`` header for a session (``Secure`` when the proxy speaks HTTPS)."""
        secure = "; Secure" if environ.get("HTTP_X_FORWARDED_PROTO") == "https" else ""
        return ("Set-Cookie", f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")

    # -- the token login ---------------------------------------------------------

    def check_token(self, given: str, now: float, client: str) -> bool | None:
        """True for the right token, False for a wrong one, None while refusing ``client``.

        The limit is per client address (``REMOTE_ADDR``): wrong tokens from one
        address never lock out another. A refused address is refused even with
        the right token, else the 429 would not slow its guessing. At most
        :data:`MAX_CLIENTS` addresses are remembered (a failure a minute old is
        forgotten; when full, the least recently failing go first).
        """
        if self._token is None:
            return False
        with self._lock:
            self._expire(now)
            failures = self._failures.get(client)
            if failures is not None:
                _forget_old(failures, now)
            if failures is not None and len(failures) >= LOGIN_FAILURES_PER_MINUTE:
                return None
            if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token):
                return True
            if failures is None:
                while len(self._failures) >= MAX_CLIENTS:
                    self._failures.popitem(last=False)
                failures = self._failures[client] = deque()
            failures.append(now)
            self._failures.move_to_end(client)
            return False

    def clients_remembered(self) -> int:
        """How many client addresses the login throttle remembers now."""
        with self._lock:
            return len(self._failures)

    def _expire(self, now: float) -> None:
        """Forget failures older than the window (the dict is ordered by last failure)."""
        while self._failures:
            client, failures = next(iter(self._failures.items()))
            _forget_old(failures, now)
            if failures:
                break
            del self._failures[client]
