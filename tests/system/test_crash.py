"""Crash safety end to end: kill -9 a real daemon at random moments, restart, check.

What a crash may cost, and no more (SPEC §5): nothing queued is lost, no output
is torn or left as a temp file, and a request whose outcome the dead daemon
never learnt may be sent once more -- at most ``max_in_flight`` of them per
kill, each announced by a ``job.resend`` log line before it is sent.

Why the bounds below are exact rather than hopeful:

- A job is ``in_flight`` in the database only between its claim and its
  ``complete``; the dispatcher claims only below ``max_in_flight``, so a kill
  leaves at most ``max_in_flight`` such rows, and ``recover`` marks them resend.
- A resend-marked job logs ``job.resend`` before its request, once per claim;
  a second kill returns it to ``in_flight`` and the next recovery marks it
  again. So each ``job.resend`` line uses up one recovered row, and
  ``resend lines <= kills * max_in_flight``.
- The result is cached before the output is written and the job completed, so
  a job killed after its answer arrived finds its result in the cache: no
  request. Every request beyond a file's first is therefore preceded by a
  ``job.resend`` line for that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bgsyncd.emulator import Emulator
from bgsyncd.files import outputs
from tests.support.daemons import (
    TEST_KEY,
    DaemonProcess,
    free_port,
    make_folder,
    run_cli,
    write_config,
)
from tests.support.emulated import ALL_IMAGE_PATHS, image_requests
from tests.support.helpers import open_image, product_image, transparent_png, wait_until

# Statuses ``Emulator.admit`` answers itself: such a request never got under way.
ADMIT_REFUSALS = frozenset({401, 402, 403, 429})
MAX_IN_FLIGHT = 3
KILLS = 10
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
}
SUBFOLDERS = ("", "sub", "sub/deeper", "other")


class WatchedEmulator(Emulator):
    """The emulator, counting the image requests it has admitted.

    Requests of a killed daemon go on in the emulator (sleeping out their
    latency) after the daemon is gone; ``in_progress()`` tells how many are
    still under way, so the counts below miss none and kills can be aimed.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._admitted = 0
        self._count_lock = threading.Lock()

    def admit(self, key: str | None, *, image: bool) -> None:
        super().admit(key, image=image)
        if image:
            with self._count_lock:
                self._admitted += 1

    def in_progress(self) -> int:
        """Image requests admitted but not yet answered (or dropped) and recorded."""
        with self._count_lock:
            admitted = self._admitted
        recorded = [
            r for r in image_requests(self, ALL_IMAGE_PATHS) if r.status not in ADMIT_REFUSALS
        ]
        return admitted - len(recorded)

    def quiet(self) -> bool:
        """Every admitted image request has finished and been recorded."""
        return self.in_progress() == 0


def crash_inputs(count: int = 30) -> dict[str, bytes]:
    """``count`` distinct images: every format, varied sizes, nested folders, unique stems."""
    files: dict[str, bytes] = {}
    for i in range(count - 1):
        fmt = FORMATS[i % len(FORMATS)]
        folder = SUBFOLDERS[i % len(SUBFOLDERS)]
        rel = f"{folder}/img{i:02d}.{EXTENSIONS[fmt]}".lstrip("/")
        files[rel] = product_image(24 + 9 * i, 18 + 7 * (i % 11), fmt)
    files["sub/alpha.png"] = transparent_png(52, 44)  # already transparent
    return files


def write_file(path: Path, data: bytes) -> None:
    """Write in place, as a person's program would: open, write, close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def temp_files(root: Path) -> list[str]:
    """Our temp-file names anywhere under ``root`` (hidden ones included)."""
    found = []
    for folder, _dirs, names in os.walk(root):
        found += [os.path.join(folder, n) for n in names if outputs.is_temp_name(n)]
        found += [os.path.join(folder, n) for n in names if ".bgsyncd-" in n]
    return found


def expected_output(rel: str) -> str:
    return rel.rsplit(".", 1)[0] + ".png"


def events(runs: list[DaemonProcess], name: str) -> list[list[dict[str, Any]]]:
    """The ``name`` events of each run, in run order."""
    return [[e for e in d.events() if e.get("event") == name] for d in runs]


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def status(config: Path) -> dict[str, Any]:
    result = run_cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def check_sends(
    emu: Emulator, files: dict[str, bytes], runs: list[DaemonProcess], kills: int
) -> tuple[int, int]:
    """The crash bounds of the module docstring; returns (extra requests, resend lines)."""
    requests = image_requests(emu, ALL_IMAGE_PATHS)
    # An upload cut off by a kill mid-body: the emulator could not read its image
    # (so it charged nothing), but it was a request all the same.
    partial = [r for r in requests if r.image_sha256 is None]
    assert all(r.status != 200 for r in partial), partial
    sent = Counter(r.image_sha256 for r in requests if r.image_sha256 is not None)
    by_sha = {hashlib.sha256(data).hexdigest(): rel for rel, data in files.items()}
    assert set(sent) == set(by_sha), "every input sent, nothing else"
    resends = [e for run in events(runs, "job.resend") for e in run]
    resent_paths = Counter(e["path"] for e in resends)
    for sha, n in sent.items():
        rel = by_sha[sha]
        assert n - 1 <= resent_paths[rel], f"{rel}: sent {n} times, {resent_paths[rel]} resends"
    extra = sum(sent.values()) + len(partial) - len(files)
    assert extra <= len(resends) <= kills * MAX_IN_FLIGHT
    recovered = [e["jobs"] for run in events(runs, "queue.recovered") for e in run]
    assert all(n <= MAX_IN_FLIGHT for n in recovered), recovered
    assert sum(recovered) <= kills * MAX_IN_FLIGHT
    return extra, len(resends)


def test_ten_kill9s_at_random_moments_lose_nothing_and_resend_at_most_max_in_flight(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    rng = random.Random(20240611)
    files = crash_inputs()
    folder = make_folder(tmp_path, "crash")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    port = free_port()
    emu = WatchedEmulator(keys=[TEST_KEY], credits=10_000, rate_limit=1000, latency=0.3, seed=7)
    with emu:
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"max_in_flight": MAX_IN_FLIGHT},
            metrics_listen=f"127.0.0.1:{port}",
        )
        items = list(files.items())
        for rel, data in items[:15]:  # waiting at the first start: the start-up scan
            write_file(inbox / rel, data)

        def drop_the_rest() -> None:
            for rel, data in items[15:]:
                time.sleep(0.2)  # people drop files over time, daemon up or down
                write_file(inbox / rel, data)

        writer = threading.Thread(target=drop_the_rest, daemon=True)
        writer.start()
        wanted = [outbox / expected_output(rel) for rel in files]
        for k in range(KILLS):
            d = DaemonProcess(config)
            daemons.append(d)
            emu.configure(latency=rng.uniform(0.2, 0.4))
            if k % 2:
                # Aimed: a random moment once it is waiting for answers (start-up
                # speed varies with the machine's load; the aim keeps the point).
                wait_until(
                    lambda: emu.in_progress() or all(p.exists() for p in wanted),
                    30,
                    what="a request under way",
                )
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                # Anywhere in its life: importing, recovering, scanning, mid-request,
                # writing outputs. Waiting here is the point, not a wait for a condition.
                time.sleep(rng.uniform(0.1, 1.5))
            d.kill9()
        writer.join(10)
        # What a kill inside write_atomic leaves (a kill lands in that window only
        # by chance): the start must clean it up wherever it is in the outbox.
        stray = outbox / "sub" / "deeper" / ".img02.png.bgsyncd-0123456789abcdef.tmp"
        write_file(stray, b"half an output")
        last = DaemonProcess(config)
        daemons.append(last)
        last.wait_ready()
        wait_until(lambda: all(p.exists() for p in wanted), 60, what="all 30 outputs")
        wait_until(lambda: status(config)["jobs"]["done"] == len(files), 20, what="30 done")
        wait_until(emu.quiet, 10, what="the killed daemons' requests to finish")

        for rel, data in files.items():
            out = open_image((outbox / expected_output(rel)).read_bytes())
            assert out.format == "PNG" and out.mode == "RGBA", rel
            assert out.size == open_image(data).size, rel
        assert temp_files(outbox) == []
        assert status(config)["jobs"] == {
            "pending": 0,
            "in_flight": 0,
            "retry_wait": 0,
            "done": len(files),
            "quarantined": 0,
        }
        extra, resends = check_sends(emu, files, daemons, KILLS)
        # The crashes really landed mid-work: some job was in flight at some kill.
        assert sum(e["jobs"] for run in events(daemons, "queue.recovered") for e in run) > 0
        # The counter of the run that lived counts exactly the resend lines it logged.
        final_resends = len(events([last], "job.resend")[0])
        assert metric(port, "bgsyncd_resends_total") == final_resends
        assert last.stop() == 0, last.output()
        print(f"extra requests: {extra}, job.resend lines: {resends}")


def test_kill9_during_ingest_of_200_files_finds_all_and_sends_none_twice(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    count = 200
    files = {
        f"{('', 'a', 'a/b', 'c')[i % 4]}/f{i:03d}.png".lstrip("/"): product_image(
            16 + i % 50, 16 + i // 50, "PNG"
        )
        for i in range(count)
    }
    folder = make_folder(tmp_path, "burst")
    inbox, outbox = Path(folder["inbox"]), Path(folder["outbox"])
    emu = WatchedEmulator(keys=[TEST_KEY], credits=10_000, rate_limit=1000, latency=0.05, seed=3)
    with emu:
        config = write_config(
            tmp_path / "c.toml",
            base_url=emu.url,
            folders=[folder],
            api={"max_in_flight": MAX_IN_FLIGHT},
        )
        first = DaemonProcess(config)
        daemons.append(first)
        first.wait_ready()

        def drop_all() -> None:
            for rel, data in files.items():
                write_file(inbox / rel, data)
                time.sleep(0.005)  # a burst, but one that lasts past the kill

        writer = threading.Thread(target=drop_all, daemon=True)
        writer.start()
        wait_until(
            lambda: len(events([first], "file.queued")[0]) >= 30, 20, what="some file.queued"
        )
        first.kill9()
        writer.join(20)
        second = DaemonProcess(config)
        daemons.append(second)
        second.wait_ready()
        wait_until(lambda: status(config)["jobs"]["done"] == count, 60, what=f"{count} done")
        wait_until(emu.quiet, 10, what="the killed daemon's requests to finish")

        queued = [[e["path"] for e in run] for run in events([first, second], "file.queued")]
        assert len(queued[0]) < count, "the kill did not land during ingest"
        assert queued[1], "the start-up scan queued what the dead daemon had not"
        for run in queued:
            assert len(run) == len(set(run)), "a path queued twice in one run"
        assert not set(queued[0]) & set(queued[1]), "a path queued by both runs"
        assert set(queued[0]) | set(queued[1]) <= set(files)
        for rel, data in files.items():
            out = open_image((outbox / expected_output(rel)).read_bytes())
            assert out.mode == "RGBA" and out.size == open_image(data).size, rel
        assert temp_files(outbox) == []
        extra, _ = check_sends(emu, files, [first, second], kills=1)
        per_content = Counter(
            r.image_sha256 for r in image_requests(emu, ALL_IMAGE_PATHS) if r.image_sha256
        )
        assert max(per_content.values()) <= 2
        assert extra <= MAX_IN_FLIGHT
        assert second.stop() == 0
        assert second.proc.returncode == 0 and first.proc.returncode == -signal.SIGKILL
