"""A daemon short of descriptors (SPEC §6): EMFILE is the daemon's local fault, a pause,
never a file's failure; and a failing ``stat`` is not taken for a file that is gone.

The shortage is real: the soft ``RLIMIT_NOFILE`` of this process is lowered and
every descriptor under it taken (``/dev/null``), for as short a time as the
test needs, then everything is given back.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
from pathlib import Path
from typing import Any

from bgsyncd.emulator import Emulator
from tests.support.daemons import TEST_KEY, DaemonProcess, make_folder, start_daemon, write_config
from tests.support.emulated import IMAGE_PATHS
from tests.support.helpers import product_image, wait_until

# -- a real daemon: short of descriptors while an answer is on its way ----------------------


class _Held(Emulator):
    """The emulator; an image request, once admitted, waits until ``go`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admitted = threading.Event()
        self.go = threading.Event()

    def admit(self, key: str | None, *, image: bool) -> None:
        super().admit(key, image=image)
        if image and not self.admitted.is_set():
            self.admitted.set()
            self.go.wait(30)


def _lowest_free_fd(pid: int) -> int:
    taken = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(taken) + 1) if n not in taken)


def test_a_daemon_short_of_descriptors_when_an_answer_comes_pauses_and_resumes_paying_once(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    emu = _Held(keys=[TEST_KEY], credits=100, rate_limit=1000, rate_window=60.0, seed=1)
    with emu:
        folder = make_folder(tmp_path, "shop")
        db = tmp_path / "state" / "queue.sqlite3"
        config = write_config(
            tmp_path / "c.toml", base_url=emu.url, folders=[folder], queue={"database": str(db)}
        )
        daemon = start_daemon(daemons, config)
        pid = daemon.proc.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
        (inbox / "p.jpg").write_bytes(product_image(60, 40))
        assert emu.admitted.wait(30), "no image request"
        # The request is on its way: from now on the daemon has no descriptor to spare.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), limits[1]))
        emu.go.set()
        try:
            wait_until(
                lambda: daemon.saw("dispatch.paused", reason="output_unwritable"),
                30,
                what="dispatch.paused output_unwritable",
            )
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        paused = [e for e in daemon.events() if e.get("event") == "dispatch.paused"]
        assert "[Errno 24]" in json.dumps(paused), paused
        daemon.signal(signal.SIGHUP)  # the probe runs at once (else within 30 s)
        wait_until((outbox / "p.png").exists, 30, what="the output once descriptors are back")
        assert daemon.saw("dispatch.resumed", after="output_unwritable")
        for event in ("job.retry", "job.quarantined", "daemon.crashed"):
            assert not daemon.saw(event), event
        images = [r for r in emu.requests() if r.path in IMAGE_PATHS and r.status == 200]
        assert len(images) == 1, "the paid answer was kept: no second request"
        assert daemon.stop() == 0
