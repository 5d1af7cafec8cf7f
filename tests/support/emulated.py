"""What the emulator received: the image requests among its recorded requests, their peak rate."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from typing import Any

from bench import rate
from bgsyncd.api.endpoints import AVAILABLE_CREDIT, ENDPOINTS, UPLOAD_ENDPOINTS
from bgsyncd.emulator import Emulator, RecordedRequest

# The paths the worker uploads to ("proxy" mode, the default, sends to the alpha channel).
IMAGE_PATHS = tuple(f"/v1.0/{e}" for e in UPLOAD_ENDPOINTS)
# Every image path the emulator serves, the base64 ones included.
ALL_IMAGE_PATHS = frozenset(f"/v1.0/{e}" for e in ENDPOINTS if e != AVAILABLE_CREDIT)
CREDIT_PATH = "/available-credit"


def image_requests(emu: Emulator, paths: Collection[str] = IMAGE_PATHS) -> list[RecordedRequest]:
    """Every request to ``paths`` the emulator received, whatever its outcome, in order."""
    return [r for r in emu.requests() if r.path in paths]


def peak(requests: Iterable[RecordedRequest], window: float) -> int:
    """Most requests starting in any window ``[s, s + window)``: a sliding check over all."""
    return rate.peak((r.started for r in requests), window)


class AdmittingEmulator(Emulator):
    """The emulator, noting when an image request has been admitted (before its latency)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_admitted = threading.Event()

    def admit(self, key: str | None, *, image: bool) -> None:
        super().admit(key, image=image)
        if image:
            self.image_admitted.set()
