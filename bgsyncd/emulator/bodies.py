"""Request bodies: reading them off the connection, and the image inside them.

``read_body`` reads a whole body framed by Content-Length or chunked transfer
coding, never beyond a limit; ``PacedReader`` makes it arrive no faster than
an uplink of a given speed (``--bandwidth``). ``json_image`` and
``form_image`` take the uploaded image out of a base64 JSON or a multipart
body, under the reference's field names and the ones the vendor's own
clients send. Problems are ``Refusal``s (from ``account``), so the handler
answers them like any other.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from typing import BinaryIO, Protocol

from bgsyncd.emulator.account import Refusal


class ClientGone(Exception):
    """The client closed the connection before sending its whole body."""


class BodyTooLarge(Refusal):
    """413 before the body was read: answer at once, then drain and close."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BadFraming(Refusal):
    """400 for a body whose length cannot be known: the connection cannot be reused."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Stream(Protocol):
    """What ``read_body`` needs of a connection's input: a buffered binary reader."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class PacedReader:
    """A reader that hands out bytes no faster than ``bytes_per_second``.

    Pacing happens after each read (one step is at most a fiftieth of a second's
    worth), so a body of N bytes takes N / bytes_per_second seconds to read
    whatever the client's own speed; the socket's receive window fills and the
    client is held back as it would be by a slow uplink. ``wait`` is the sleep
    (an Event's ``wait``, so a stopping server is not held up).
    """

    def __init__(
        self,
        stream: BinaryIO | Stream,
        bytes_per_second: int,
        clock: Callable[[], float],
        wait: Callable[[float], object],
    ) -> None:
        self._stream = stream
        self._rate = bytes_per_second
        self._clock = clock
        self._wait = wait
        self._step = max(1024, bytes_per_second // 50)
        self._started: float | None = None
        self._taken = 0

    def read(self, size: int = -1, /) -> bytes:
        """Read ``size`` bytes (fewer only at end of stream), paced."""
        parts: list[bytes] = []
        left = size
        while left != 0:
            chunk = self._stream.read(self._step if left < 0 else min(left, self._step))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk) if left > 0 else 0
            self._pace(len(chunk))
        return b"".join(parts)

    def readline(self, size: int = -1, /) -> bytes:
        """Read one line (at most ``size`` bytes), paced."""
        line = self._stream.readline(size)
        self._pace(len(line))
        return line

    def _pace(self, count: int) -> None:
        now = self._clock()
        if self._started is None:
            self._started = now
        self._taken += count
        due = self._started + self._taken / self._rate
        if due > now:
            self._wait(due - now)


def content_length(headers: Message) -> int:
    """The declared body length: 0 when absent, -1 when invalid."""
    try:
        return max(-1, int(headers.get("Content-Length", "0")))
    except ValueError:
        return -1


def is_chunked(headers: Message) -> bool:
    """Whether the body comes in chunked transfer coding."""
    return "chunked" in headers.get("Transfer-Encoding", "").lower()


def read_body(stream: BinaryIO | Stream, headers: Message, limit: int, too_large: str) -> bytes:
    """Read the whole body (Content-Length or chunked) of at most ``limit`` bytes."""
    if is_chunked(headers):
        return _read_chunked(stream, limit, too_large)
    length = content_length(headers)
    if length < 0:
        raise BadFraming("Invalid Content-Length")
    if length > limit:
        raise BodyTooLarge(too_large)
    body = stream.read(length)
    if len(body) < length:
        raise ClientGone
    return body


def _read_chunked(stream: BinaryIO | Stream, limit: int, too_large: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = stream.readline(1024)
        if not line:
            raise ClientGone
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadFraming("Invalid chunked body") from None
        if size == 0:
            break
        total += size
        if total > limit:
            raise BodyTooLarge(too_large)
        chunk = stream.read(size)
        if len(chunk) < size:
            raise ClientGone
        chunks.append(chunk)
        stream.readline(1024)  # the line break after the chunk
    while stream.readline(1024) not in (b"\r\n", b"\n", b""):
        pass  # trailers
    return b"".join(chunks)


def json_image(body: bytes) -> bytes:
    """The image of a base64 request: ``image`` or ``image_base64``, data URLs allowed."""
    try:
        document = json.loads(body)
    except ValueError:
        raise Refusal(400, "Request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise Refusal(400, "Request body must be a JSON object")
    text = next((document[k] for k in ("image", "image_base64") if k in document), None)
    if not isinstance(text, str):
        raise Refusal(400, "Missing field 'image' (a base64 string)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    altchars = b"-_" if "-" in text or "_" in text else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "Field 'image' is not valid base64") from None


def form_image(body: bytes, content_type: str) -> bytes:
    """The image of a multipart request: the field ``image``, else ``file``."""
    try:
        fields = parse_multipart(body, content_type)
    except ValueError as exc:
        raise Refusal(400, f"Invalid multipart body: {exc}") from None
    for name in ("image", "file"):
        if name in fields:
            return fields[name]
    raise Refusal(400, "Missing form field 'image'")


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body by name (the first of a name wins).

    Splitting on the delimiter handles any binary content in one pass; only the
    small header block of each part goes through the email parser (quoting,
    RFC 2231 names). Bare LF line breaks are accepted from sloppy clients.
    """
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if header.get_content_type() != "multipart/form-data" or not boundary:
        raise ValueError("expected Content-Type multipart/form-data with a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("the boundary does not occur in the body")
    end_of_line = body.find(b"\n", start)
    newline = b"\r\n" if body[end_of_line - 1 : end_of_line] == b"\r" else b"\n"
    pieces = (newline + body).split(newline + delimiter)
    fields: dict[str, bytes] = {}
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return fields  # the close delimiter
        # The delimiter line may carry transport padding before its line break.
        head, found, content = piece.partition(newline)[2].partition(newline * 2)
        if not found:
            raise ValueError("a part has no header block")
        part = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if name is not None:
            fields.setdefault(collapse_rfc2231_value(name), content)
    raise ValueError("the body ends without the closing boundary")
