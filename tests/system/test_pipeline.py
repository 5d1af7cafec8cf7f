"""End to end: a real daemon subprocess, real inotify, the emulator over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, run_cli, start_daemon, write_config
from tests.support.emulated import image_requests
from tests.support.helpers import (
    noisy_image,
    open_image,
    product_image,
    transparent_png,
    wait_until,
)


def test_nested_mixed_formats_give_mirrored_rgba_outputs(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "shop")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = start_daemon(daemons, config)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    files = {
        "a.jpg": product_image(64, 48, "JPEG"),
        "sub/b.png": product_image(50, 70, "PNG"),
        "sub/deeper/c.webp": product_image(33, 21, "WEBP"),
        "d.tiff": product_image(40, 40, "TIFF"),
        "e.bmp": product_image(30, 20, "BMP"),
        "f.gif": product_image(25, 25, "GIF"),
        "g.png": transparent_png(),
    }
    for rel, data in files.items():
        path = inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected = {rel.rsplit(".", 1)[0] + ".png": rel for rel in files}
    wait_until(lambda: all((outbox / out).exists() for out in expected), 30, what="all outputs")
    for out, rel in expected.items():
        result = open_image((outbox / out).read_bytes())
        source = open_image(files[rel])
        assert result.mode == "RGBA", out
        assert result.size == source.size, out
    assert d.stop() == 0
    assert not list(outbox.rglob("*.tmp")), "no temp files left behind"


def test_writer_pausing_longer_than_settle_is_never_uploaded_half_written(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "slow")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)
    data = product_image(300, 200, "PNG")
    path = Path(folder["inbox"]) / "slow.png"
    with path.open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(1.5)  # the writer's own pause, five times settle_seconds
        assert not image_requests(emulator), "uploaded while the writer was paused"
        fh.write(data[len(data) // 2 :])
    out = Path(folder["outbox"]) / "slow.png"
    wait_until(out.exists, 20, what="output")
    sent = image_requests(emulator)
    assert [r.image_sha256 for r in sent] == [hashlib.sha256(data).hexdigest()]


def test_rename_into_place_crdownload_and_mv_from_outside(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "moves")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    outside = tmp_path / "outside"
    outside.mkdir()
    # rsync: a hidden temp name in the target folder, renamed when complete
    src = outside / "synced.jpg"
    src.write_bytes(product_image(40, 30))
    if shutil.which("rsync"):
        subprocess.run(["rsync", str(src), str(inbox) + "/"], check=True)
    else:  # pragma: no cover - CI installs rsync
        tmp = inbox / ".synced.jpg.Xy12Zq"
        tmp.write_bytes(src.read_bytes())
        tmp.rename(inbox / "synced.jpg")
    # a browser download
    part = inbox / "download.jpg.crdownload"
    part.write_bytes(product_image(41, 31))
    part.rename(inbox / "download.jpg")
    # mv from outside the inbox
    moved = outside / "moved.jpg"
    moved.write_bytes(product_image(42, 32))
    shutil.move(str(moved), str(inbox / "moved.jpg"))
    for name in ("synced.png", "download.png", "moved.png"):
        wait_until((outbox / name).exists, 20, what=name)
    names = sorted(p.name for p in outbox.iterdir())
    assert names == ["download.png", "moved.png", "synced.png"]
    assert len(image_requests(emulator)) == 3


def test_bad_inputs_each_get_their_outcome_and_the_daemon_keeps_running(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "bad", oversize="quarantine")
    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[folder],
        api={"max_upload_bytes": 200_000},
    )
    start_daemon(daemons, config)
    inbox, outbox, quarantine = (
        Path(folder["inbox"]),
        Path(folder["outbox"]),
        Path(folder["quarantine"]),
    )
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(product_image())
    good = product_image(48, 32, "JPEG")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "text.jpg").write_bytes(b"hello, I am not a JPEG\n" * 10)
    (inbox / "truncated.jpg").write_bytes(product_image(200, 200, "JPEG")[:600])
    (inbox / "doc.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    (inbox / "huge.png").write_bytes(noisy_image(400, 300, "PNG"))
    (inbox / "link.jpg").symlink_to(secret)
    os.mkfifo(inbox / "fifo.jpg")
    (inbox / "x.jpg").mkdir()
    (inbox / ".hidden.jpg").write_bytes(good)
    (inbox / "with space é.jpg").write_bytes(good)
    (inbox / "ünïcødé.jpg").write_bytes(product_image(49, 33, "JPEG"))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(inbox / "sock.jpg"))
    expected_quarantine = {
        "text.jpg": "unsupported_media",
        "truncated.jpg": "corrupt_image",
        "doc.png": "unsupported_media",
        "huge.png": "too_large",
    }
    wait_until(
        lambda: (
            # A move ends with the inbox file's removal (after its link and sidecar).
            all(not (inbox / n).exists() for n in expected_quarantine)
            and all((quarantine / n).exists() for n in expected_quarantine)
            and (outbox / "with space é.png").exists()
            and (outbox / "ünïcødé.png").exists()
        ),
        30,
        what="quarantine and outputs",
    )
    for name, reason in expected_quarantine.items():
        sidecar = json.loads((quarantine / f"{name}.error.json").read_text())
        assert sidecar["reason"] == reason, name
        assert set(sidecar) == {
            "path",
            "folder",
            "reason",
            "http_status",
            "message",
            "attempts",
            "first_seen",
            "failed_at",
        }
        assert sidecar["path"] == name and sidecar["folder"] == "bad"
        assert not (inbox / name).exists()
    # none of the bad inputs cost a request; only the two good ones did
    assert len(image_requests(emulator)) == 2
    secret_sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    assert all(r.image_sha256 != secret_sha for r in emulator.requests())
    assert (inbox / "link.jpg").is_symlink() and (inbox / "fifo.jpg").exists()
    # an empty file may be a placeholder about to be written: left alone, never queued
    assert (inbox / "empty.jpg").exists()
    assert sorted(p.name for p in outbox.iterdir()) == ["with space é.png", "ünïcødé.png"]
    server.close()
    status = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    assert status["folders"]["bad"]["quarantined"] == 4
    assert status["folders"]["bad"]["done"] == 2
    # still alive and working
    (inbox / "after.jpg").write_bytes(product_image(20, 20))
    wait_until((outbox / "after.png").exists, 20, what="after.png")


@pytest.mark.parametrize("output", ["cutout", "both"])
def test_oversize_shrink_keeps_the_original_size(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], output: str
) -> None:
    folder = make_folder(tmp_path, "big", output=output)
    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[folder],
        api={"max_upload_bytes": 150_000},
    )
    start_daemon(daemons, config)
    data = noisy_image(500, 400, "PNG")
    assert len(data) > 150_000
    (Path(folder["inbox"]) / "big.png").write_bytes(data)
    outbox = Path(folder["outbox"])
    last = outbox / ("big.mask.png" if output == "both" else "big.png")
    wait_until(last.exists, 30, what="outputs")
    cutout = open_image((outbox / "big.png").read_bytes())
    assert (cutout.size, cutout.mode) == ((500, 400), "RGBA")
    if output == "both":
        mask = open_image((outbox / "big.mask.png").read_bytes())
        assert (mask.size, mask.mode) == ((500, 400), "L")
        assert cutout.getchannel("A").tobytes() == mask.tobytes()
    sent = image_requests(emulator)
    assert [r.path for r in sent] == ["/v1.0/alpha-channel"], "one request for every output"
    assert sent[0].image_size is not None and sent[0].image_size <= 150_000


def test_name_collisions_and_identical_content(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "names")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    (inbox / "a.jpg").write_bytes(product_image(30, 30, "JPEG"))
    wait_until((outbox / "a.png").exists, 20, what="a.png")
    (inbox / "a.webp").write_bytes(product_image(31, 31, "WEBP"))
    wait_until((outbox / "a.webp.png").exists, 20, what="a.webp.png")
    assert open_image((outbox / "a.png").read_bytes()).size == (30, 30)
    assert open_image((outbox / "a.webp.png").read_bytes()).size == (31, 31)
    # identical content under two more names: one request for both
    same = product_image(50, 40, "PNG")
    (inbox / "one.png").write_bytes(same)
    (inbox / "two.png").write_bytes(same)
    wait_until(
        lambda: (outbox / "one.png").exists() and (outbox / "two.png").exists(), 20, what="dupes"
    )
    digest = hashlib.sha256(same).hexdigest()
    assert [r.image_sha256 for r in image_requests(emulator)].count(digest) == 1
    # the same path with new content is processed again and replaces its output
    (inbox / "a.jpg").write_bytes(product_image(60, 45, "JPEG"))
    wait_until(
        lambda: open_image((outbox / "a.png").read_bytes()).size == (60, 45), 20, what="replace"
    )


def test_files_added_while_down_are_found_at_start(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    folder = make_folder(tmp_path, "late")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    d = start_daemon(daemons, config)
    assert d.stop() == 0
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    (inbox / "while-down.jpg").write_bytes(product_image(22, 22))
    old = inbox / "sub" / "old.png"
    old.parent.mkdir()
    old.write_bytes(product_image(23, 23, "PNG"))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    start_daemon(daemons, config)
    wait_until(
        lambda: (outbox / "while-down.png").exists() and (outbox / "sub" / "old.png").exists(),
        20,
        what="outputs of files added while down",
    )


def test_once_processes_everything_and_exits(tmp_path: Path, emulator: Emulator) -> None:
    folder = make_folder(tmp_path, "batch")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    for i in range(5):
        (inbox / f"p{i}.jpg").write_bytes(product_image(20 + i, 20))
    (inbox / "bad.jpg").write_bytes(b"nope")
    result = run_cli("once", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outbox.iterdir()) == [f"p{i}.png" for i in range(5)]
    assert (Path(folder["quarantine"]) / "bad.jpg.error.json").exists()
    status = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    assert status["jobs"] == {
        "pending": 0,
        "in_flight": 0,
        "retry_wait": 0,
        "done": 5,
        "quarantined": 1,
    }
    assert status["folders"] == {"batch": status["jobs"]}
    assert status["paused"] is None
    assert status["oldest_pending_seconds"] is None
    assert isinstance(status["credits"], int)


def test_status_before_the_daemon_ever_ran_prints_zeros(tmp_path: Path, emulator: Emulator) -> None:
    folder = make_folder(tmp_path, "fresh")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    zeros = {"pending": 0, "in_flight": 0, "retry_wait": 0, "done": 0, "quarantined": 0}
    assert json.loads(result.stdout) == {
        "jobs": zeros,
        "folders": {"fresh": zeros},
        "paused": None,
        "credits": None,
        "oldest_pending_seconds": None,
        "waiting": {"reason": None, "seconds": None},
    }
    assert not (tmp_path / "state" / "queue.sqlite3").exists()


def test_retry_puts_a_quarantined_file_back(tmp_path: Path, emulator: Emulator) -> None:
    folder = make_folder(tmp_path, "again")
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    inbox, quarantine = Path(folder["inbox"]), Path(folder["quarantine"])
    (inbox / "p.jpg").write_bytes(product_image())
    # Refused by the API as too large (500s in a row would be an outage: a pause).
    emulator.configure(max_bytes=100)
    result = run_cli("once", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((quarantine / "p.jpg.error.json").read_text())
    assert sidecar["reason"] == "too_large"
    assert sidecar["http_status"] == 413
    assert sidecar["attempts"] == 0
    emulator.configure(max_bytes=10 * 1024 * 1024)
    result = run_cli("retry", "--config", str(config), str(quarantine / "p.jpg"))
    assert result.returncode == 0, result.stderr
    assert (inbox / "p.jpg").exists() and not (quarantine / "p.jpg").exists()
    assert not (quarantine / "p.jpg.error.json").exists()
    result = run_cli("once", "--config", str(config), timeout=60)
    assert (Path(folder["outbox"]) / "p.png").exists()
    unknown = run_cli("retry", "--config", str(config), str(tmp_path / "nope.jpg"))
    assert unknown.returncode == 1


@pytest.mark.parametrize("after", ["delete", "move"])
def test_after_success_delete_and_move(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess], after: str
) -> None:
    extra = {"after_success": after}
    if after == "move":
        extra["done"] = str(tmp_path / "done")
    folder = make_folder(tmp_path, "after", **extra)
    config = write_config(tmp_path / "c.toml", base_url=emulator.url, folders=[folder])
    start_daemon(daemons, config)
    inbox = Path(folder["inbox"])
    (inbox / "sub").mkdir()
    (inbox / "sub" / "p.jpg").write_bytes(product_image())
    wait_until((Path(folder["outbox"]) / "sub" / "p.png").exists, 20, what="output")
    wait_until(lambda: not (inbox / "sub" / "p.jpg").exists(), 10, what="input gone")
    if after == "move":
        assert (tmp_path / "done" / "sub" / "p.jpg").exists()
