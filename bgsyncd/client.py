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
    HTTP 429                               RateLimited(retry_after: seconds or HTTP-date)
    HTTP 5xx, any other status (also
      400/422 on available-credit)         ServerError           (outcome_unknown for 502/504)
    200 with an unusable body              MalformedResponse     (outcome_unknown=False)
    ConnectTimeout, PoolTimeout,
      WriteTimeout                         RequestTimeout        (outcome_unknown=False)
    ReadTimeout                            RequestTimeout        (outcome_unknown=True)
    ConnectError, WriteError, ProxyError,
      LocalProtocolError                   ConnectionFailed      (outcome_unknown=False)
    ReadError, RemoteProtocolError,
      any other httpx error                ConnectionFailed      (outcome_unknown=True)
    the gate raised Stopped, or the
      client was closed                    Stopped               (nothing was sent)

``outcome_unknown`` is True only when the whole request may have reached the API and
been charged: an upload that failed while being written cannot have been processed.
Messages carry the endpoint, the status and the API's own error text, never the key;
the key is scrubbed from them anyway, and the httpx exception is not chained (its
request holds the headers).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from bgsyncd import __version__, errors

# Endpoint names double as the ``endpoint`` metric label.
REMOVE_BACKGROUND = "image-without-background"
REMOVE_BACKGROUND_BASE64 = "image-without-background-base64"
ALPHA_CHANNEL = "alpha-channel"
ALPHA_CHANNEL_BASE64 = "alpha-channel-base64"
AVAILABLE_CREDIT = "available-credit"
ENDPOINTS = (
    REMOVE_BACKGROUND,
    REMOVE_BACKGROUND_BASE64,
    ALPHA_CHANNEL,
    ALPHA_CHANNEL_BASE64,
    AVAILABLE_CREDIT,
)
_PATHS = {name: f"/v1.0/{name}" for name in ENDPOINTS} | {AVAILABLE_CREDIT: "/available-credit"}

_STATUS_ERRORS: dict[int, type[errors.ApiError]] = {
    401: errors.InvalidApiKey,
    402: errors.InsufficientCredits,
    403: errors.CreditsExpired,
    413: errors.FileTooLarge,
    415: errors.UnsupportedMedia,
}
# The six formats the API accepts, by signature; used for the upload's part type and
# to recognise an image in an answer.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
_MAX_TEXT = 200
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
    ) -> None:
        url = _check_base_url(base_url)
        if not all(0x21 <= ord(c) <= 0x7E for c in api_key):
            # Say what is wrong without echoing the key: a trailing newline is the usual cause.
            raise ValueError("the API key contains whitespace or non-ASCII characters")
        if not timeout > 0:
            raise ValueError(f"the API timeout must be positive, got {timeout!r}")
        self._key = api_key
        self._gate = gate
        self._observe = observe
        self._clock = clock
        self._http = httpx.Client(
            base_url=url,
            headers={
                "User-Agent": f"bgsyncd/{__version__} (+python-httpx)",
                "X-API-Key": api_key,
            },
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client(base_url={str(self._http.base_url)!r})"

    def remove_background(self, image: bytes, filename: str = "image") -> bytes:
        """Upload ``image`` (multipart) and return the transparent PNG cut-out."""
        response = self._send(REMOVE_BACKGROUND, files=_part(image, filename))
        return self._image(REMOVE_BACKGROUND, response.content)

    def remove_background_base64(self, image: bytes) -> bytes:
        """Send ``image`` base64-encoded in JSON and return the decoded cut-out."""
        response = self._send(REMOVE_BACKGROUND_BASE64, json={"image": _b64(image)})
        return self._b64_field(REMOVE_BACKGROUND_BASE64, response, ("image", "image_base64"))

    def alpha_channel(self, image: bytes, filename: str = "image") -> bytes:
        """Upload ``image`` (multipart) and return the grayscale PNG mask."""
        response = self._send(ALPHA_CHANNEL, files=_part(image, filename))
        return self._image(ALPHA_CHANNEL, response.content)

    def alpha_channel_base64(self, image: bytes) -> bytes:
        """Send ``image`` base64-encoded in JSON and return the decoded mask."""
        response = self._send(ALPHA_CHANNEL_BASE64, json={"image": _b64(image)})
        return self._b64_field(ALPHA_CHANNEL_BASE64, response, ("alpha_channel", "alpha_base64"))

    def available_credits(self) -> Credits:
        """Ask for the balance; an unusable answer is a MalformedResponse."""
        body = self._json(AVAILABLE_CREDIT, self._send(AVAILABLE_CREDIT))
        raw = _first(body, ("available_credits", "credit"))
        available = _as_int(raw)
        if available is None:
            raise self._malformed(AVAILABLE_CREDIT, f"no usable credit count ({raw!r:.50})")
        return Credits(available, _as_datetime(body.get("expiration_date")))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the boundary ---------------------------------------------------------------

    def _send(self, endpoint: str, **kwargs: Any) -> httpx.Response:
        """Pass the gate, send one request, observe it, and map every failure."""
        if self._gate is not None:
            self._gate()
        method = "GET" if endpoint == AVAILABLE_CREDIT else "POST"
        started = time.monotonic()
        try:
            response = self._http.request(method, _PATHS[endpoint], **kwargs)
        except RuntimeError:
            if not self._http.is_closed:
                raise
            # close() came first (shutdown): nothing was sent, the daemon is stopping.
            raise errors.Stopped(f"{endpoint}: the API client is closed") from None
        except httpx.HTTPError as exc:
            self._record(endpoint, "error", time.monotonic() - started)
            error = self._transport_error(endpoint, exc)
        else:
            self._record(endpoint, str(response.status_code), time.monotonic() - started)
            if response.status_code == 200:
                return response
            error = self._status_error(endpoint, response)
        # Raised outside the except block so the httpx exception (whose request holds the
        # key in its headers) is neither chained nor shown in a traceback.
        raise error

    def _record(self, endpoint: str, code: str, seconds: float) -> None:
        if self._observe is None:
            return
        with contextlib.suppress(Exception):  # metrics observe; they never break a request
            self._observe(endpoint, code, seconds)

    def _transport_error(self, endpoint: str, exc: httpx.HTTPError) -> errors.ApiError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = self._scrub(f"{endpoint}: {_clip(detail)}")
        timed_out = isinstance(exc, httpx.TimeoutException)
        kind = errors.RequestTimeout if timed_out else errors.ConnectionFailed
        return kind(message, outcome_unknown=not isinstance(exc, _NOT_SENT))

    def _status_error(self, endpoint: str, response: httpx.Response) -> errors.ApiError:
        status = response.status_code
        message = self._scrub(f"{endpoint}: HTTP {status}: {_error_text(response)}")
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"), self._clock())
            return errors.RateLimited(message, retry_after)
        if status in _STATUS_ERRORS:
            return _STATUS_ERRORS[status](message, status)
        if status in (400, 422) and endpoint != AVAILABLE_CREDIT:
            return errors.PermanentFileError(message, status)
        # A gateway that gave up (502/504) may have passed the upload on to be charged.
        return errors.ServerError(message, status, outcome_unknown=status in (502, 504))

    # -- reading answers liberally ----------------------------------------------------

    def _malformed(self, endpoint: str, what: str) -> errors.MalformedResponse:
        return errors.MalformedResponse(self._scrub(f"{endpoint}: HTTP 200: {what}"), 200)

    def _image(self, endpoint: str, data: bytes) -> bytes:
        if _sniff(data) is None:
            head = _clip(data[:_MAX_TEXT].decode("utf-8", "replace"))
            raise self._malformed(endpoint, f"expected an image, got {len(data)} bytes: {head!r}")
        return data

    def _json(self, endpoint: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise self._malformed(endpoint, f"not JSON: {_clip(response.text)!r}") from None
        if not isinstance(body, dict):
            raise self._malformed(endpoint, f"not a JSON object: {_clip(response.text)!r}")
        return body

    def _b64_field(self, endpoint: str, response: httpx.Response, names: tuple[str, ...]) -> bytes:
        value = _first(self._json(endpoint, response), names)
        if not isinstance(value, str):
            raise self._malformed(endpoint, f"no {' or '.join(names)} string in the answer")
        if value.startswith("data:"):  # tolerate a data: URL around the payload
            value = value.partition(",")[2]
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise self._malformed(endpoint, f"{names[0]} is not valid base64") from None
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
    return {"image": (filename, image, _sniff(image) or "application/octet-stream")}


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _SIGNATURES if data.startswith(magic)), None)


def _first(body: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((body[name] for name in names if body.get(name) is not None), None)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _error_text(response: httpx.Response) -> str:
    """The API's own error text: ``error`` or ``detail``, else the body, else the reason."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    value = _first(body, ("error", "detail")) if isinstance(body, dict) else None
    if value is None:
        return _clip(response.text) or response.reason_phrase or "no error text"
    if isinstance(value, str):
        return _clip(value)
    return _clip(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value.strip()) if isinstance(value, str) else value
    except ValueError:
        return None
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    return None


def _as_datetime(value: Any) -> datetime | None:
    """An aware datetime from ISO 8601 (``Z`` or an offset; naive means UTC), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
