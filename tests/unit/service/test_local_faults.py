"""Local faults (SPEC §4): a full or read-only outbox pauses ``output_unwritable``
and a probe write lifts the pause by itself. Real tmpfs mounts (root)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from bgsyncd.emulator import Emulator
from bgsyncd.files.probe import PROBE_INTERVAL_SECONDS, OutputProbe, probe_write
from bgsyncd.service.local_faults import LocalFaults
from bgsyncd.storage.cache import ResultCache
from tests.support.helpers import FakeClock, product_image, wait_until
from tests.support.mounts import ENOSPC_TEXT, EROFS_TEXT, tmpfs
from tests.support.workers import WorkerFactory, make_dispatcher


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".filler")


# -- probe_write on real filesystems ---------------------------------------------------


def test_probe_write_leaves_nothing_behind_on_a_healthy_folder(tmp_path: Path) -> None:
    probe_write(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_probe_write_fails_with_enospc_on_a_full_tmpfs_and_passes_once_freed(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "outbox", "256k") as fs:
        fs.fill()
        with pytest.raises(OSError) as caught:
            probe_write(fs.path)
        assert caught.value.errno == errno.ENOSPC
        assert _leftovers(fs.path) == []  # the empty temp file was removed too
        fs.free()
        probe_write(fs.path)
        assert _leftovers(fs.path) == []


def test_probe_write_fails_with_erofs_on_a_read_only_remount_and_passes_after_rw(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "outbox") as fs:
        (fs.path / "sub").mkdir()
        fs.readonly()
        with pytest.raises(OSError) as caught:
            probe_write(fs.path / "sub")
        assert caught.value.errno == errno.EROFS
        fs.readwrite()
        probe_write(fs.path / "sub")
        assert _leftovers(fs.path / "sub") == []


def test_probe_write_of_a_folder_never_made_probes_its_deepest_existing_parent_under_root(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "outbox", "256k") as fs:
        (fs.path / "a").mkdir()
        fs.fill()
        with pytest.raises(OSError) as caught:
            # mkdir of a/b/c failed: probe where it would have gone, a/.
            probe_write(fs.path / "a" / "b" / "c", root=fs.path)
        assert caught.value.errno == errno.ENOSPC
        fs.free()
        probe_write(fs.path / "a" / "b" / "c", root=fs.path)
        assert _leftovers(fs.path) == ["a"] and _leftovers(fs.path / "a") == []


def test_probe_write_under_a_root_refuses_a_symlink_on_the_way(tmp_path: Path) -> None:
    root, outside = tmp_path / "outbox", tmp_path / "outside"
    root.mkdir()
    (outside / "sub").mkdir(parents=True)
    (root / "a").symlink_to(outside)
    with pytest.raises(OSError) as caught:
        probe_write(root / "a" / "sub", root=root)
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)  # a refused write
    assert list((outside / "sub").iterdir()) == []


def test_probe_write_never_probes_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    root.mkdir()
    probe_write(tmp_path / "elsewhere", root=root)  # probes the root itself
    assert _leftovers(tmp_path) == ["outbox"] and _leftovers(root) == []


def test_probe_write_refuses_a_folder_that_is_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "outbox").symlink_to(outside)
    with pytest.raises(OSError) as caught:
        probe_write(tmp_path / "outbox")
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert list(outside.iterdir()) == []


# -- OutputProbe: when to probe, what it says (time injected, no sleeps) -------------------


class ScriptedDisk:
    """Stands in for the disk in the timing tests: fails each place until told otherwise."""

    def __init__(self) -> None:
        self.broken: dict[Path, OSError] = {}
        self.probed: list[Path] = []

    def __call__(self, place: Path, root: Path | None = None) -> None:
        self.probed.append(place)
        if place in self.broken:
            raise self.broken[place]


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_probe_waits_the_interval_after_a_failure_then_resumes_when_the_write_passes() -> None:
    clock, disk = FakeClock(), ScriptedDisk()
    probe = OutputProbe(clock=clock, probe=disk)
    assert probe.interval == PROBE_INTERVAL_SECONDS == 30.0
    clock.advance(3600.0)
    assert not probe.due() and probe.failing == {}  # nothing failed: never due
    place = Path("/srv/outbox/sub")
    disk.broken[place] = _enospc()
    assert probe.note(place, _enospc()) == ENOSPC_TEXT
    assert probe.failing == {place: ENOSPC_TEXT}
    clock.advance(29.9)
    assert not probe.due()
    assert probe.run().ran is False and disk.probed == []
    clock.advance(0.1)
    assert probe.due()
    first = probe.run()
    assert first.ran and not first.recovered and first.failing == {place: ENOSPC_TEXT}
    assert disk.probed == [place]
    clock.advance(29.9)
    assert not probe.due()  # the next round waits the interval again
    del disk.broken[place]  # space came back
    clock.advance(0.1)
    assert probe.due()
    second = probe.run()
    assert second.recovered and probe.failing == {}
    clock.advance(3600.0)
    assert not probe.due()  # nothing left to probe


def test_probe_forced_by_sighup_runs_at_once_and_only_when_something_failed() -> None:
    clock, disk = FakeClock(), ScriptedDisk()
    probe = OutputProbe(clock=clock, probe=disk)
    assert probe.run(force=True).ran is False  # nothing failed: nothing to probe
    place = Path("/srv/outbox")
    probe.note(place, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    result = probe.run(force=True)
    assert result.recovered and disk.probed == [place]


def test_probe_keeps_every_place_until_each_takes_a_write() -> None:
    clock, disk = FakeClock(), ScriptedDisk()
    probe = OutputProbe(clock=clock, probe=disk)
    outbox, quarantine = Path("/srv/outbox"), Path("/srv/quarantine")
    disk.broken[quarantine] = OSError(errno.EROFS, os.strerror(errno.EROFS))
    probe.note(outbox, _enospc())
    probe.note(quarantine, _enospc())
    clock.advance(30.0)
    result = probe.run()
    assert not result.recovered
    assert result.failing == {quarantine: EROFS_TEXT}  # the newest errno text
    del disk.broken[quarantine]
    clock.advance(30.0)
    assert probe.run().recovered


def test_a_place_noted_again_during_a_round_is_not_forgotten_by_that_round() -> None:
    clock = FakeClock()
    place = Path("/srv/outbox")
    probe: OutputProbe

    def disk(p: Path, root: Path | None) -> None:  # passes, but a worker fails there meanwhile
        probe.note(p, _enospc())

    probe = OutputProbe(clock=clock, probe=disk)
    probe.note(place, _enospc())
    result = probe.run(force=True)
    assert not result.recovered and result.failing == {place: ENOSPC_TEXT}


# -- a real daemon, a real full or read-only outbox ---------------------------------------


def test_a_probe_hung_on_a_dead_mount_never_holds_up_the_main_loop(
    tmp_path: Path, emulator: Emulator, worker_factory: WorkerFactory
) -> None:
    # A write that never returns (a hard NFS mount whose server is gone) cannot
    # be made real here: the probe's one disk call is stood in for by a gate.
    gate = threading.Event()
    calls: list[Path] = []

    def hung_write(place: Path, root: Path | None) -> None:
        calls.append(place)
        gate.wait(30)

    d, queue, client = make_dispatcher(worker_factory, tmp_path, emulator)
    faults = LocalFaults(queue, lambda: [], lambda: None, OutputProbe(probe=hung_write))
    d.start()
    try:
        d.raise_pause("output_unwritable", error=ENOSPC_TEXT)
        faults.probe.note(tmp_path / "out", ENOSPC_TEXT)
        turn = threading.Thread(target=lambda: faults.lift(d, sighup=True))
        turn.start()
        turn.join(10)
        assert not turn.is_alive(), "the main loop's turn waited for the probe"
        wait_until(lambda: calls, what="the probe round started")
        faults.lift(d, sighup=True)  # a second SIGHUP while the first round hangs
        assert calls == [tmp_path / "out"] and faults.probing
        assert d.paused == "output_unwritable"
        gate.set()  # the mount answers again
        wait_until(lambda: d.paused is None, what="the pause lifted by the probe's thread")
        assert not faults.probing
    finally:
        gate.set()
        d.stop(5)
        client.close()
        queue.close()


# -- every message names the errno ----------------------------------------------------------


def test_a_cache_write_on_a_full_disk_logs_the_errno_and_never_fails_the_job(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "cache", "256k") as fs:
        cache = ResultCache(fs.path, 1024 * 1024)
        fs.fill()
        capfd.readouterr()
        cache.put("ab" * 32, product_image(64, 48, "PNG"))  # logged and skipped
        logged = capfd.readouterr().err
        assert "cache.write_failed" in logged and ENOSPC_TEXT in logged, logged
        assert cache.get("ab" * 32) is None
