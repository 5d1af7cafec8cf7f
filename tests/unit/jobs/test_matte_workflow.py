"""SPEC §5 "What is sent", end to end through the worker, over real loopback HTTP.

The emulator records what it received (endpoint, sha256, size); where a test must
look at the bytes themselves, or needs an answer the emulator would never give (a
matte of the wrong shape, a cut-out the server turned), a small scriptable server
(tests/support/hostile.py) decodes the upload and answers. Queue, cache and folders are
real files; images are real encoded JPEGs and PNGs, decoded again to check them.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageCms, ImageDraw

from bgsyncd.api.client import Client
from bgsyncd.config.schema import FolderSettings
from bgsyncd.emulator import Emulator
from bgsyncd.emulator.bodies import form_image
from bgsyncd.jobs.outcomes import Result, Transition
from bgsyncd.jobs.worker import Worker, WorkerConfig
from bgsyncd.ops.metrics import Metrics, Recorder
from bgsyncd.storage.cache import ResultCache
from bgsyncd.storage.contract import Found
from bgsyncd.storage.sqlite.store import SqliteStore
from tests.support.daemons import TEST_KEY
from tests.support.emulated import image_requests
from tests.support.helpers import open_image, product_image, wait_until
from tests.support.hostile import Answer, HostileServer, Request

MB = 1024 * 1024
ALPHA = "/v1.0/alpha-channel"
CUTOUT = "/v1.0/image-without-background"
ORIENTATION = 0x0112


# -- images ------------------------------------------------------------------------


def photo(
    width: int,
    height: int,
    *,
    fmt: str = "JPEG",
    orientation: int = 1,
    icc: bytes | None = None,
    dpi: tuple[int, int] | None = None,
    make: str | None = None,
) -> bytes:
    """A product shot with texture: a noisy light background, a dark noisy object."""
    noise = Image.effect_noise((width, height), 24)
    back = Image.merge("RGB", (noise.point(lambda v: 200 + v // 8),) * 3)
    thing = Image.merge(
        "RGB", (noise.point(lambda v: 90 + v // 3), noise, noise.point(lambda v: v // 2))
    )
    shape = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shape).ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), 255)
    back.paste(thing, mask=shape)
    exif = Image.Exif()
    if orientation != 1:
        exif[ORIENTATION] = orientation
    if make:
        exif[0x010F] = make
    params: dict[str, Any] = {"exif": exif.tobytes()}
    if icc is not None:
        params["icc_profile"] = icc
    if dpi is not None:
        params["dpi"] = dpi
    if fmt == "JPEG":
        params["quality"] = 92
    buf = io.BytesIO()
    back.save(buf, fmt, **params)
    return buf.getvalue()


def srgb_profile() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return profile.tobytes()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def alpha_of(data: bytes) -> Image.Image:
    return open_image(data).getchannel("A")


def same_rgb_where_opaque(
    cutout: Image.Image, original: Image.Image, edges: str = "refine"
) -> bool:
    """True when every opaque pixel has exactly the original's RGB (SPEC §5).

    Opaque: alpha 255 with ``edges = "refine"`` (edge pixels get their
    foreground colour); alpha above 0 with ``"resize"``.
    """
    least = 255 if edges == "refine" else 1
    shown = cutout.getchannel("A").point(lambda a: 255 if a >= least else 0)
    diff = ImageChops.difference(cutout.convert("RGB"), original.convert("RGB"))
    masked = ImageChops.multiply(diff, Image.merge("RGB", (shown,) * 3))
    return masked.getbbox() is None


# -- a scriptable server that answers with a matte ----------------------------------


@dataclass
class MatteServer:
    """Answers an image request like the API, but as a test says, and keeps every upload.

    ``shape`` maps the size sent to the answer's size; ``cutout`` answers a colour
    cut-out (of the upload, turned by ``turn`` first) instead of a matte.
    """

    shape: Callable[[tuple[int, int]], tuple[int, int]] = lambda sent: sent
    cutout: bool = False
    turn: Image.Transpose | None = None
    uploads: list[tuple[str, bytes]] = field(default_factory=list)

    def __call__(self, request: Request) -> Answer:
        if not request.path.startswith("/v1.0/"):
            return Answer(404)
        if request.path == "/v1.0/available-credit":
            return Answer.json('{"credit": 1000, "expiration_date": null}')
        content_type = next(v for k, v in request.headers.items() if k.lower() == "content-type")
        data = form_image(request.body, content_type)
        self.uploads.append((request.path, data))
        sent = open_image(data)
        if self.turn is not None:
            sent = sent.transpose(self.turn)
        size = self.shape(sent.size)
        matte = Image.new("L", size, 0)
        w, h = size
        ImageDraw.Draw(matte).ellipse((w // 4, h // 4, w * 3 // 4, h * 3 // 4), 255)
        body = matte
        if self.cutout:
            body = sent.convert("RGB").resize(size)
            body.putalpha(matte)
        return Answer(200, png(body), headers=(("Content-Type", "image/png"),))


# -- the worker, on real files ------------------------------------------------------


@dataclass
class Rig:
    """A worker with its queue, cache and folders under one tmp dir."""

    root: Path
    worker: Worker
    queue: SqliteStore
    cache: ResultCache
    folders: dict[str, FolderSettings]
    client: Client

    def drop(self, folder: str, relpath: str, data: bytes) -> Result:
        """Write ``data`` into ``folder``'s inbox, queue it, claim it, process it."""
        src = self.folders[folder].inbox / relpath
        src.write_bytes(data)
        st = src.stat()
        self.queue.enqueue_many([Found(folder, relpath, st.st_size, st.st_mtime_ns, st.st_ino)])
        job = wait_until(lambda: self.queue.claim(60), what="a claimable job")
        return self.worker.process(job)

    def again(self) -> Result:
        """Claim and process the job waiting for a retry (its backoff is short)."""
        job = wait_until(lambda: self.queue.claim(60), what="the job again")
        return self.worker.process(job)

    def out(self, folder: str, name: str) -> bytes:
        return (self.folders[folder].outbox / name).read_bytes()


@pytest.fixture
def rigs() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(
        root: Path,
        url: str,
        *,
        upload: str = "proxy",
        folders: dict[str, dict[str, Any]] | None = None,
        cache_bytes: int = 64 * MB,
        recorder: Recorder | None = None,
        max_upload_bytes: int = 10 * MB,
        cache_root: Path | None = None,
    ) -> Rig:
        settings = {
            name: FolderSettings(
                name=name,
                inbox=root / name / "inbox",
                outbox=root / name / "outbox",
                quarantine=root / name / "quarantine",
                **extra,
            )
            for name, extra in (folders or {"f": {}}).items()
        }
        for folder in settings.values():
            folder.inbox.mkdir(parents=True, exist_ok=True)
        client = Client(url, TEST_KEY, 10)
        config = WorkerConfig(
            folders=settings,
            max_upload_bytes=max_upload_bytes,
            max_attempts=5,
            retry_base_seconds=0.01,
            retry_max_seconds=0.05,
            upload=upload,
        )
        queue = SqliteStore(root / "q.sqlite3")
        cache = ResultCache(cache_root or root / "cache", cache_bytes)
        worker = Worker(queue, cache, recorder or Recorder(), config, lambda: client)
        rig = Rig(root, worker, queue, cache, settings, client)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.client.close()
        rig.queue.close()


# -- what is sent --------------------------------------------------------------------


def test_a_small_file_goes_byte_identical_to_the_alpha_channel(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(800, 600, dpi=(72, 72))
    rig = rigs(tmp_path, emulator.url)
    assert rig.drop("f", "small.jpg", data).transition is Transition.DONE
    [sent] = image_requests(emulator)
    assert (sent.path, sent.status) == (ALPHA, 200)
    assert (sent.image_sha256, sent.image_size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert open_image(rig.out("f", "small.png")).size == (800, 600)


def test_a_large_photo_goes_as_a_1024_pixel_jpeg_without_any_metadata(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    data = photo(3000, 2000, icc=srgb_profile(), dpi=(300, 300), make="Camera Co")
    server = MatteServer()
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url)
        assert rig.drop("f", "big.jpg", data).transition is Transition.DONE
    [(path, sent)] = server.uploads
    assert path == ALPHA
    assert len(sent) < len(data) / 4
    img = open_image(sent)
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (1024, 683))
    assert not img.getexif() and "exif" not in img.info
    assert "icc_profile" not in img.info
    assert open_image(rig.out("f", "big.png")).size == (3000, 2000)


def test_a_small_image_with_an_exif_rotation_goes_as_a_copy_of_its_stored_pixels(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    data = photo(600, 400, orientation=6)  # shown 400 x 600; stored 600 x 400
    server = MatteServer()
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url)
        assert rig.drop("f", "turned.jpg", data).transition is Transition.DONE
    [(_path, sent)] = server.uploads
    assert sent != data
    img = open_image(sent)
    assert img.size == (600, 400)  # never enlarged, never turned
    assert img.getexif().get(ORIENTATION) is None
    out = open_image(rig.out("f", "turned.png"))
    assert out.size == (600, 400) and out.getexif().get(ORIENTATION) == 6


@pytest.mark.parametrize("edges", ["refine", "resize"])
def test_the_cutout_has_the_originals_own_rgb_wherever_it_is_opaque(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig], edges: str
) -> None:
    data = photo(2400, 1800)
    rig = rigs(tmp_path, emulator.url, folders={"f": {"edges": edges}})
    assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    [sent] = image_requests(emulator)
    assert sent.path == ALPHA and sent.image_size is not None
    assert sent.image_size < len(data)  # a copy went
    cutout = open_image(rig.out("f", "p.png"))
    assert (cutout.mode, cutout.size) == ("RGBA", (2400, 1800))
    low, high = cutout.getchannel("A").getextrema()
    assert (low, high) == (0, 255)  # a real matte: some background removed, the object kept
    assert same_rgb_where_opaque(cutout, open_image(data), edges)


def test_outputs_keep_the_orientation_tag_icc_profile_and_dpi_of_the_original(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    icc = srgb_profile()
    data = photo(1800, 1200, orientation=6, icc=icc, dpi=(300, 300), make="Camera Co")
    rig = rigs(tmp_path, emulator.url, folders={"f": {"output": "both"}})
    assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    cutout, mask = open_image(rig.out("f", "p.png")), open_image(rig.out("f", "p.mask.png"))
    assert cutout.size == mask.size == (1800, 1200)  # stored pixels, as the original
    for out in (cutout, mask):
        assert dict(out.getexif()) == {ORIENTATION: 6}  # the tag, and nothing else
        assert tuple(round(d) for d in out.info["dpi"]) == (300, 300)
    assert cutout.info["icc_profile"] == icc
    assert mask.mode == "L"


# -- what comes back -----------------------------------------------------------------


def test_a_matte_of_the_wrong_aspect_ratio_is_an_unusable_answer(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    data = photo(2000, 1000)
    server = MatteServer(shape=lambda sent: (sent[0], sent[1] + 3))  # 1024 x 515 for 1024 x 512
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url)
        first = rig.drop("f", "p.jpg", data)
        assert (first.transition, first.charged) == (Transition.RETRY, True)
        assert len(rig.cache) == 0  # never cached
        second = rig.again()
        assert (second.transition, second.reason) == (Transition.QUARANTINE, "rejected_by_api")
    assert len(server.uploads) == 2
    assert not rig.folders["f"].outbox.exists() or not any(rig.folders["f"].outbox.iterdir())
    assert (rig.folders["f"].quarantine / "p.jpg").read_bytes() == data


def test_a_matte_of_the_right_shape_at_another_scale_is_used(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    data = photo(2000, 1000)
    server = MatteServer(shape=lambda sent: (sent[0] // 4, sent[1] // 4))  # 256 x 128
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url)
        assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    cutout = open_image(rig.out("f", "p.png"))
    assert cutout.size == (2000, 1000)
    assert same_rgb_where_opaque(cutout, open_image(data))


def test_a_1_by_1_matte_is_an_unusable_answer_never_cached(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    # The shape of anything to within a pixel, and no matte at all (SPEC §6: under a
    # quarter of the longer side sent).
    data = photo(1500, 1000)
    server = MatteServer(shape=lambda sent: (1, 1))
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url)
        first = rig.drop("f", "p.jpg", data)
        assert (first.transition, first.charged) == (Transition.RETRY, True)
        assert len(rig.cache) == 0
        second = rig.again()
        assert (second.transition, second.reason) == (Transition.QUARANTINE, "rejected_by_api")
    assert len(server.uploads) == 2 and len(rig.cache) == 0


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _black_png(width: int, height: int) -> bytes:
    """A real all-black grey PNG, compressed row by row: 89 million pixels in ~90 KB."""
    packer = zlib.compressobj(9)
    row = bytes(1 + width)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_a_matte_of_89_million_pixels_of_the_right_shape_is_unusable_and_never_cached(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    # 11540 x 7697 has the shape of the 1024 x 683 sent, and 127 times its pixels:
    # decoded and cached, it took a daemon to 1.6 GB.
    huge = _black_png(11540, 7697)
    uploads: list[bytes] = []

    def answer(request: Request) -> Answer:
        content_type = next(v for k, v in request.headers.items() if k.lower() == "content-type")
        uploads.append(form_image(request.body, content_type))
        return Answer(200, huge, headers=(("Content-Type", "image/png"),))

    with HostileServer(answer) as api:
        rig = rigs(tmp_path, api.url)
        first = rig.drop("f", "p.jpg", photo(1500, 1000))
        assert (first.transition, first.charged) == (Transition.RETRY, True)
        assert open_image(uploads[0]).size == (1024, 683)
        assert len(rig.cache) == 0
        second = rig.again()
        assert (second.transition, second.reason) == (Transition.QUARANTINE, "rejected_by_api")
    assert len(rig.cache) == 0


# -- broken metadata: the pixels decide ----------------------------------------------


def _png_with_bad_exif() -> bytes:
    """A real PNG with an eXIf chunk (CRC and all) whose body is no TIFF structure."""
    data = png(open_image(photo(640, 480)))
    idat = data.index(b"IDAT") - 4
    return data[:idat] + _png_chunk(b"eXIf", b"not a TIFF header, just text") + data[idat:]


def _webp_with_bad_exif() -> bytes:
    """A real lossy WebP, made extended (VP8X, EXIF flag) with an EXIF chunk of no TIFF."""
    simple = _encoded(open_image(photo(640, 480)), "WEBP", quality=85)
    assert simple[12:16] == b"VP8 "
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0])
    vp8x += (640 - 1).to_bytes(3, "little") + (480 - 1).to_bytes(3, "little")
    body = b"not a TIFF header, just text"
    chunks = vp8x + simple[12:] + b"EXIF" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


@pytest.mark.parametrize(
    ("make", "name"), [(_png_with_bad_exif, "p.png"), (_webp_with_bad_exif, "p.webp")]
)
def test_a_malformed_exif_block_is_ignored_and_the_file_done_at_the_first_attempt(
    tmp_path: Path,
    emulator: Emulator,
    rigs: Callable[..., Rig],
    make: Callable[[], bytes],
    name: str,
) -> None:
    data = make()
    with pytest.raises(SyntaxError):  # Pillow's own reading of that block
        open_image(data).getexif()
    rig = rigs(tmp_path, emulator.url, folders={"f": {"output": "both"}})
    done = rig.drop("f", name, data)
    assert done.transition is Transition.DONE
    [sent] = image_requests(emulator)  # one request: no retry
    assert (sent.path, sent.image_sha256) == (ALPHA, hashlib.sha256(data).hexdigest())
    cutout = open_image(rig.out("f", "p.png"))
    assert (cutout.mode, cutout.size) == ("RGBA", (640, 480))
    assert len(cutout.getexif()) == 0  # nothing of the broken block is carried over
    assert open_image(rig.out("f", "p.mask.png")).size == (640, 480)


# -- the cache -----------------------------------------------------------------------


def test_one_matte_serves_two_folders_with_different_output_settings(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(3000, 2000)
    folders = {
        "shop": {"output": "cutout", "format": "png"},
        "print": {"output": "both", "format": "jpeg", "background": "#ffffff"},
    }
    rig = rigs(tmp_path, emulator.url, folders=folders)
    assert rig.drop("shop", "a.jpg", data).transition is Transition.DONE
    assert rig.drop("print", "b.jpg", data).transition is Transition.DONE
    assert len(image_requests(emulator)) == 1  # ONE request for both

    shop = open_image(rig.out("shop", "a.png"))
    flat, mask = open_image(rig.out("print", "b.jpg")), open_image(rig.out("print", "b.mask.png"))
    assert (shop.mode, shop.size) == ("RGBA", (3000, 2000))
    assert (flat.format, flat.mode, flat.size) == ("JPEG", "RGB", (3000, 2000))
    assert (mask.mode, mask.size) == ("L", (3000, 2000))
    assert ImageChops.difference(mask, shop.getchannel("A")).getbbox() is None

    # The entry is the matte at the size it came: a fraction of a full-size cut-out.
    sha = hashlib.sha256(data).hexdigest()
    entry = tmp_path / "cache" / sha[:2] / f"{sha}.proxy.matte.png"
    matte = open_image(entry.read_bytes())
    assert (matte.mode, matte.size) == ("L", (1024, 683))
    assert entry.stat().st_size * 10 < len(rig.out("shop", "a.png"))


def test_a_0_1_cache_entry_serves_original_mode_and_is_never_taken_for_a_matte(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(400, 300)
    sha = hashlib.sha256(data).hexdigest()
    # 0.1's layout: <cache>/<sha[:2]>/<sha>.png, a full cut-out keyed by content alone,
    # here fully opaque red so that what it gave is unmistakable.
    old = tmp_path / "cache" / sha[:2] / f"{sha}.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(png(Image.new("RGBA", (400, 300), (255, 0, 0, 255))))

    proxy = rigs(tmp_path / "proxy", emulator.url, cache_root=tmp_path / "cache")
    assert proxy.drop("f", "p.jpg", data).transition is Transition.DONE
    assert [r.path for r in image_requests(emulator)] == [ALPHA]  # not served by the 0.1 entry

    original = rigs(
        tmp_path / "original", emulator.url, upload="original", cache_root=tmp_path / "cache"
    )
    assert original.drop("f", "p.jpg", data).transition is Transition.DONE
    assert len(image_requests(emulator)) == 1  # served by the 0.1 entry: no credit
    out = open_image(original.out("f", "p.png"))
    assert out.getpixel((0, 0)) == (255, 0, 0, 255)


# -- "original" mode: 0.1's behaviour ---------------------------------------------


def test_original_mode_sends_the_file_itself_to_the_cutout_endpoint(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(3000, 2000)  # over proxy_side: "original" sends it all the same
    rig = rigs(tmp_path, emulator.url, upload="original")
    assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    [sent] = image_requests(emulator)
    assert (sent.path, sent.image_sha256) == (CUTOUT, hashlib.sha256(data).hexdigest())
    assert open_image(rig.out("f", "p.png")).size == (3000, 2000)
    sha = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "cache" / sha[:2] / f"{sha}.png").exists()  # 0.1's name: a cut-out
    assert not (tmp_path / "cache" / sha[:2] / f"{sha}.proxy.matte.png").exists()


def test_original_mode_sends_an_oversize_file_as_a_reduced_copy_to_the_alpha_channel(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(1600, 1200)
    limit = len(data) // 3
    rig = rigs(tmp_path, emulator.url, upload="original", max_upload_bytes=limit)
    assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    [sent] = image_requests(emulator)
    assert sent.path == ALPHA and sent.image_size is not None
    assert sent.image_size <= limit
    cutout = open_image(rig.out("f", "p.png"))
    assert cutout.size == (1600, 1200)
    assert same_rgb_where_opaque(cutout, open_image(data))


def test_oversize_quarantine_refuses_a_file_over_the_limit_before_sending(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    data = photo(800, 600)
    rig = rigs(
        tmp_path, emulator.url, folders={"f": {"oversize": "quarantine"}}, max_upload_bytes=1000
    )
    job = rig.drop("f", "p.jpg", data)
    # A local verdict waits until the file has been quiet for settle_seconds.
    while job.transition is Transition.DEFER:
        job = rig.again()
    assert (job.transition, job.reason) == (Transition.QUARANTINE, "too_large")
    assert image_requests(emulator) == []


def test_original_mode_recognises_a_cutout_the_server_turned_by_the_exif_rotation(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    data = photo(900, 600, orientation=6)  # stored 900 x 600, shown 600 x 900
    server = MatteServer(cutout=True, turn=Image.Transpose.ROTATE_270)
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url, upload="original")
        assert rig.drop("f", "p.jpg", data).transition is Transition.DONE
    [(path, sent)] = server.uploads
    assert (path, sent) == (CUTOUT, data)
    out = open_image(rig.out("f", "p.png"))
    assert out.size == (600, 900)  # as the server turned it
    assert out.getexif().get(ORIENTATION) is None  # a viewer must not turn it again


# -- the bytes sent, counted ---------------------------------------------------------


def test_upload_bytes_counts_the_image_data_sent_by_endpoint(
    tmp_path: Path, emulator: Emulator, rigs: Callable[..., Rig]
) -> None:
    metrics = Metrics("127.0.0.1:0", ["f"], "test")
    rig = rigs(tmp_path, emulator.url, recorder=metrics)

    def counted(endpoint: str) -> float | None:
        labels = {"endpoint": endpoint}
        return metrics.registry.get_sample_value("bgsyncd_upload_bytes_total", labels)

    assert counted("alpha-channel") == counted("image-without-background") == 0
    assert rig.drop("f", "small.jpg", product_image(200, 150)).transition is Transition.DONE
    assert rig.drop("f", "big.jpg", photo(2400, 1600)).transition is Transition.DONE
    sizes = [r.image_size for r in image_requests(emulator) if r.image_size is not None]
    assert len(sizes) == 2
    assert counted("alpha-channel") == sum(sizes)
    assert counted("image-without-background") == 0


# -- inputs that are not 8-bit RGB -------------------------------------------------


def _encoded(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _cmyk_jpeg() -> bytes:
    return _encoded(open_image(photo(1400, 1000)).convert("CMYK"), "JPEG", quality=90)


def _palette_png() -> bytes:
    return _encoded(open_image(photo(1400, 1000)).convert("P"), "PNG")


def _sixteen_bit_png() -> bytes:
    grey = open_image(photo(1400, 1000)).convert("L").point(lambda v: v * 256, "I")
    return _encoded(grey.convert("I;16"), "PNG")


def _animated_gif() -> bytes:
    first = open_image(photo(1400, 1000)).convert("P")
    second = Image.new("P", first.size, 7)
    return _encoded(first, "GIF", save_all=True, append_images=[second], duration=100)


@pytest.mark.parametrize(
    "make", [_cmyk_jpeg, _palette_png, _sixteen_bit_png, _animated_gif], ids=lambda f: f.__name__
)
def test_cmyk_palette_16_bit_and_animated_inputs_become_8_bit_outputs_of_their_size(
    tmp_path: Path, rigs: Callable[..., Rig], make: Callable[[], bytes]
) -> None:
    data = make()
    server = MatteServer()
    with HostileServer(server) as api:
        rig = rigs(tmp_path, api.url, folders={"f": {"output": "both"}})
        assert rig.drop("f", "in.img", data).transition is Transition.DONE
    [(path, sent)] = server.uploads
    copy = open_image(sent)
    assert (path, copy.mode, copy.size) == (ALPHA, "RGB", (1024, 731))
    cutout, mask = open_image(rig.out("f", "in.png")), open_image(rig.out("f", "in.mask.png"))
    assert (cutout.mode, cutout.size) == ("RGBA", (1400, 1000))
    assert (mask.mode, mask.size) == ("L", (1400, 1000))
    assert ImageChops.difference(mask, cutout.getchannel("A")).getbbox() is None
    if make in (_palette_png, _animated_gif):  # 8-bit colours: kept exactly (first frame)
        assert same_rgb_where_opaque(cutout, open_image(data).convert("RGB"))
