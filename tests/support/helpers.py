"""Small helpers shared by the tests: waiting on conditions and making images."""

from __future__ import annotations

import ctypes
import io
import os
import time
from collections.abc import Callable
from typing import TypeVar

from PIL import Image, ImageDraw

from bgsyncd.dispatch.credits import CreditGuard

T = TypeVar("T")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2  # glibc >= 2.28, as on every machine this runs on
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def exchange(a: str | bytes | os.PathLike[str], b: str | bytes | os.PathLike[str]) -> None:
    """Swap two paths atomically, as an attacker would (``renameat2(RENAME_EXCHANGE)``)."""
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(a))


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Return the first truthy value of ``condition()``; fail after ``timeout`` seconds.

    ``None`` is never returned, so a condition like ``queue.claim`` types as its value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def at_floor(guard: CreditGuard) -> bool:
    """Credits are known, and the floor is what stops a start."""
    return guard.available is not None and not guard.can_start()


class FakeClock:
    """A clock the test sets by hand; ``calls`` counts how often it was read."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def product_image(width: int = 64, height: int = 48, fmt: str = "JPEG", **save: object) -> bytes:
    """A dark object on a plain light background, encoded as ``fmt``."""
    img = Image.new("RGB", (width, height), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(150, 30, 40))
    if fmt in ("GIF",):
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def transparent_png(width: int = 40, height: int = 40) -> bytes:
    """An RGBA PNG that is already partly transparent."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((10, 10, 30, 30), fill=(20, 120, 200, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def noisy_image(width: int, height: int, fmt: str = "PNG") -> bytes:
    """An image that compresses badly, for size-limit tests."""
    img = Image.frombytes("RGB", (width, height), _random_bytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _random_bytes(n: int) -> bytes:
    import random

    rng = random.Random(1234)
    return rng.randbytes(n)


def open_image(data: bytes) -> Image.Image:
    """Decode ``data`` fully and return the image."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
