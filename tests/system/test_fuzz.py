"""A running daemon against an inbox an attacker (or a careless user) controls.

One seeded fuzzer throws well over a thousand hostile operations at two
inboxes: random names (long, multi-byte, not UTF-8, dotfiles, temp names,
collisions), random sizes and types (every supported format, garbage,
truncated images, empty files, decompression bombs, FIFOs, symlinks out of
the inbox), rewrites, renames, deletions, and folders swapped atomically for
symlinks to a private folder outside. Afterwards the daemon must be alive,
the private folder untouched byte for byte and never sent, and every input
accounted for: done, quarantined with its sidecar, ignored by the rules, or
still pending with a reason in ``status``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, make_folder, status_json, write_config
from tests.support.helpers import exchange, wait_until
from tests.support.images import image_bytes
from tests.support.trees import tree_digest

OPERATIONS = 1200
RESCAN_SECONDS = 5
SEED = int(os.environ.get("BGSYNCD_FUZZ_SEED", "20261201"))

# Ignored by the built-in rules (SPEC §4): never queued, left where they are.
IGNORED_NAMES = (".hidden.jpg", "x.part", "x.crdownload", "x.tmp", "x.jpg~", ".x.jpg.swp")
NAME_PARTS = (
    "photo", "IMG 0001", "café", "日本語", "🦊", "-dash", "a b c", "quote'\"", "per%cent",
    "new\nline", "tab\there", "ü" * 40, "x" * 60, "a.mask", "a", "dup",
)  # fmt: skip
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


def bomb_png() -> bytes:
    """A tiny PNG whose header claims 30,000 by 30,000 pixels."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height (CRC now wrong too)
    return bytes(data)


@dataclass
class Entry:
    """What the fuzzer last left at one inbox path."""

    kind: str  # image | bad | ignored | empty
    content: bytes


class Fuzzer:
    """Hostile operations on the inboxes; remembers what each path should become."""

    def __init__(self, rng: random.Random, inboxes: dict[str, Path], outside: Path) -> None:
        self.rng = rng
        self.inboxes = inboxes
        self.outside = outside
        self.ledger: dict[tuple[str, str], Entry] = {}
        # Paths that ever held something the daemon may queue: a job row may stay there.
        self.queueable: set[tuple[str, str]] = set()
        self.dirs: dict[str, list[str]] = {name: [""] for name in inboxes}
        self.swapped: list[tuple[Path, Path]] = []  # (inbox path now a link, real folder aside)
        self.ever_swapped: set[Path] = set()  # folders an attacker had away at some moment
        self.staging = outside.parent / "staging"
        self.staging.mkdir()
        self.counter = 0

    # -- names --------------------------------------------------------------------

    def _name(self, ext: str) -> str:
        self.counter += 1
        part = self.rng.choice(NAME_PARTS)
        if self.rng.random() < 0.3:  # collisions on purpose: same stem, other extension
            return f"{part}.{ext}"
        return f"{part}-{self.counter}.{ext}"

    def _long_name(self, ext: str) -> str:
        self.counter += 1
        tail = f"-{self.counter}.{ext}"
        budget = 255 - len(tail.encode())
        stem = ""
        while len((stem + "é").encode()) <= budget:
            stem += self.rng.choice("éa日")
            if len((stem + "日").encode()) > budget:
                break
        return stem + tail

    def _place(self, folder: str) -> str:
        live = [d for d in self.dirs[folder] if not self._is_swapped(folder, d)]
        return self.rng.choice(live)

    def _is_swapped(self, folder: str, rel: str) -> bool:
        path = self.inboxes[folder] / rel if rel else self.inboxes[folder]
        return any(path == link or link in path.parents for link, _ in self.swapped)

    # -- operations -----------------------------------------------------------------

    def step(self) -> None:
        op = self.rng.choices(
            (
                self.image, self.garbage, self.truncated, self.empty, self.ignored,
                self.bad_name, self.long_name, self.link_out, self.fifo, self.mkdir,
                self.rewrite, self.rename, self.move_in, self.delete, self.bomb, self.swap,
            ),
            weights=(30, 6, 5, 3, 5, 2, 4, 3, 1, 4, 6, 4, 4, 3, 1, 6),
        )[0]  # fmt: skip
        op()

    def _write(self, folder: str, rel: str, data: bytes, kind: str) -> None:
        path = self.inboxes[folder] / rel
        try:
            if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)  # an earlier symlink or FIFO of ours: never write through it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as fh:
                fh.write(data)
        except OSError:
            return  # a name the filesystem refuses is no input
        self.ledger[(folder, rel)] = Entry(kind, data)
        if kind in ("image", "bad"):
            self.queueable.add((folder, rel))

    def _new(self, ext: str, long: bool = False) -> tuple[str, str]:
        folder = self.rng.choice(list(self.inboxes))
        name = self._long_name(ext) if long else self._name(ext)
        return folder, os.path.join(self._place(folder), name)

    def image(self) -> None:
        fmt = self.rng.choice(FORMATS)
        folder, rel = self._new(self.rng.choice(("jpg", "png", "gif", "bmp", "webp", "tif", "x")))
        self._write(folder, rel, image_bytes(self.rng, fmt), "image")

    def garbage(self) -> None:
        folder, rel = self._new(self.rng.choice(("jpg", "png", "txt")))
        self._write(folder, rel, self.rng.randbytes(self.rng.randint(1, 3000)), "bad")

    def truncated(self) -> None:
        data = image_bytes(self.rng, self.rng.choice(("JPEG", "PNG")))
        folder, rel = self._new("jpg")
        self._write(folder, rel, data[: max(20, len(data) // 3)], "bad")

    def bomb(self) -> None:
        folder, rel = self._new("png")
        self._write(folder, rel, bomb_png(), "bad")

    def empty(self) -> None:
        folder, rel = self._new("jpg")
        self._write(folder, rel, b"", "empty")

    def ignored(self) -> None:
        folder = self.rng.choice(list(self.inboxes))
        self.counter += 1
        name = self.rng.choice(IGNORED_NAMES).replace("x", f"x{self.counter}", 1)
        rel = os.path.join(self._place(folder), name)
        self._write(folder, rel, image_bytes(self.rng, "JPEG"), "ignored")

    def bad_name(self) -> None:
        folder = self.rng.choice(list(self.inboxes))
        self.counter += 1
        name = os.fsdecode(b"bad\xff\xfe" + str(self.counter).encode() + b".jpg")
        # Not UTF-8: skipped (file.bad_name) and left where it is.
        self._write(folder, os.path.join(self._place(folder), name), b"\xff\xd8junk", "ignored")

    def long_name(self) -> None:
        folder, rel = self._new(self.rng.choice(("jpg", "png")), long=True)
        self._write(folder, rel, image_bytes(self.rng, "PNG"), "image")

    def link_out(self) -> None:
        folder, rel = self._new("jpg")
        target = self.rng.choice([p for p in self.outside.rglob("*")] or [self.outside])
        if os.path.lexists(self.inboxes[folder] / rel):
            return
        try:
            os.symlink(target, self.inboxes[folder] / rel)
        except OSError:
            return
        self.ledger[(folder, rel)] = Entry("ignored", b"")

    def fifo(self) -> None:
        folder, rel = self._new("jpg")
        if os.path.lexists(self.inboxes[folder] / rel):
            return
        os.mkfifo(self.inboxes[folder] / rel)
        self.ledger[(folder, rel)] = Entry("ignored", b"")

    def mkdir(self) -> None:
        folder = self.rng.choice(list(self.inboxes))
        self.counter += 1
        rel = os.path.join(self._place(folder), f"{self.rng.choice(NAME_PARTS)}-d{self.counter}")
        if rel.count(os.sep) > 6:
            return
        (self.inboxes[folder] / rel).mkdir()
        self.dirs[folder].append(rel)

    def _pick_file(self, kinds: tuple[str, ...]) -> tuple[str, str] | None:
        choices = [
            key
            for key, e in self.ledger.items()
            if e.kind in kinds and not self._is_swapped(key[0], os.path.dirname(key[1]))
            and os.path.lexists(self.inboxes[key[0]] / key[1])
        ]  # fmt: skip
        return self.rng.choice(choices) if choices else None

    def rewrite(self) -> None:
        key = self._pick_file(("image", "bad"))
        if key is not None:
            self._write(*key, image_bytes(self.rng, self.rng.choice(FORMATS)), "image")

    def rename(self) -> None:
        key = self._pick_file(("image", "bad"))
        if key is None:
            return
        folder, rel = key
        new_rel = os.path.join(self._place(folder), self._name("jpg"))
        try:
            os.rename(self.inboxes[folder] / rel, self.inboxes[folder] / new_rel)
        except FileNotFoundError:
            return  # processed and deleted (after_success) or quarantined meanwhile
        self.ledger[(folder, new_rel)] = self.ledger.pop(key)
        self.queueable.add((folder, new_rel))

    def move_in(self) -> None:
        folder, rel = self._new("jpg")
        staged = self.staging / f"s{self.counter}.jpg"
        data = image_bytes(self.rng, "JPEG")
        staged.write_bytes(data)
        os.rename(staged, self.inboxes[folder] / rel)
        self.ledger[(folder, rel)] = Entry("image", data)
        self.queueable.add((folder, rel))

    def delete(self) -> None:
        key = self._pick_file(("image", "bad", "empty"))
        if key is not None:
            (self.inboxes[key[0]] / key[1]).unlink(missing_ok=True)
            del self.ledger[key]

    def swap(self) -> None:
        """Swap a sub-folder for a symlink to the private folder, or swap one back."""
        outer = [
            (link, aside)
            for link, aside in self.swapped
            if not any(other in link.parents for other, _ in self.swapped)
        ]
        if outer and self.rng.random() < 0.5:
            link, aside = self.rng.choice(outer)
            self.swapped.remove((link, aside))
            exchange(link, aside)  # the real folder returns, the link goes aside
            aside.unlink()
            return
        folder = self.rng.choice(list(self.inboxes))
        subs = [
            d
            for d in self.dirs[folder]
            if d
            and not self._is_swapped(folder, d)
            and not any(self.inboxes[folder] / d in link.parents for link, _ in self.swapped)
        ]
        if not subs:
            return
        real = self.inboxes[folder] / self.rng.choice(subs)
        self.counter += 1
        aside = self.staging / f"aside-{self.counter}"
        aside.symlink_to(self.outside, target_is_directory=True)
        exchange(real, aside)  # now: real path -> link to outside; aside -> the real folder
        self.swapped.append((real, aside))
        self.ever_swapped.add(real)

    def restore(self) -> None:
        while self.swapped:
            link, aside = self.swapped.pop()
            exchange(link, aside)
            aside.unlink()


def _jobs(database: Path) -> dict[tuple[str, str], tuple[str, str | None, list[str]]]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT folder, relpath, state, reason, outputs FROM jobs").fetchall()
    finally:
        conn.close()
    return {(f, r): (s, reason, json.loads(o or "[]")) for f, r, s, reason, o in rows}


@pytest.mark.slow
def test_a_thousand_hostile_operations_leave_the_daemon_alive_and_nothing_lost(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    rng = random.Random(SEED)
    keep = make_folder(tmp_path, "keep")
    gone = make_folder(tmp_path, "gone", after_success="delete")
    outside = tmp_path / "private"
    (outside / "deep").mkdir(parents=True)
    for i in range(20):
        (outside / f"secret{i}.jpg").write_bytes(image_bytes(rng, "JPEG"))
        (outside / "deep" / f"s{i}.png").write_bytes(image_bytes(rng, "PNG"))
    before = tree_digest(outside)
    secret_shas = {v for v in before.values() if len(v) == 64}
    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[keep, gone],
        # The periodic rescan is part of the promise that nothing is lost: it finds
        # what an observer dropped (watchdog 6, on Python 3.10, sometimes loses the
        # events of a folder swapped out and back). Short here, so the test need
        # not wait five minutes for it; the watcher's own tests hold events exact.
        queue={"max_attempts": 3, "rescan_interval_seconds": RESCAN_SECONDS},
        metrics_listen="",
    )
    d = DaemonProcess(config)
    daemons.append(d)
    d.wait_ready()
    inboxes = {"keep": Path(keep["inbox"]), "gone": Path(gone["inbox"])}
    fuzzer = Fuzzer(rng, inboxes, outside)
    for _ in range(OPERATIONS):
        fuzzer.step()
    fuzzer.restore()
    assert d.proc.poll() is None, d.output()[-3000:]

    # Settled: nothing open in the queue, and nothing new queued for longer than a
    # rescan interval (restoring the swapped folders brings files back).
    quiet: list[tuple[float, int]] = []

    def settled() -> bool:
        jobs = status_json(config)["jobs"]
        if jobs["pending"] + jobs["in_flight"] + jobs["retry_wait"]:
            quiet.clear()
            return False
        total = sum(jobs.values())
        if quiet and quiet[0][1] != total:
            quiet.clear()
        quiet.append((time.monotonic(), total))
        return quiet[-1][0] - quiet[0][0] >= RESCAN_SECONDS + 2.0

    wait_until(settled, 180, interval=0.25, what="the queue to settle")
    assert d.proc.poll() is None, d.output()[-3000:]
    assert tree_digest(outside) == before, "the private folder outside the inboxes changed"
    assert not secret_shas & {r.image_sha256 for r in emulator.requests()}, "a secret was sent"

    jobs = _jobs(tmp_path / "state" / "queue.sqlite3")
    sent = {r.image_sha256 for r in emulator.requests()}
    problems = []
    for (folder, rel), entry in fuzzer.ledger.items():
        inbox = inboxes[folder]
        root = Path(keep["outbox"] if folder == "keep" else gone["outbox"])
        qroot = Path(keep["quarantine"] if folder == "keep" else gone["quarantine"])
        job = jobs.get((folder, rel))
        if entry.kind in ("ignored", "empty"):
            if job is not None and (folder, rel) not in fuzzer.queueable:
                problems.append(f"{folder}/{rel!r} ({entry.kind}) was queued: {job}")
            elif not os.path.lexists(inbox / rel):
                problems.append(f"{folder}/{rel!r} ({entry.kind}) is gone")
            continue
        if job is None:
            problems.append(f"{folder}/{rel!r} ({entry.kind}) never queued")
            continue
        state, reason, outputs = job
        if entry.kind == "image":
            if state != "done" or not outputs:
                problems.append(f"{folder}/{rel!r}: image ended {state} ({reason})")
                continue
            for out in outputs:
                if not (root / out).is_file():
                    problems.append(f"{folder}/{rel!r}: output {out!r} missing")
            # Its last version was processed (sent once for its content), not deleted
            # or adopted unseen: done with an older version's cut-out is a loss.
            if hashlib.sha256(entry.content).hexdigest() not in sent:
                problems.append(f"{folder}/{rel!r}: done, but its last version was never sent")
            # Deleting it may have met its folder swapped away: then it stays, done
            # (file.vanished during "after success"), which is safe, not a loss.
            swapped = any(p in fuzzer.ever_swapped for p in (inbox / rel).parents)
            if folder == "gone" and (inbox / rel).exists() and not swapped:
                problems.append(f"{folder}/{rel!r}: not deleted after success")
            if folder == "keep" and (inbox / rel).read_bytes() != entry.content:
                problems.append(f"{folder}/{rel!r}: input changed")
        else:
            if state != "quarantined":
                problems.append(f"{folder}/{rel!r}: bad input ended {state} ({reason})")
                continue
            sidecars = [
                json.loads(p.read_text(encoding="utf-8"))
                for p in qroot.rglob("*.json")
                if p.is_file()
            ]
            if not any(s.get("path") == rel for s in sidecars):
                problems.append(f"{folder}/{rel!r}: quarantined without a sidecar")
            if os.path.lexists(inbox / rel):
                problems.append(f"{folder}/{rel!r}: quarantined but still in the inbox")
    assert not problems, f"seed {SEED}: {len(problems)} problems:\n" + "\n".join(problems[:40])
    assert d.stop() == 0
