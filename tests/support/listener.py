"""The metrics listener's bounds (SPEC §6) and its /healthz, asked over loopback."""

from __future__ import annotations

import urllib.error
import urllib.request

CAP = 64  # SPEC §6, verbatim
IDLE_SECONDS = 10.0  # SPEC §6, verbatim


def healthz(port: int, timeout: float = 2.0) -> int | None:
    """The status of GET /healthz, or None when the connection was refused or dropped."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None
