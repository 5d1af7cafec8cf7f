"""A fleet of daemons on one PostgreSQL: host configurations, drops, outputs, rows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, write_config
from tests.support.helpers import product_image


def host_config(
    tmp_path: Path,
    name: str,
    emu: Emulator,
    dsn: str,
    folders: list[dict[str, Any]],
    *,
    api: dict[str, Any] | None = None,
    credits: dict[str, Any] | None = None,
    lease: float = 3.0,
    metrics_listen: str = "",
) -> Path:
    """The configuration of host ``name`` of the fleet, in its own directory."""
    home = tmp_path / f"host-{name}"
    home.mkdir(exist_ok=True)
    return write_config(
        home / "config.toml",
        base_url=emu.url,
        folders=folders,
        api=api,
        credits=credits,
        queue={"backend": "postgresql", "dsn": dsn, "host_id": name, "lease_seconds": lease},
        metrics_listen=metrics_listen,
    )


def drop(inbox: Path, name: str, width: int) -> None:
    """A distinct product image (its width makes it so), written under a temp name and renamed."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(product_image(width, 40))
    tmp.rename(inbox / name)


def db_rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql, params).fetchall())


class CountingEmulator(Emulator):
    """The emulator, counting the image requests it admitted (each one a credit)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._count_lock = threading.Lock()
        self.admitted = 0

    def admit(self, key: str | None, *, image: bool) -> None:
        super().admit(key, image=image)
        if image:
            with self._count_lock:
                self.admitted += 1


def events(host: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in host.events() if e.get("event") == name]


def peak(times: list[float], window: float) -> int:
    """Most starts in any window ``[s, s + window]``: a sliding check over all of them."""
    times = sorted(times)
    best, j = 0, 0
    for i, s in enumerate(times):
        while j < len(times) and times[j] <= s + window:
            j += 1
        best = max(best, j - i)
    return best
