"""Local faults (SPEC §4): a full or read-only outbox pauses ``output_unwritable``
and a probe write lifts the pause by itself. Real tmpfs mounts (root)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bgsyncd.probe import PROBE_INTERVAL_SECONDS, OutputProbe, probe_write
from tests.helpers import FakeClock
from tests.mounts import tmpfs

ENOSPC_TEXT = "[Errno 28] No space left on device"
EROFS_TEXT = "[Errno 30] Read-only file system"


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


def test_probe_write_of_a_folder_never_made_probes_its_nearest_parent(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "outbox", "256k") as fs:
        fs.fill()
        with pytest.raises(OSError) as caught:
            probe_write(fs.path / "a" / "b")  # mkdir of a/b failed: probe where it would go
        assert caught.value.errno == errno.ENOSPC
        fs.free()
        probe_write(fs.path / "a" / "b")
        assert not (fs.path / "a").exists()


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

    def __call__(self, place: Path) -> None:
        self.probed.append(place)
        if place in self.broken:
            raise self.broken[place]


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_probe_waits_the_interval_after_a_failure_then_resumes_when_the_write_passes() -> None:
    clock, disk = FakeClock(), ScriptedDisk()
    probe = OutputProbe(clock=clock, probe=disk)
    assert probe.interval == PROBE_INTERVAL_SECONDS == 30.0
    assert not probe.due() and probe.seconds_until_due() is None
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
    assert not probe.due() and probe.seconds_until_due() == pytest.approx(30.0)
    del disk.broken[place]  # space came back
    clock.advance(30.0)
    second = probe.run()
    assert second.recovered and probe.failing == {}
    assert probe.seconds_until_due() is None and not probe.due()


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

    def disk(p: Path) -> None:  # the probe passes, but a worker fails there meanwhile
        probe.note(p, _enospc())

    probe = OutputProbe(clock=clock, probe=disk)
    probe.note(place, _enospc())
    result = probe.run(force=True)
    assert not result.recovered and result.failing == {place: ENOSPC_TEXT}
