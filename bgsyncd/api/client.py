"""The WithoutBG API client: one method per endpoint, and the one place httpx errors are mapped.

Requests are sent exactly as ``reference/withoutbg-api.md`` describes (multipart field
``image``, JSON ``{"image": ...}``, ``X-API-Key``); answers are read liberally, since the
live service also uses ``image_base64``/``alpha_base64``, ``detail`` and ``credit``.

Every failure leaves this module as a :mod:`bgsyncd.errors` exception::

    HTTP 401                               InvalidApiKey         (account: pause)
    HTTP 402                               InsufficientCredits   (account: pause)
    HTTP 403                               CreditsExpired        (account: pause)
    HTTP 413                               FileTooLarge          (file: quarantine)
    HTTP 415                               UnsupportedMedia      (file: quarantine)
    HTTP 400, 422 on an image endpoint     PermanentFileError    (rejected_by_api)
    HTTP 3xx (never followed)              UnexpectedRedirect(location)  (account: pause)
    HTTP 429                               RateLimited(retry_after: seconds, None if unreadable)
    HTTP 5xx, any other status (also
      400/422 on available-credit)         ServerError           (outcome_unknown for 502/504)
    200 with an unusable body (not an
      image, cut off, over the size cap,
      wrong JSON, no image field)          UnusableAnswer        (outcome_unknown=False)
    ConnectTimeout, PoolTimeout,
      WriteTimeout                         RequestTimeout        (outcome_unknown=False)
    ReadTimeout, or the whole-request
      deadline passed after sending        RequestTimeout        (outcome_unknown=True)
    ConnectError (refused, DNS, TLS,
      no route)                            Unreachable           (outcome_unknown=False)
    WriteError, ProxyError,
      LocalProtocolError                   ConnectionFailed      (outcome_unknown=False)
    ReadError, RemoteProtocolError,
      any other httpx error                ConnectionFailed      (outcome_unknown=True)
    the gate raised Stopped, or the
      client was closed                    Stopped               (nothing was sent)

Every request ends within ``timeout`` seconds, first byte to last: the socket's every
connect, write and read is given only the time left before that deadline (a trickling
server cannot stretch it one byte at a time). Bodies are streamed and counted: an answer
over its cap is abandoned unread (the connection is closed, not drained).

``outcome_unknown`` is True only when the whole request may have reached the API and
been charged: an upload that failed while being written cannot have been processed.
Messages carry the endpoint, the status and the API's own error text, never the key;
the key is scrubbed from them anyway, and the httpx exception is not chained (its
request holds the headers).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bgsyncd import __version__, errors
from bgsyncd.api import answers
from bgsyncd.api.deadline import DEADLINE_PASSED, DeadlineBackend, deadline_transport
from bgsyncd.api.endpoints import (
    ALPHA_CHANNEL,
    ALPHA_CHANNEL_BASE64,
    AVAILABLE_CREDIT,
    ENDPOINTS,
    REMOVE_BACKGROUND,
    REMOVE_BACKGROUND_BASE64,
)
from bgsyncd.files.formats import media_type

_PATHS = {name: f"/v1.0/{name}" for name in ENDPOINTS} | {AVAILABLE_CREDIT: "/available-credit"}

_STATUS_ERRORS: dict[int, type[errors.ApiError]] = {
    401: errors.InvalidApiKey,
    402: errors.InsufficientCredits,
    403: errors.CreditsExpired,
    413: errors.FileTooLarge,
    415: errors.UnsupportedMedia,
}
_JSON_LIMIT = 1024 * 1024  # the credit answer is a few dozen bytes
_ERROR_LIMIT = 64 * 1024  # enough for any error text; the rest is never read
_PNG_END = b"IEND"  # the last chunk of a whole PNG
# Failures that mean the API cannot have processed (and charged) the request: no
# connection, or an upload cut short. Everything else may have reached it.
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.ProxyError,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
)


@dataclass(frozen=True)
class Credits:
    """The account balance: credits left and when they expire (None when not given)."""

    available: int
    expires_at: datetime | None


class Client:
    """A WithoutBG API client over one reused, thread-safe ``httpx.Client``.

    ``gate`` is called right before every request (the pacer's ``acquire``; a
    :class:`~bgsyncd.errors.Stopped` it raises propagates); ``observe(endpoint, code,
    seconds)`` after every request, with code the HTTP status or ``"error"``. A request
    on a closed client raises :class:`~bgsyncd.errors.Stopped`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float,
        *,
        gate: Callable[[], object] | None = None,
        observe: Callable[[str, str, float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        max_response_bytes: int = 0,
    ) -> None:
        url = _check_base_url(base_url)
        if not all(0x21 <= ord(c) <= 0x7E for c in api_key):
            # Say what is wrong without echoing the key: a trailing newline is the usual cause.
            raise ValueError("the API key contains whitespace or non-ASCII characters")
        if not timeout > 0:
            raise ValueError(f"the API timeout must be positive, got {timeout!r}")
        if max_response_bytes < 0:
            raise ValueError(f"max_response_bytes must be >= 0, got {max_response_bytes!r}")
        self._key = api_key
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._deadlines = DeadlineBackend()
        self._gate = gate
        self._observe = observe
        self._clock = clock
        self._http = httpx.Client(
            base_url=url,
            headers={
                "User-Agent": f"bgsyncd/{__version__} (+python-httpx)",
                "X-API-Key": api_key,
                # Images do not compress; a compressed answer could not be capped
                # before it is inflated (a gzip bomb).
                "Accept-Encoding": "identity",
            },
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            transport=transport or deadline_transport(self._deadlines),
        )

    def __repr__(self) -> str:
        return f"Client(base_url={str(self._http.base_url)!r})"

    def answer_limit(self, *, matte: bool, pixels: int | None = None) -> int:
        """The most bytes an image answer may have (see :func:`.answers.answer_limit`)."""
        return answers.answer_limit(self._max_response_bytes, matte=matte, pixels=pixels)

    def remove_background(
        self, image: bytes, filename: str = "image", *, max_bytes: int | None = None
    ) -> bytes:
        """Upload ``image`` (multipart) and return the transparent PNG cut-out.

        ``max_bytes`` caps the answer (default: ``answer_limit(matte=False)``; pass
        ``client.answer_limit(matte=False, pixels=w * h)`` when the size is known).
        """
        limit = max_bytes or self.answer_limit(matte=False)
        body = self._send(REMOVE_BACKGROUND, limit, files=_part(image, filename))
        return self._image(REMOVE_BACKGROUND, body)

    def remove_background_base64(self, image: bytes, *, max_bytes: int | None = None) -> bytes:
        """Send ``image`` base64-encoded in JSON and return the decoded cut-out."""
        limit = max_bytes or self.answer_limit(matte=False)
        body = self._send(REMOVE_BACKGROUND_BASE64, _b64_size(limit), json={"image": _b64(image)})
        names = ("image", "image_base64")
        return self._b64_field(REMOVE_BACKGROUND_BASE64, body, names, limit)

    def alpha_channel(
        self, image: bytes, filename: str = "image", *, max_bytes: int | None = None
    ) -> bytes:
        """Upload ``image`` (multipart) and return the grayscale PNG mask.

        ``max_bytes`` caps the answer (default: ``answer_limit(matte=True)``).
        """
        limit = max_bytes or self.answer_limit(matte=True)
        body = self._send(ALPHA_CHANNEL, limit, files=_part(image, filename))
        return self._image(ALPHA_CHANNEL, body)

    def alpha_channel_base64(self, image: bytes, *, max_bytes: int | None = None) -> bytes:
        """Send ``image`` base64-encoded in JSON and return the decoded mask."""
        limit = max_bytes or self.answer_limit(matte=True)
        body = self._send(ALPHA_CHANNEL_BASE64, _b64_size(limit), json={"image": _b64(image)})
        names = ("alpha_channel", "alpha_base64")
        return self._b64_field(ALPHA_CHANNEL_BASE64, body, names, limit)

    def available_credits(self) -> Credits:
        """Ask for the balance; an unusable answer is an UnusableAnswer."""
        body = self._json(AVAILABLE_CREDIT, self._send(AVAILABLE_CREDIT, _JSON_LIMIT))
        raw = answers.first(body, ("available_credits", "credit"))
        available = answers.as_int(raw)
        if available is None:
            raise self._malformed(AVAILABLE_CREDIT, f"no usable credit count ({raw!r:.50})")
        return Credits(available, answers.as_datetime(body.get("expiration_date")))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the boundary ---------------------------------------------------------------

    def _send(self, endpoint: str, limit: int, **kwargs: Any) -> bytes:
        """Pass the gate, send one request, read its 200 body (at most ``limit`` bytes)
        before the deadline, observe it, and map every failure."""
        if self._gate is not None:
            self._gate()
        method = "GET" if endpoint == AVAILABLE_CREDIT else "POST"
        started = time.monotonic()
        deadline = started + self._timeout
        try:
            with (
                self._deadlines.until(deadline),
                self._http.stream(method, _PATHS[endpoint], **kwargs) as response,
            ):
                status = response.status_code
                outcome = self._answer(endpoint, response, limit, deadline)
        except RuntimeError:
            if not self._http.is_closed:
                raise
            # close() came first (shutdown): nothing was sent, the daemon is stopping.
            raise errors.Stopped(f"{endpoint}: the API client is closed") from None
        except httpx.HTTPError as exc:
            self._record(endpoint, "error", time.monotonic() - started)
            outcome = self._transport_error(endpoint, exc)
        else:
            self._record(endpoint, str(status), time.monotonic() - started)
        if isinstance(outcome, bytes):
            return outcome
        # Raised outside the except block so the httpx exception (whose request holds the
        # key in its headers) is neither chained nor shown in a traceback.
        raise outcome

    def _answer(
        self, endpoint: str, response: httpx.Response, limit: int, deadline: float
    ) -> bytes | errors.ApiError:
        """The body of a 200, or the error an answer means. A timeout propagates."""
        status = response.status_code
        if 300 <= status < 400:
            return self._redirect(endpoint, response)  # nothing more is read
        if status != 200:
            try:
                body, _ = _take(response, _ERROR_LIMIT, deadline)
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError:
                body = b""  # the status says enough
            return self._status_error(endpoint, response, body)
        try:
            body, over = _take(response, limit, deadline)
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            return self._malformed(endpoint, f"the answer was cut off ({type(exc).__name__})")
        if over:
            return self._malformed(endpoint, f"the answer is over {limit} bytes; not read")
        return body

    def _record(self, endpoint: str, code: str, seconds: float) -> None:
        if self._observe is None:
            return
        with contextlib.suppress(Exception):  # metrics observe; they never break a request
            self._observe(endpoint, code, seconds)

    def _transport_error(self, endpoint: str, exc: httpx.HTTPError) -> errors.ApiError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, httpx.ReadTimeout):
            detail = f"ReadTimeout: no whole answer within the deadline of {self._timeout:g} s"
        message = self._scrub(f"{endpoint}: {answers.clip(detail)}")
        timed_out = isinstance(exc, httpx.TimeoutException)
        kind = errors.RequestTimeout if timed_out else errors.ConnectionFailed
        if isinstance(exc, httpx.ConnectError):
            kind = errors.Unreachable  # no connection at all: not the file's fault
        return kind(message, outcome_unknown=not isinstance(exc, _NOT_SENT))

    def _redirect(self, endpoint: str, response: httpx.Response) -> errors.ApiError:
        status = response.status_code
        location = self._scrub(answers.clip(response.headers.get("Location", "")))
        message = f"{endpoint}: HTTP {status}: redirect to {location or 'nowhere'!r}, not followed"
        return errors.UnexpectedRedirect(self._scrub(message), status, location=location)

    def _status_error(
        self, endpoint: str, response: httpx.Response, body: bytes
    ) -> errors.ApiError:
        status = response.status_code
        text = answers.error_text(body, response.reason_phrase)
        message = self._scrub(f"{endpoint}: HTTP {status}: {text}")
        if status == 429:
            retry_after = answers.retry_after(response.headers.get("Retry-After"), self._clock())
            return errors.RateLimited(message, retry_after)
        if status in _STATUS_ERRORS:
            return _STATUS_ERRORS[status](message, status)
        if status in (400, 422) and endpoint != AVAILABLE_CREDIT:
            return errors.PermanentFileError(message, status)
        # A gateway that gave up (502/504) may have passed the upload on to be charged.
        return errors.ServerError(message, status, outcome_unknown=status in (502, 504))

    # -- reading answers liberally ----------------------------------------------------

    def _malformed(self, endpoint: str, what: str) -> errors.UnusableAnswer:
        return errors.UnusableAnswer(self._scrub(f"{endpoint}: HTTP 200: {what}"), 200)

    def _image(self, endpoint: str, data: bytes) -> bytes:
        mime = media_type(data)
        if mime is None:
            head = answers.clip(data[: answers.MAX_TEXT].decode("utf-8", "replace"))
            raise self._malformed(endpoint, f"expected an image, got {len(data)} bytes: {head!r}")
        if mime == "image/png" and _PNG_END not in data[-64:]:
            raise self._malformed(endpoint, f"a PNG cut off after {len(data)} bytes (no IEND)")
        return data

    def _json(self, endpoint: str, data: bytes) -> dict[str, Any]:
        text = data.decode("utf-8", "replace")
        try:
            body = json.loads(data)
        except ValueError:
            raise self._malformed(endpoint, f"not JSON: {answers.clip(text)!r}") from None
        if not isinstance(body, dict):
            raise self._malformed(endpoint, f"not a JSON object: {answers.clip(text)!r}")
        return body

    def _b64_field(self, endpoint: str, data: bytes, names: tuple[str, ...], limit: int) -> bytes:
        value = answers.first(self._json(endpoint, data), names)
        if not isinstance(value, str):
            raise self._malformed(endpoint, f"no {' or '.join(names)} string in the answer")
        decoded = answers.from_base64(value)
        if decoded is None:
            raise self._malformed(endpoint, f"{names[0]} is not valid base64")
        data = decoded
        if len(data) > limit:
            raise self._malformed(endpoint, f"the image is over {limit} bytes")
        return self._image(endpoint, data)

    def _scrub(self, message: str) -> str:
        return message.replace(self._key, "***") if self._key else message


def _check_base_url(base_url: str) -> httpx.URL:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"invalid API base_url {base_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"invalid API base_url {base_url!r}: expected http:// or https:// and a host,"
            " e.g. https://api.withoutbg.com"
        )
    return url


def _part(image: bytes, filename: str) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (filename, image, media_type(image) or "application/octet-stream")}


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")


def _b64_size(limit: int) -> int:
    """The JSON answer that carries an image of ``limit`` bytes in base64, with room."""
    return limit * 4 // 3 + 64 * 1024


def _take(response: httpx.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Read the body, at most ``limit`` bytes; ``(what was read, over the limit)``.

    A declared length over the limit is believed and nothing is read; otherwise the
    count is kept as the body streams in, and reading stops at the first byte over.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if time.monotonic() >= deadline:  # any transport, even one without our sockets
            raise httpx.ReadTimeout(DEADLINE_PASSED)
    return b"".join(chunks), False
