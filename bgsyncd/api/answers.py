"""Reading the API's answers liberally: pure functions on bytes and header values.

The live service answers with other field names than the reference (SPEC §5), so
these accept both; they never raise on what a server sends. The client
(:mod:`bgsyncd.api.client`) decides what a failure means; these only read.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import math
from datetime import datetime, timezone
from typing import Any

MAX_TEXT = 200
MIB = 1024 * 1024
MATTE_LIMIT = 16 * MIB
"""The automatic cap on a matte answer (``max_response_bytes = 0``)."""
# A cut-out of unknown size is capped as if it had Pillow's decompression-bomb limit of
# pixels: a larger one could not be used anyway.
UNKNOWN_PIXELS = 89_478_485


def first(body: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` that ``body`` has (not null), else None."""
    return next((body[name] for name in names if body.get(name) is not None), None)


def from_base64(value: str) -> bytes | None:
    """The bytes of a base64 answer field (a ``data:`` URL and whitespace tolerated), else None."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def clip(text: str) -> str:
    """``text`` on one line, at most ``MAX_TEXT`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def error_text(data: bytes, reason: str) -> str:
    """The API's own error text: ``error`` or ``detail``, else the body, else the reason."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    value = first(body, ("error", "detail")) if isinstance(body, dict) else None
    if value is None:
        return clip(data.decode("utf-8", "replace")) or reason or "no error text"
    if isinstance(value, str):
        return clip(value)
    return clip(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date).

    None when absent, unreadable, negative (a date in the past too) or not finite: the
    caller then waits until the window frees. A huge value is returned as it is; the
    pacer caps it. Never raises, whatever the header holds.
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # RFC 9110 dates are GMT
                when = when.replace(tzinfo=timezone.utc)
            seconds = when.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def as_int(value: Any) -> int | None:
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


def as_datetime(value: Any) -> datetime | None:
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


def answer_limit(configured: int, *, matte: bool, pixels: int | None = None) -> int:
    """The most bytes an image answer may have (SPEC §2 ``max_response_bytes``).

    ``configured`` when it is set (> 0); else automatic: :data:`MATTE_LIMIT` for a matte,
    4 bytes a pixel of the input plus 1 MiB for a cut-out (``pixels`` unknown: as many
    as Pillow would ever decode).
    """
    if configured > 0:
        return configured
    if matte:
        return MATTE_LIMIT
    return 4 * (pixels if pixels and pixels > 0 else UNKNOWN_PIXELS) + MIB
