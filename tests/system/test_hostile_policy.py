"""What a misbehaving API, a failing disk and a slow writer cost (SPEC §4, §5), end to end.

A real ``bgsyncd run`` subprocess against a scriptable loopback server
(``tests/support/hostile.py``) or the emulator; the server's request log is the referee
for what was spent.
"""

from __future__ import annotations

import errno
import inspect
import io
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bgsyncd.api.client
from bgsyncd.emulator import Emulator
from tests.support.daemons import (
    DaemonProcess,
    attempts,
    make_folder,
    start_daemon,
    status_json,
    wait_status,
    write_config,
)
from tests.support.helpers import noisy_image, product_image, wait_until
from tests.support.hostile import Answer, HostileServer, Request
from tests.support.images import grey_png, tiff_of_blocks
from tests.support.mounts import tmpfs

IMAGE_PREFIX = "/v1.0/"


def account(images: Callable[[Request], Answer]) -> Callable[[Request], Answer]:
    """A server whose credit checks answer normally and whose image answers are ``images``."""

    def respond(request: Request) -> Answer:
        if request.path.startswith("/available-credit"):
            return Answer.json('{"available_credits": 1000, "expires_at": null}')
        return images(request)

    return respond


def image_requests(server: HostileServer) -> int:
    return len([p for p in server.paths() if p.startswith(IMAGE_PREFIX)])


def cutout_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 255)).save(buf, "PNG")
    return buf.getvalue()


def stays(condition: Callable[[], bool], seconds: float) -> bool:
    """``condition`` holds throughout ``seconds``: for what must NOT happen (no event to await)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.05)
    return condition()


def daemon_on(
    tmp_path: Path, daemons: list[DaemonProcess], url: str, **queue: Any
) -> tuple[DaemonProcess, dict[str, Any], Path]:
    folder = make_folder(tmp_path, "f")
    config = write_config(
        tmp_path / "config.toml", base_url=url, folders=[folder], queue={"max_attempts": 5, **queue}
    )
    return start_daemon(daemons, config), folder, config


# -- item 9: a 200 we cannot use ------------------------------------------------------------


def test_unusable_answers_cost_two_credits_a_file_and_three_in_a_row_pause_api_malformed(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    usable = {"yes": False}

    def images(request: Request) -> Answer:
        if usable["yes"]:
            return Answer(200, cutout_of(30, 20), (("Content-Type", "image/png"),))
        return Answer(200, b"<html>maintenance</html>", (("Content-Type", "image/png"),))

    with HostileServer(account(images)) as server:
        d, folder, config = daemon_on(tmp_path, daemons, server.url)
        inbox = Path(folder["inbox"])
        (inbox / "a.png").write_bytes(product_image(30, 20, "PNG"))
        sidecar = Path(folder["quarantine"]) / "a.png.error.json"
        wait_until(sidecar.exists, 30, what="a.png quarantined")
        detail = json.loads(sidecar.read_text())
        assert (detail["reason"], detail["attempts"]) == ("rejected_by_api", 2)
        assert image_requests(server) == 2  # retried once, not max_attempts times
        assert status_json(config)["paused"] is None  # two in a row: not yet

        (inbox / "b.png").write_bytes(product_image(30, 20, "PNG", optimize=True))
        wait_status(config, paused="api_malformed")
        assert image_requests(server) == 3
        assert attempts(config)["f/b.png"] == 1
        assert d.saw("dispatch.paused", reason="api_malformed")
        assert stays(lambda: image_requests(server) == 3, 2.0)  # backoff is 0.05-0.5 s

        usable["yes"] = True
        d.signal(signal.SIGHUP)
        wait_until((Path(folder["outbox"]) / "b.png").exists, 30, what="b.png written")
        assert image_requests(server) == 4
        wait_status(config, paused=None, quarantined=1, done=1)
        assert d.stop() == 0


# -- item 10: a redirect is never followed -------------------------------------------------


def test_a_redirect_pauses_unexpected_redirect_with_its_target_and_counts_no_attempt(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    if "UnexpectedRedirect" not in inspect.getsource(bgsyncd.api.client):
        pytest.skip("needs the client that maps 3xx to errors.UnexpectedRedirect (branch h2)")
    target = "http://127.0.0.2:9/steal-the-key"
    with HostileServer(account(lambda r: Answer.redirect(target))) as server:
        d, folder, config = daemon_on(tmp_path, daemons, server.url)
        (Path(folder["inbox"]) / "a.png").write_bytes(product_image(30, 20, "PNG"))
        wait_status(config, paused="unexpected_redirect")
        assert d.saw("dispatch.paused", reason="unexpected_redirect", location=target)
        assert image_requests(server) == 1
        assert attempts(config)["f/a.png"] == 0
        assert status_json(config)["jobs"]["pending"] == 1
        assert not Path(folder["quarantine"]).exists() or not any(
            Path(folder["quarantine"]).iterdir()
        )
        assert d.stop() == 0


# -- item 6: a writer that closes between appends ----------------------------------------------


def test_a_writer_closing_between_appends_gets_one_output_and_no_quarantine(
    tmp_path: Path, daemons: list[DaemonProcess], emulator: Emulator
) -> None:
    settle = 1.5
    d, folder, config = daemon_on(tmp_path, daemons, emulator.url, settle_seconds=settle)
    photo = noisy_image(160, 120, "JPEG")
    target = Path(folder["inbox"]) / "slow2.jpg"
    pieces = 6
    step = len(photo) // pieces + 1
    for start in range(0, len(photo), step):
        with target.open("ab") as fh:  # opened, appended, closed: a close event each time
            fh.write(photo[start : start + step])
        time.sleep(settle / 3)  # the writer's own pause, shorter than settle_seconds
    out = Path(folder["outbox"]) / "slow2.png"
    wait_until(out.exists, 30, what="the one output")
    wait_status(config, done=1, pending=0, retry_wait=0)
    assert sorted(p.name for p in Path(folder["outbox"]).rglob("*") if p.is_file()) == ["slow2.png"]
    quarantine = Path(folder["quarantine"])
    assert not quarantine.exists() or list(quarantine.rglob("*")) == []
    with Image.open(out) as cutout:
        assert cutout.size == (160, 120)
    assert d.saw("file.settling", verdict="corrupt_image")  # fragments were seen, and waited
    assert target.read_bytes() == photo
    assert d.stop() == 0


# -- local faults (SPEC §4): the daemon pauses, SIGHUP does not lift it ----------------------


def test_a_full_outbox_pauses_output_unwritable_quarantines_nothing_and_sighup_keeps_it(
    tmp_path: Path, daemons: list[DaemonProcess], emulator: Emulator
) -> None:
    folder = make_folder(tmp_path, "f")
    with tmpfs(Path(folder["outbox"]), "256k") as fs:
        outbox = fs.path
        fs.fill()
        config = write_config(tmp_path / "config.toml", base_url=emulator.url, folders=[folder])
        d = start_daemon(daemons, config)
        (Path(folder["inbox"]) / "a.png").write_bytes(product_image(30, 20, "PNG"))
        wait_status(config, paused="output_unwritable")
        text = f"[Errno {errno.ENOSPC}] No space left on device"
        assert d.saw("dispatch.paused", reason="output_unwritable", folder_path=str(outbox))
        assert any(text in str(e.get("error")) for e in d.events() if e.get("level") == "error")
        assert attempts(config)["f/a.png"] == 0
        assert "internal error" not in d.output()
        checks = d.output().count('"credits.checked"')
        d.signal(signal.SIGHUP)
        wait_until(lambda: d.output().count('"credits.checked"') > checks, 20, what="recheck")
        assert status_json(config)["paused"] == "output_unwritable"
        assert not Path(folder["quarantine"]).exists() or not any(
            Path(folder["quarantine"]).iterdir()
        )
        assert len([r for r in emulator.requests() if r.path.startswith(IMAGE_PREFIX)]) == 1
        assert d.stop() == 0


# -- item 4, dispatch side: a Retry-After of ten years or 1e12 -----------------------------


@pytest.mark.parametrize("retry_after", ["315360000", "1e12"])
def test_a_huge_retry_after_holds_dispatch_no_longer_than_the_cap(
    tmp_path: Path, daemons: list[DaemonProcess], retry_after: str
) -> None:
    window = 0.4  # the cap is 10 windows: 4 s
    limited = {"left": 1}

    def images(request: Request) -> Answer:
        if limited["left"]:
            limited["left"] -= 1
            return Answer(429, b'{"error": "slow down"}', (("Retry-After", retry_after),))
        return Answer(200, cutout_of(30, 20), (("Content-Type", "image/png"),))

    with HostileServer(account(images)) as server:
        folder = make_folder(tmp_path, "f")
        config = write_config(
            tmp_path / "config.toml",
            base_url=server.url,
            folders=[folder],
            api={"rate_window_seconds": window},
        )
        d = start_daemon(daemons, config)
        (Path(folder["inbox"]) / "a.png").write_bytes(product_image(30, 20, "PNG"))
        wait_until(lambda: image_requests(server) == 1, 20, what="the 429")
        limited_at = time.monotonic()
        wait_until((Path(folder["outbox"]) / "a.png").exists, 20, what="a.png after the block")
        assert time.monotonic() - limited_at < 10 * window + 5.0
        assert d.proc.poll() is None and not d.saw("dispatch.error")
        assert attempts(config)["f/a.png"] == 0  # a 429 counts no attempt
        assert d.stop() == 0


# -- decoding bounded by memory (SPEC §6) --------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_tiff_of_a_million_strips_and_an_89_megapixel_matte_cost_the_daemon_no_memory(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # Before: the TIFF took the daemon to ~450 MB just to open, the matte (the shape
    # of the 1024 x 683 sent, in 90 KB) to 1.6 GB, and it was cached.
    matte = grey_png(11540, 7697)

    def images(request: Request) -> Answer:
        return Answer(200, matte, (("Content-Type", "image/png"),))

    with HostileServer(account(images)) as server:
        d, folder, _config = daemon_on(tmp_path, daemons, server.url)
        inbox, quarantine = Path(folder["inbox"]), Path(folder["quarantine"])
        (inbox / "strips.tif").write_bytes(tiff_of_blocks(1_500_000))
        (inbox / "photo.jpg").write_bytes(product_image(1500, 1000, "JPEG"))
        for name, reason, attempted in (
            ("strips.tif", "corrupt_image", 0),
            ("photo.jpg", "rejected_by_api", 2),
        ):
            sidecar = quarantine / f"{name}.error.json"
            wait_until(sidecar.exists, 60, what=f"{name} quarantined")
            detail = json.loads(sidecar.read_text())
            assert (detail["reason"], detail["attempts"]) == (reason, attempted)
        assert image_requests(server) == 2  # the TIFF was never sent
        peak = peak_rss_mb(d.proc.pid)
        assert peak < 250, f"the daemon peaked at {peak:.0f} MB"
        assert d.stop() == 0
