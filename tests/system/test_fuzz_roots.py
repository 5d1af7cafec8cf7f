"""Folders above, at and below every root swapped for symlinks while files flow (issue 15).

A seeded fuzzer (``BGSYNCD_FUZZ_SEED`` overrides the seed, as in
``test_fuzz.py``) drops images and garbage into two inboxes while it swaps,
atomically (``renameat2(RENAME_EXCHANGE)``), a folder for a symlink to its
twin in an outside tree full of decoys: the inboxes', outboxes',
quarantines' and the done folder's parents, the roots themselves, a folder
below each, the whole tree, the state folder (the database and the cache),
its parent, and the cache folder.
Swaps last a random while, then the real folder comes back.

Afterwards: the outside tree is byte for byte what it was, nothing in it was
ever sent, and every input is accounted for (done with its outputs, or
quarantined with its sidecar, or still in its inbox). A daemon that finds
its database replaced (the state folder or a folder above it swapped) exits 1 with
``queue.lost``, as documented (README, exit codes): the fuzzer then puts the
folders back and starts it again, as systemd would.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from tests.support.daemons import DaemonProcess, status_json, write_config
from tests.support.helpers import exchange, wait_until
from tests.support.images import image_bytes
from tests.support.trees import tree_digest

SEED = int(os.environ.get("BGSYNCD_FUZZ_SEED", "20261206"))
FUZZ_SECONDS = 40.0
RESCAN_SECONDS = 2
SUB = "sub"  # a folder below every root, so "below" can be swapped too

# Roots relative to the test's ``srv`` tree; each one's chain of folders is swappable.
ROOTS = {
    "a.inbox": "in/team/x",
    "a.outbox": "out/team/x",
    "a.quarantine": "q/team/x",
    "b.inbox": "in2/y",
    "b.outbox": "out2/y",
    "b.quarantine": "q2/y",
    "b.done": "done/y",
}
STATE = "var/state"  # holds queue.sqlite3 and the cache
# Swapped too: the whole tree (""), the state folder's parent, the state folder, the cache.
STATE_LEVELS = ("", "var", STATE)
EXTRA_LEVELS = (*STATE_LEVELS, f"{STATE}/cache")


def _levels() -> list[str]:
    """Every folder worth swapping: each root's ancestors, the root, one folder below; state."""
    out = set(EXTRA_LEVELS)
    for rel in ROOTS.values():
        parts = rel.split("/")
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        out.add(f"{rel}/{SUB}")
    return sorted(out)


def _overlaps(a: str, b: str) -> bool:
    """One of the two is the other or inside it ("" is the whole tree)."""
    return a == b or not a or not b or a.startswith(b + "/") or b.startswith(a + "/")


class RootFuzzer:
    """Files into the inboxes, folders swapped for links to the outside twin and back."""

    def __init__(self, rng: random.Random, srv: Path, outside: Path, aside: Path) -> None:
        self.rng = rng
        self.srv = srv
        self.outside = outside
        self.aside = aside
        self.levels = _levels()
        self.swapped: dict[str, Path] = {}  # level -> where its real folder is now
        self.state_swapped = False  # since the daemon last started
        self.inputs: dict[tuple[str, str], tuple[str, bytes]] = {}  # (folder, rel) -> kind, data
        self.counter = 0
        self.swaps = 0
        self.state_swaps = 0

    def _free(self, rel: str) -> bool:
        """Nothing on ``rel``'s way (or under it) is swapped now."""
        return not any(_overlaps(rel, s) for s in self.swapped)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.55:
            self.drop()
        elif roll < 0.8 or not self.swapped:
            self.swap()
        else:
            self.restore(self.rng.choice(sorted(self.swapped)))

    def drop(self) -> None:
        folder = self.rng.choice(("a", "b"))
        inbox = ROOTS[f"{folder}.inbox"]
        where = self.rng.choice(("", SUB))
        if not self._free(f"{inbox}/{where}" if where else inbox):
            return  # the writer never writes through a link either
        self.counter += 1
        if self.rng.random() < 0.8:
            kind, data = "image", image_bytes(self.rng, self.rng.choice(("JPEG", "PNG")))
        else:
            kind, data = "bad", self.rng.randbytes(self.rng.randint(10, 500))
        rel = f"{where}/f{self.counter}.jpg" if where else f"f{self.counter}.jpg"
        tmp = self.srv / inbox / f".f{self.counter}.part"  # renamed in whole: complete at once
        tmp.write_bytes(data)
        os.rename(tmp, self.srv / inbox / rel)
        self.inputs[(folder, rel)] = (kind, data)

    def swap(self) -> None:
        free = [lv for lv in self.levels if self._free(lv)]
        if not free:
            return
        level = self.rng.choice(free)
        self.counter += 1
        link = self.aside / f"link-{self.counter}"
        link.symlink_to(self.outside / level, target_is_directory=True)
        exchange(self.srv / level, link)  # the level is a link now; `link` the real folder
        self.swapped[level] = link
        self.swaps += 1
        if level in STATE_LEVELS:
            self.state_swapped = True
            self.state_swaps += 1

    def restore(self, level: str) -> None:
        real = self.swapped.pop(level)
        exchange(self.srv / level, real)
        real.unlink()  # the link, back aside

    def restore_all(self) -> None:
        for level in sorted(self.swapped):
            self.restore(level)


def _make_tree(srv: Path, outside: Path, rng: random.Random) -> None:
    """The real folders, and an outside twin of every one, full of tempting decoys."""
    for rel in ROOTS.values():
        (srv / rel / SUB).mkdir(parents=True)
    (srv / STATE / "cache").mkdir(parents=True)
    for rel in ROOTS.values():
        for where in ("", SUB):
            twin = outside / rel / where
            twin.mkdir(parents=True, exist_ok=True)
            for i in range(1, 60):
                # The names the daemon would read, write or move if it followed a link.
                (twin / f"f{i}.jpg").write_bytes(image_bytes(rng, "JPEG"))
                (twin / f"f{i}.png").write_bytes(b"outside output %d" % i)
                (twin / f"f{i}.jpg.error.json").write_bytes(b"outside sidecar %d" % i)
    state = outside / STATE
    (state / "cache").mkdir(parents=True)
    for name in ("queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm", "queue.sqlite3.lock"):
        (state / name).write_bytes(b"outside " + name.encode())


def _settled(config: Path, quiet: list[tuple[float, int]]) -> bool:
    """Nothing open in the queue, and nothing new queued for longer than a rescan."""
    jobs = status_json(config)["jobs"]
    if jobs["pending"] + jobs["in_flight"] + jobs["retry_wait"]:
        quiet.clear()
        return False
    total = sum(jobs.values())
    if quiet and quiet[0][1] != total:
        quiet.clear()
    quiet.append((time.monotonic(), total))
    return quiet[-1][0] - quiet[0][0] >= RESCAN_SECONDS + 2.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (links not followed), by path relative to it."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


@pytest.mark.slow
def test_swaps_above_at_and_below_every_root_never_reach_outside_nor_lose_a_file(
    tmp_path: Path, emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    rng = random.Random(SEED)
    srv, outside, aside = tmp_path / "srv", tmp_path / "outside", tmp_path / "aside"
    aside.mkdir()
    _make_tree(srv, outside, rng)
    before = tree_digest(outside)
    decoys = {_sha(p.read_bytes()) for p in outside.rglob("*") if p.is_file()}

    def folder(name: str, **extra: object) -> dict[str, object]:
        return {
            "name": name,
            "inbox": str(srv / ROOTS[f"{name}.inbox"]),
            "outbox": str(srv / ROOTS[f"{name}.outbox"]),
            "quarantine": str(srv / ROOTS[f"{name}.quarantine"]),
            **extra,
        }

    config = write_config(
        tmp_path / "c.toml",
        base_url=emulator.url,
        folders=[
            folder("a", after_success="delete"),
            folder("b", after_success="move", done=str(srv / ROOTS["b.done"])),
        ],
        queue={
            "database": str(srv / STATE / "queue.sqlite3"),
            "max_attempts": 3,
            "rescan_interval_seconds": RESCAN_SECONDS,
        },
    )
    fuzzer = RootFuzzer(rng, srv, outside, aside)
    restarts = 0

    def start() -> DaemonProcess:
        d = DaemonProcess(config)
        daemons.append(d)
        d.wait_ready(60)
        fuzzer.state_swapped = False
        return d

    def running(d: DaemonProcess) -> DaemonProcess:
        """``d``, or a new daemon if it exited for the one documented reason."""
        nonlocal restarts
        code = d.proc.poll()
        if code is None:
            return d
        # Only a database replaced under it (the state folder or one above swapped).
        assert code == 1 and fuzzer.state_swapped, d.output()[-3000:]
        assert d.saw("queue.lost"), d.output()[-3000:]
        d.stop()
        fuzzer.restore_all()
        restarts += 1
        return start()

    daemon = start()
    deadline = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < deadline:
        fuzzer.step()
        time.sleep(rng.uniform(0.0, 0.15))
        daemon = running(daemon)
    fuzzer.restore_all()
    time.sleep(1.5)  # a database check runs every second: a last exit shows by now
    daemon = running(daemon)
    assert fuzzer.swaps >= 50, fuzzer.swaps
    assert fuzzer.state_swaps >= 2, fuzzer.state_swaps
    assert len(fuzzer.inputs) >= 50, len(fuzzer.inputs)

    quiet: list[tuple[float, int]] = []
    wait_until(lambda: _settled(config, quiet), 120, interval=0.25, what="the queue to settle")
    assert daemon.proc.poll() is None, daemon.output()[-3000:]

    # Nothing outside changed, and nothing outside was ever sent.
    assert tree_digest(outside) == before, "the outside tree changed"
    sent = {r.image_sha256 for r in emulator.requests() if r.image_sha256}
    assert not sent & decoys, "an outside file was sent"
    ours = {_sha(data) for _kind, data in fuzzer.inputs.values()}
    assert sent <= ours, "something not ours was sent"

    # Every input accounted for.
    trees = {name: _files(srv / rel) for name, rel in ROOTS.items() if "inbox" not in name}
    inboxes = {name: _files(srv / ROOTS[f"{name}.inbox"]) for name in ("a", "b")}
    problems = []
    for (name, rel), (kind, data) in sorted(fuzzer.inputs.items()):
        if inboxes[name].get(rel) == data:
            continue  # still in its inbox: pending, done and kept, or not movable
        quarantined = [q for q, content in trees[f"{name}.quarantine"].items() if content == data]
        sidecars = [
            json.loads(content)
            for q, content in trees[f"{name}.quarantine"].items()
            if q.endswith(".error.json")
        ]
        if quarantined and any(s.get("path") == rel for s in sidecars):
            continue
        output = rel[: -len(".jpg")] + ".png"
        moved = name == "a" or data in trees["b.done"].values()  # deleted (a) or moved (b)
        if kind == "image" and output in trees[f"{name}.outbox"] and moved:
            continue
        problems.append(f"{name}/{rel} ({kind}) lost")
    assert not problems, f"seed {SEED}, {restarts} restarts: " + "\n".join(problems[:30])
    assert daemon.stop() == 0
