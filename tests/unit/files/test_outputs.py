"""outputs: names, atomic writes, temp-file cleanup and safe moves, on the real filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import pytest

from bgsyncd.errors import is_refused
from bgsyncd.files import moves, names, outputs
from tests.support.paths import ROOT

SIDECAR = {
    "path": "sub/photo.jpg",
    "folder": "products",
    "reason": "corrupt_image",
    "http_status": None,
    "message": "image could not be decoded: image file is truncated",
    "attempts": 0,
    "first_seen": "2025-01-02T03:04:05Z",
    "failed_at": "2025-01-02T03:04:09Z",
}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".bgsyncd-" in p.name)


# names


def test_output_candidates_follow_the_collision_rule() -> None:
    assert list(islice(outputs.output_candidates("dir/a.jpg", "png"), 5)) == [
        "dir/a.png",
        "dir/a.jpg.png",
        "dir/a.jpg~2.png",
        "dir/a.jpg~3.png",
        "dir/a.jpg~4.png",
    ]
    assert list(islice(outputs.output_candidates("a.webp", "png"), 3)) == [
        "a.png",
        "a.webp.png",
        "a.webp~2.png",
    ]
    assert list(islice(outputs.output_candidates("x/y/photo.tar.gz", "jpg"), 2)) == [
        "x/y/photo.tar.jpg",
        "x/y/photo.tar.gz.jpg",
    ]


def test_output_candidates_never_repeat_for_a_name_without_extension() -> None:
    assert list(islice(outputs.output_candidates("d/README", "webp"), 3)) == [
        "d/README.webp",
        "d/README~2.webp",
        "d/README~3.webp",
    ]


def test_mask_relpath_for_each_output_kind() -> None:
    assert outputs.mask_relpath("dir/a.png", "both", "dir/a.jpg") == "dir/a.mask.png"
    assert outputs.mask_relpath("dir/a.jpg~2.webp", "both", "dir/a.jpg") == "dir/a.jpg~2.mask.png"
    assert outputs.mask_relpath("a.jpg", "both", "a.jpg") == "a.mask.png"
    assert outputs.mask_relpath("dir/a.png", "cutout", "dir/a.jpg") is None
    assert outputs.mask_relpath("dir/a.png", "mask", "dir/a.jpg") is None
    with pytest.raises(ValueError, match="output"):
        outputs.mask_relpath("dir/a.png", "everything", "dir/a.jpg")


def test_mask_candidates_start_with_mask_relpath() -> None:
    assert list(islice(outputs.mask_candidates("dir/a.webp", "dir/a.jpg"), 3)) == [
        "dir/a.mask.png",
        "dir/a.mask~2.png",
        "dir/a.mask~3.png",
    ]


def test_sidecar_name_appends_to_the_whole_name() -> None:
    assert outputs.sidecar_name("photo.jpg", "sub/photo.jpg") == "photo.jpg.error.json"


# write_atomic


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_write_atomic_writes_creates_folders_and_leaves_no_temp(
    tmp_path: Path, umask_027: None
) -> None:
    target = tmp_path / "out" / "deep" / "a.png"
    outputs.write_atomic(target, b"first")
    outputs.write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0o666 & ~0o027
    assert _leftovers(tmp_path) == []


def test_write_atomic_mode_follows_another_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        outputs.write_atomic(tmp_path / "a.png", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o664


def test_write_atomic_failing_rename_leaves_no_temp(tmp_path: Path) -> None:
    (tmp_path / "a.png").mkdir()  # a folder is in the way: the final rename fails
    with pytest.raises(OSError):
        outputs.write_atomic(tmp_path / "a.png", b"data")
    assert _leftovers(tmp_path) == []


def test_write_atomic_failing_mid_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    # A real short write: a file-size limit makes write() fail with EFBIG after
    # 4 KiB. Run in a child process so the limit cannot touch the test runner.
    target = tmp_path / "a.png"
    target.write_bytes(b"old content")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from bgsyncd.files import names, outputs
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            outputs.write_atomic(Path({str(target)!r}), b"x" * 100_000)
        except OSError as exc:
            sys.exit(f"failed: {{exc.errno}}")
        sys.exit("no error")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.stderr.strip().startswith("failed:"), proc.stderr
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


# cleanup_temp_files


def test_cleanup_removes_only_our_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    ours = [
        root / ".a.png.bgsyncd-0123456789abcdef.tmp",
        root / "x/y/.b.webp.bgsyncd-fedcba9876543210.tmp",
    ]
    theirs = [
        root / "photo.tmp",
        root / ".a.png.bgsyncd-nothex.tmp",
        root / "a.png.bgsyncd-0123456789abcdef.tmp",  # not hidden: not our name
        root / "x/.rsync.AbC123",
        root / "x/a.png",
    ]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    # Neither a symlink with our name nor anything behind a symlinked folder is touched.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    behind = outside / ".c.png.bgsyncd-00000000000000aa.tmp"
    behind.write_bytes(b"x")
    (root / "link").symlink_to(outside)
    link_named_like_ours = root / ".d.png.bgsyncd-00000000000000bb.tmp"
    link_named_like_ours.symlink_to(behind)

    assert outputs.cleanup_temp_files(root) == 2
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    assert behind.exists() and link_named_like_ours.is_symlink()


def test_cleanup_older_than_leaves_a_temp_file_being_written(tmp_path: Path) -> None:
    fresh = tmp_path / ".a.png.bgsyncd-0123456789abcdef.tmp"
    old = tmp_path / ".b.png.bgsyncd-fedcba9876543210.tmp"
    for path in (fresh, old):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3601
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert outputs.cleanup_temp_files(tmp_path, older_than=3600) == 1
    assert fresh.exists() and not old.exists()


def test_cleanup_of_a_missing_folder_is_zero(tmp_path: Path) -> None:
    assert outputs.cleanup_temp_files(tmp_path / "nothing") == 0


def test_temp_names_of_very_long_names_stay_within_the_limit(tmp_path: Path) -> None:
    name = "é" * 120 + ".jpg"  # 244 bytes in UTF-8
    outputs.write_atomic(tmp_path / name, b"ok")
    assert (tmp_path / name).read_bytes() == b"ok"
    assert _leftovers(tmp_path) == []


# quarantine_file and move_to


def _drop(folder: Path, relpath: str, data: bytes) -> Path:
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _quarantine(
    inbox: Path, relpath: str, q: Path, sidecar: dict[str, object] | None = None
) -> Path:
    return q / moves.quarantine_file(inbox, relpath, q, SIDECAR if sidecar is None else sidecar)


def test_quarantine_moves_the_file_and_writes_the_sidecar(tmp_path: Path) -> None:
    src = _drop(tmp_path / "inbox", "sub/photo.jpg", b"jpeg bytes")
    final = _quarantine(tmp_path / "inbox", "sub/photo.jpg", tmp_path / "quarantine")
    assert final == tmp_path / "quarantine" / "sub" / "photo.jpg"
    assert final.read_bytes() == b"jpeg bytes"
    assert not src.exists()
    sidecar = final.parent / "photo.jpg.error.json"
    assert json.loads(sidecar.read_text()) == SIDECAR
    assert list(json.loads(sidecar.read_text())) == list(SIDECAR)  # keys in the given order
    assert _leftovers(tmp_path) == []


def test_quarantine_collision_keeps_the_first_and_suffixes_the_newcomer(tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    _drop(tmp_path / "inbox", "photo.jpg", b"one")
    first = _quarantine(tmp_path / "inbox", "photo.jpg", q)
    _drop(tmp_path / "inbox", "photo.jpg", b"two")
    second = _quarantine(tmp_path / "inbox", "photo.jpg", q, {**SIDECAR, "attempts": 5})
    assert (first.name, second.name) == ("photo.jpg", "photo~2.jpg")
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert json.loads((q / "photo.jpg.error.json").read_text())["attempts"] == 0
    assert json.loads((q / "photo~2.jpg.error.json").read_text())["attempts"] == 5


def test_quarantine_treats_a_leftover_sidecar_as_taken(tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    _drop(q, "photo.jpg.error.json", b"{}")
    _drop(tmp_path / "inbox", "photo.jpg", b"x")
    final = _quarantine(tmp_path / "inbox", "photo.jpg", q)
    assert final.name == "photo~2.jpg"
    assert (q / "photo.jpg.error.json").read_bytes() == b"{}"


def test_concurrent_quarantines_of_one_name_all_get_their_own(tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    inboxes = [_drop(tmp_path / f"inbox{i}", "photo.jpg", str(i).encode()).parent for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        finals = list(pool.map(lambda inbox: _quarantine(inbox, "photo.jpg", q), inboxes))
    assert len(set(finals)) == 8
    assert sorted(f.read_bytes() for f in finals) == [str(i).encode() for i in range(8)]


def test_quarantine_of_a_vanished_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        moves.quarantine_file(tmp_path, "gone.jpg", tmp_path / "q", SIDECAR)
    assert not (tmp_path / "q" / "gone.jpg.error.json").exists()


def test_moves_refuse_a_relpath_that_leaves_the_folder(tmp_path: Path) -> None:
    src = _drop(tmp_path / "inbox", "a.jpg", b"x")
    for bad in ("../a.jpg", "/etc/a.jpg", "", "sub/../../a.jpg"):
        with pytest.raises(ValueError, match="relative path"):
            moves.move_to(tmp_path / "inbox", "a.jpg", tmp_path / "done", bad)
        with pytest.raises(ValueError, match="relative path"):
            moves.move_to(tmp_path / "inbox", bad, tmp_path / "done", "a.jpg")
    assert src.exists()


def test_move_to_mirrors_the_path_and_suffixes_on_collision(tmp_path: Path) -> None:
    done = tmp_path / "done"
    _drop(done, "a/b/pic.png", b"older")
    _drop(tmp_path / "inbox", "a/b/pic.png", b"new")
    final = done / moves.move_to(tmp_path / "inbox", "a/b/pic.png", done, "a/b/pic.png")
    assert final == done / "a" / "b" / "pic~2.png"
    assert final.read_bytes() == b"new"
    assert (done / "a/b/pic.png").read_bytes() == b"older"
    assert not (tmp_path / "inbox/a/b/pic.png").exists()


def test_move_to_brings_a_quarantined_file_back_to_the_inbox(tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    _drop(tmp_path / "inbox", "s/p.jpg", b"img")
    quarantined = _quarantine(tmp_path / "inbox", "s/p.jpg", q)
    rel = quarantined.relative_to(q).as_posix()
    back = tmp_path / "inbox" / moves.move_to(q, rel, tmp_path / "inbox", "s/p.jpg")
    assert back == tmp_path / "inbox" / "s" / "p.jpg"
    assert back.read_bytes() == b"img"
    assert not quarantined.exists()


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on a different filesystem from ``tmp_path`` (tmpfs /dev/shm)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem: /dev/shm is missing or on the same device as tmp")
    folder = Path(tempfile.mkdtemp(prefix="bgsyncd-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_quarantine_across_filesystems(tmp_path: Path, other_filesystem: Path) -> None:
    src = _drop(tmp_path / "inbox", "sub/photo.jpg", b"x" * 3_000_000)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    q = other_filesystem / "quarantine"
    _drop(q, "sub/photo.jpg", b"already here")

    final = _quarantine(tmp_path / "inbox", "sub/photo.jpg", q)

    assert os.stat(final).st_dev != os.stat(tmp_path).st_dev
    assert final == q / "sub" / "photo~2.jpg"
    assert final.read_bytes() == b"x" * 3_000_000
    assert stat.S_IMODE(final.stat().st_mode) == 0o640
    assert final.stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert (q / "sub/photo.jpg").read_bytes() == b"already here"
    assert json.loads((q / "sub/photo~2.jpg.error.json").read_text()) == SIDECAR
    assert not src.exists()
    assert _leftovers(q) == []


def test_move_to_across_filesystems_and_back(tmp_path: Path, other_filesystem: Path) -> None:
    src = _drop(other_filesystem / "inbox", "a.png", b"png")
    inbox, done = other_filesystem / "inbox", tmp_path / "done"
    final = done / moves.move_to(inbox, "a.png", done, "a.png")
    assert final.read_bytes() == b"png" and not src.exists()
    back = inbox / moves.move_to(done, "a.png", inbox, "a.png")
    assert back == src and back.read_bytes() == b"png" and not final.exists()
    assert _leftovers(tmp_path) == [] and _leftovers(other_filesystem) == []


def test_fsync_dir_accepts_a_folder(tmp_path: Path) -> None:
    outputs.fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        outputs.fsync_dir(_drop(tmp_path, "f", b""))


# names within 255 bytes (NAME_MAX counts bytes)


def _bytes(name: str) -> int:
    return len(name.encode("utf-8"))


def _tag(relpath: str) -> str:
    return "~" + hashlib.sha256(relpath.encode()).hexdigest()[:8]


def test_names_that_fit_are_not_touched() -> None:
    name = "a" * 251 + ".jpg"  # 255 bytes; its output `aaa….png` is 255 bytes too
    assert next(outputs.output_candidates(f"d/{name}", "png")) == "d/" + "a" * 251 + ".png"


def test_a_long_output_name_is_cut_at_a_character_boundary_and_tagged() -> None:
    rel = "sub/" + "é" * 125 + "x.jpg"  # 256-byte name: too long for any output
    first, second, third = islice(outputs.output_candidates(rel, "webp"), 3)
    tag = _tag(rel)
    for candidate in (first, second, third):
        name = candidate.removeprefix("sub/")
        assert _bytes(name) <= 255
        name.encode("utf-8").decode("utf-8")  # no half character
    assert first.endswith(tag + ".webp") and first.startswith("sub/éé")
    # The stem and the whole name cut to one prefix: the second choice is `~2`.
    assert second.endswith(tag + "~2.webp") and third.endswith(tag + "~3.webp")
    assert len({first, second, third}) == 3


def test_every_collision_suffix_of_a_shortened_name_fits() -> None:
    rel = "é" * 127 + ".jpg"
    for candidate in islice(outputs.output_candidates(rel, "png"), 2, 12):
        assert _bytes(candidate) <= 255
    assert _bytes(names.fit_name("é" * 127, ".png", rel, "~99999999999")) <= 255


def test_two_long_names_with_one_prefix_get_different_outputs() -> None:
    a, b = "x" * 300 + "-a.jpg", "x" * 300 + "-b.jpg"
    assert next(outputs.output_candidates(a, "png")) != next(outputs.output_candidates(b, "png"))


def test_the_mask_of_a_long_name_fits_beside_its_cutout() -> None:
    rel = "a" * 251 + ".jpg"
    cutout = next(outputs.output_candidates(rel, "png"))
    assert cutout == "a" * 251 + ".png"  # fits exactly
    mask = next(outputs.mask_candidates(cutout, rel))
    assert _bytes(mask) <= 255 and mask.endswith(_tag(rel) + ".mask.png")
    assert all(_bytes(m) <= 255 for m in islice(outputs.mask_candidates(cutout, rel), 5))


def test_the_sidecar_of_a_long_name_follows_the_same_rule() -> None:
    name = "b" + "é" * 125 + ".png"  # 255 bytes, the longest name an input can have
    side = outputs.sidecar_name(name, f"q/{name}")
    assert _bytes(side) <= 255 and side.endswith(_tag(f"q/{name}") + ".error.json")
    assert name.startswith(side[: -len(_tag(name) + ".error.json")])


def test_a_255_byte_name_quarantined_twice_gets_two_files_and_two_sidecars(
    tmp_path: Path,
) -> None:
    name = "b" + "é" * 125 + ".png"
    assert _bytes(name) == 255
    q = tmp_path / "quarantine"
    _drop(tmp_path / "inbox", f"s/{name}", b"one")
    first = _quarantine(tmp_path / "inbox", f"s/{name}", q, {**SIDECAR, "attempts": 1})
    _drop(tmp_path / "inbox", f"s/{name}", b"two")
    second = _quarantine(tmp_path / "inbox", f"s/{name}", q, {**SIDECAR, "attempts": 2})
    assert first.name == name and first.read_bytes() == b"one"
    assert second.read_bytes() == b"two" and second.name.endswith("~2.png")
    assert _bytes(second.name) <= 255
    sidecars = sorted(p.name for p in (q / "s").glob("*.error.json"))
    assert len(sidecars) == 2 and all(_bytes(s) <= 255 for s in sidecars)
    attempts = sorted(json.loads((q / "s" / s).read_text())["attempts"] for s in sidecars)
    assert attempts == [1, 2]
    assert (q / "s" / outputs.sidecar_name(second.name, f"s/{name}")).exists()


def test_temp_names_are_cut_at_a_character_boundary(tmp_path: Path) -> None:
    name = "é" * 127 + ".png"  # 258 bytes: only the temp name matters here
    tmp = outputs.temp_name(name)
    assert _bytes(tmp) <= 255 and outputs.is_temp_name(tmp)
    tmp.encode("utf-8")  # no lone surrogate from a cut character


# refusals: a symlink under an outbox, quarantine or done folder


@pytest.fixture
def swapped(tmp_path: Path) -> tuple[Path, Path]:
    """An output folder whose ``sub`` is a symlink to an outside folder."""
    root, outside = tmp_path / "outbox", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "a.png").write_bytes(b"outside")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_writing_under_a_symlinked_output_folder_is_refused(swapped: tuple[Path, Path]) -> None:
    root, outside = swapped
    with pytest.raises(OSError) as caught:
        outputs.write_file(root, "sub/a.png", b"ours")
    assert is_refused(caught.value)
    assert sorted(os.listdir(outside)) == ["a.png"]
    assert (outside / "a.png").read_bytes() == b"outside"


def test_quarantine_into_a_symlinked_folder_is_refused_and_the_input_stays(
    tmp_path: Path, swapped: tuple[Path, Path]
) -> None:
    root, outside = swapped
    src = _drop(tmp_path / "inbox", "sub/a.png", b"input")
    with pytest.raises(OSError) as caught:
        moves.quarantine_file(tmp_path / "inbox", "sub/a.png", root, SIDECAR)
    assert is_refused(caught.value)
    with pytest.raises(OSError) as caught:
        moves.move_to(tmp_path / "inbox", "sub/a.png", root, "sub/a.png")
    assert is_refused(caught.value)
    assert src.read_bytes() == b"input"
    assert sorted(os.listdir(outside)) == ["a.png"]


def test_moving_from_a_symlinked_inbox_folder_is_a_vanished_input(
    tmp_path: Path, swapped: tuple[Path, Path]
) -> None:
    root, outside = swapped  # here the symlinked folder is the source side
    with pytest.raises(FileNotFoundError):
        moves.move_to(root, "sub/a.png", tmp_path / "done", "sub/a.png")
    with pytest.raises(FileNotFoundError):
        moves.quarantine_file(root, "sub/a.png", tmp_path / "q", SIDECAR)
    with pytest.raises(FileNotFoundError):
        moves.delete_input(root, "sub/a.png", (7, 0, 0))
    assert (outside / "a.png").read_bytes() == b"outside"
    assert not (tmp_path / "done" / "sub" / "a.png").exists()


def test_delete_input_deletes_only_the_file_that_was_read(tmp_path: Path) -> None:
    src = _drop(tmp_path, "d/a.jpg", b"first")
    st = src.stat()
    sig = (st.st_size, st.st_mtime_ns, st.st_ino)
    src.unlink()
    _drop(tmp_path, "d/a.jpg", b"second, a new file")
    with pytest.raises(FileNotFoundError):
        moves.delete_input(tmp_path, "d/a.jpg", sig)
    assert src.read_bytes() == b"second, a new file"
    st = src.stat()
    moves.delete_input(tmp_path, "d/a.jpg", (st.st_size, st.st_mtime_ns, st.st_ino))
    assert not src.exists()


def test_delete_input_never_deletes_a_version_written_just_before_the_name_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer rewrites the input in place after its version was checked, right
    before the daemon removes its name: the new bytes were never processed and
    must survive (the fuzz test lost such a file with ``after_success = delete``)."""
    src = _drop(tmp_path, "d/a.jpg", b"the version that was processed")
    st = src.stat()
    sig = (st.st_size, st.st_mtime_ns, st.st_ino)
    real_unlink, real_rename = os.unlink, os.rename
    wrote: list[bool] = []

    def rewrite_first() -> None:
        if not wrote:
            wrote.append(True)
            with open(src, "r+b") as fh:  # in place: the same inode, new bytes
                fh.write(b"a newer version, not yet processed")

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if path == "a.jpg":
            rewrite_first()
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    def rename(src_name: object, *args: object, **kwargs: object) -> None:
        if src_name == "a.jpg":
            rewrite_first()
        real_rename(src_name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(moves.InputRewritten) as caught:
        moves.delete_input(tmp_path, "d/a.jpg", sig)
    monkeypatch.undo()
    assert wrote
    assert src.read_bytes() == b"a newer version, not yet processed"
    now = src.stat()
    assert caught.value.signature == (now.st_size, now.st_mtime_ns, now.st_ino)
    assert os.listdir(tmp_path / "d") == ["a.jpg"]  # nothing left aside


def test_outputs_newer_than_wants_every_output_there_and_not_older(tmp_path: Path) -> None:
    a = _drop(tmp_path, "d/a.png", b"x")
    b = _drop(tmp_path, "d/a.mask.png", b"x")
    os.utime(a, ns=(2_000, 2_000))
    os.utime(b, ns=(3_000, 3_000))
    assert outputs.outputs_newer_than(tmp_path, ["d/a.png", "d/a.mask.png"], 2_000)
    assert not outputs.outputs_newer_than(tmp_path, ["d/a.png", "d/a.mask.png"], 2_001)
    assert not outputs.outputs_newer_than(tmp_path, ["d/a.png", "d/missing.png"], 0)


def test_a_folder_taken_by_a_file_is_renamed_within_the_name_limit() -> None:
    # The claim rule on its own: lookups answered from a dict, as a store would.
    long = "é" * 125 + ".png"  # 254 bytes: "~2" alone would not fit
    owners = {"a.png": 1, long: 1}
    inside = {"b.png"}  # an inbox folder `b.png/` holds inputs

    def free(candidates: list[str], job_id: int = 2) -> tuple[str, bool] | None:
        return names.first_free_output(candidates, job_id, owners.get, inside.__contains__)

    assert free(["a.png/b.png"]) == ("a.png~2/b.png", True)
    assert free(["b.png", "b.jpg.png"]) == ("b.jpg.png", True)
    renamed = free([f"{long}/x.png"])
    assert renamed is not None
    folder, name = renamed[0].split("/")
    assert name == "x.png" and names.utf8_len(folder) <= names.NAME_MAX
    assert folder.endswith("~2") and folder != long
    assert free([f"{long}/y.png"]) == (f"{folder}/y.png", True)  # the same for every input
    assert free(["a.png"], job_id=1) == ("a.png", False)  # its owner's
    assert free(["a.png"]) is None


def test_an_input_rewritten_while_it_is_quarantined_stays_in_the_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that rewrites the input in place during the move (after the
    verdict's version was checked, before the source name is removed) gets its
    file back where it wrote it: the verdict was about the old bytes."""
    inbox, q = tmp_path / "inbox", tmp_path / "quarantine"
    src = _drop(inbox, "sub/a.txt", b"not an image")
    st = src.stat()
    judged = (st.st_size, st.st_mtime_ns, st.st_ino)
    real_write_at = outputs.write_at

    def rewrite_meanwhile(dir_fd: int, name: str, data: bytes) -> None:
        # The sidecar is written between the link into the quarantine and the
        # unlink of the source: the writer's moment. Same inode, new bytes.
        with open(src, "r+b") as fh:
            fh.truncate(0)
            fh.write(b"a good image now, longer")
        real_write_at(dir_fd, name, data)

    monkeypatch.setattr(outputs, "write_at", rewrite_meanwhile)
    with pytest.raises(moves.InputRewritten) as caught:
        moves.quarantine_file(inbox, "sub/a.txt", q, SIDECAR, judged)
    assert src.read_bytes() == b"a good image now, longer"
    now = src.stat()
    assert caught.value.signature == (now.st_size, now.st_mtime_ns, now.st_ino)
    assert [p for p in q.rglob("*") if p.is_file()] == []  # neither the file nor a sidecar
