"""``bgsyncd demo``: the quick start, with no API key and no network.

Creates a demo folder with an inbox, an outbox, a quarantine and a few sample
images, starts the emulator on loopback and the daemon on it, and says where
to look. Ctrl-C ends both cleanly.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import sys
from pathlib import Path

from bgsyncd.emulator import Emulator
from bgsyncd.imaging import samples
from bgsyncd.service.backends import load_settings
from bgsyncd.service.daemon import Daemon

DEMO_METRICS_PORT = 9808


def run_demo(root: Path) -> int:
    """Set up ``root`` and run the daemon on it until Ctrl-C."""
    root = root.resolve()
    for name in ("inbox", "outbox", "marketplace", "quarantine", "state"):
        (root / name).mkdir(parents=True, exist_ok=True)
    _write_samples(root / "inbox", root / "quarantine")
    key = "demo-" + secrets.token_hex(8)
    key_file = root / "state" / "api_key"
    # Created 0600 rather than chmod-ed after: not readable by others for a moment.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    key_file.chmod(0o600)  # a file left by an earlier run keeps its old mode otherwise
    emulator = Emulator(keys=[key], credits=100, seed=7).start()
    listen = f"127.0.0.1:{_free_port(DEMO_METRICS_PORT)}"
    config = root / "config.toml"
    config.write_text(_CONFIG.format(url=emulator.url, listen=listen), encoding="utf-8")
    os.environ.pop("BGSYNCD_API_KEY", None)  # the demo uses its own key, never a real one
    settings = load_settings(config)
    print(
        f"""
bgsyncd demo
  emulator (a local WithoutBG-compatible API): {emulator.url}
  inbox:       {root / "inbox"}      <- drop more images here
  outbox:      {root / "outbox"}     <- transparent cut-outs appear here
  marketplace: {root / "marketplace"} <- the same, 2000x2000 JPEGs on white (preset amazon)
  quarantine:  {root / "quarantine"} <- files that cannot be processed, with the reason
  metrics:     http://{listen}/metrics
  status:      {_bgsyncd_command()} status --config {shlex.quote(str(config))}
  config:      {config}
Press Ctrl-C to stop.
""",
        flush=True,
    )
    try:
        return Daemon(settings).run()
    except KeyboardInterrupt:
        # Ctrl-C before the daemon took over SIGINT (while it was starting): still a clean stop.
        return 0
    finally:
        emulator.stop()


_CONFIG = """\
# Written by `bgsyncd demo`: the emulator stands in for the real API.
[api]
base_url = "{url}"
key_file = "state/api_key"

[queue]
database = "state/queue.sqlite3"
settle_seconds = 0.5

[metrics]
listen = "{listen}"

[logging]
format = "console"

[[folder]]
name = "demo"
inbox = "inbox"
outbox = "outbox"
quarantine = "quarantine"

# A rendition: more outputs from the same matte, no extra credit (README,
# "Making product photos").
[[folder.rendition]]
outbox = "marketplace"
preset = "amazon"
"""


def _bgsyncd_command() -> str:
    """How to run this very bgsyncd from a shell, for commands the banner prints.

    The bare name only when PATH finds this one; else its script's full path
    (a virtualenv's ``.venv/bin/bgsyncd`` is usually not on PATH); else the
    interpreter with ``-m bgsyncd``.
    """
    script = Path(sys.executable).parent / "bgsyncd"  # the venv's bin, symlinks not followed
    if not (script.is_file() and os.access(script, os.X_OK)):
        return f"{shlex.quote(sys.executable)} -m bgsyncd"
    found = shutil.which("bgsyncd")
    if found is not None and Path(found).resolve() == script.resolve():
        return "bgsyncd"
    return shlex.quote(str(script))


def _free_port(preferred: int) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = sock.getsockname()[1]
            return bound
    raise OSError("no free port on 127.0.0.1")


def _write_samples(inbox: Path, quarantine: Path) -> None:
    """A few kinds of input: a product shot, a portrait-like shape, a transparent
    PNG, a nested folder and, to show the quarantine, a file that is no image.

    A sample already in the quarantine is not written again: a second run in the
    same folder would only add ``not-an-image~2.jpg`` beside the first.
    """
    pictures = {
        "product.jpg": samples.product(),
        "portrait.png": samples.portrait(),
        "logo-transparent.png": samples.transparent(),
        "catalogue/spring/mug.webp": samples.product((40, 90, 160), "WEBP"),
        "not-an-image.jpg": b"this is text, not a JPEG\n",
    }
    for rel, data in pictures.items():
        path = inbox / rel
        if path.exists() or (quarantine / rel).exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
