"""The WithoutBG emulator over real loopback HTTP: contract, faults, control, CLI."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import urllib3
from PIL import Image, ImageCms, ImageDraw

from bgsyncd import imaging
from bgsyncd.emulator import Emulator, main, matte, parse_multipart
from tests.support.helpers import (
    noisy_image,
    open_image,
    product_image,
    transparent_png,
    wait_until,
)

CUTOUT = "/v1.0/image-without-background"
CUTOUT_B64 = "/v1.0/image-without-background-base64"
ALPHA = "/v1.0/alpha-channel"
ALPHA_B64 = "/v1.0/alpha-channel-base64"
CREDIT = "/available-credit"
KEY = {"X-API-Key": "test-key"}
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(rate_limit=1000, seed=7) as emulator:
        yield emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, headers=KEY, timeout=10) as c:
        yield c


def upload(
    client: httpx.Client, data: bytes, path: str = CUTOUT, field: str = "image"
) -> httpx.Response:
    return client.post(path, files={field: ("photo.jpg", data, "image/jpeg")})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def alpha_at(img: Image.Image, xy: tuple[int, int]) -> int:
    alpha = img.getchannel("A") if img.mode == "RGBA" else img
    value = alpha.getpixel(xy)
    assert isinstance(value, (int, float))
    return int(value)


def assert_clean_cutout(img: Image.Image) -> None:
    w, h = img.size
    for corner in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        assert alpha_at(img, corner) < 10, corner
    assert alpha_at(img, (w // 2, h // 2)) > 245


# --- the five endpoints ---------------------------------------------------------------


def test_cutout_is_an_rgba_png_of_the_same_size(emu: Emulator, client: httpx.Client) -> None:
    r = upload(client, product_image(80, 60))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = open_image(r.content)
    assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (80, 60))
    assert_clean_cutout(img)
    assert emu.credits == 999


def test_multipart_field_file_is_accepted(client: httpx.Client) -> None:
    r = upload(client, product_image(), field="file")
    assert r.status_code == 200
    assert open_image(r.content).mode == "RGBA"


@pytest.mark.parametrize("field", ["image", "image_base64"])
def test_base64_cutout_answers_under_both_names(client: httpx.Client, field: str) -> None:
    r = client.post(CUTOUT_B64, json={field: b64(product_image(50, 40))})
    assert r.status_code == 200
    body = r.json()
    assert body["image"] == body["image_base64"]
    img = open_image(base64.b64decode(body["image"]))
    assert (img.mode, img.size) == ("RGBA", (50, 40))


def test_alpha_channel_is_a_grayscale_png(client: httpx.Client) -> None:
    r = upload(client, product_image(70, 50), path=ALPHA)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = open_image(r.content)
    assert (img.format, img.mode, img.size) == ("PNG", "L", (70, 50))
    assert_clean_cutout(img)


@pytest.mark.parametrize("field", ["image", "image_base64"])
def test_base64_alpha_answers_under_both_names(client: httpx.Client, field: str) -> None:
    r = client.post(ALPHA_B64, json={field: b64(product_image())})
    assert r.status_code == 200
    body = r.json()
    assert body["alpha_channel"] == body["alpha_base64"]
    assert open_image(base64.b64decode(body["alpha_base64"])).mode == "L"


def test_available_credit_counts_down_with_each_success(client: httpx.Client) -> None:
    first = client.get(CREDIT)
    assert first.status_code == 200
    body = first.json()
    assert body["available_credits"] == 1000
    datetime.strptime(body["expiration_date"], "%Y-%m-%dT%H:%M:%SZ")
    upload(client, product_image())
    client.post(ALPHA_B64, json={"image": b64(product_image())})
    assert client.get(CREDIT).json()["available_credits"] == 998


# --- formats, modes and the cut-out ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_the_six_formats_are_accepted(client: httpx.Client, fmt: str) -> None:
    r = upload(client, product_image(64, 48, fmt=fmt))
    assert r.status_code == 200, r.text
    img = open_image(r.content)
    assert img.size == (64, 48)
    assert_clean_cutout(img)


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _scene(mode: str) -> Image.Image:
    img = Image.open(io.BytesIO(product_image(64, 48, fmt="PNG")))
    return img.convert(mode)


def _animated_gif() -> bytes:
    first = _scene("P")
    blank = Image.new("P", first.size, 0)
    return _encode(first, "GIF", save_all=True, append_images=[blank], duration=100)


MODES = {
    "P+transparency": lambda: _encode(_scene("P"), "PNG", transparency=0),
    "L": lambda: _encode(_scene("L"), "PNG"),
    "LA": lambda: _encode(_scene("LA"), "PNG"),
    "1": lambda: _encode(_scene("L").point(lambda v: 255 if v > 180 else 0).convert("1"), "PNG"),
    "CMYK": lambda: _encode(_scene("CMYK"), "JPEG"),
    "I;16": lambda: _encode(_scene("L").point(lambda v: v * 256, "I").convert("I;16"), "PNG"),
    "RGBA webp": lambda: _encode(_scene("RGBA"), "WEBP", lossless=True),
    "animated GIF": _animated_gif,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_pillow_mode_gives_a_clean_cutout(client: httpx.Client, mode: str) -> None:
    r = upload(client, MODES[mode]())
    assert r.status_code == 200, r.text
    img = open_image(r.content)
    assert (img.mode, img.size) == ("RGBA", (64, 48))
    assert_clean_cutout(img)


def test_own_transparency_is_kept(client: httpx.Client) -> None:
    img = open_image(upload(client, transparent_png(40, 40)).content)
    assert alpha_at(img, (2, 2)) == 0  # transparent in the input stays transparent
    assert alpha_at(img, (20, 20)) == 255


def _photo(width: int, height: int) -> bytes:
    """A product on a slightly noisy light backdrop, as a JPEG."""
    rng = random.Random(5)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    backdrop = grain.point(lambda v: 226 + v // 32)  # 226..233: paper grain
    img = Image.merge("RGB", (backdrop, backdrop, backdrop))
    box = (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
    ImageDraw.Draw(img).rounded_rectangle(box, radius=20, fill=(40, 90, 160))
    return _encode(img, "JPEG", quality=88)


def _cut_out(data: bytes) -> Image.Image:
    """The emulator's cut-out answer for ``data``, decoded."""
    return open_image(matte.cut_out(matte.decode(data), alpha_only=False))


def test_cutout_of_a_product_photo_is_clean() -> None:
    img = _cut_out(_photo(400, 300))
    assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (400, 300))
    alpha = img.getchannel("A")
    assert_clean_cutout(img)
    outside = alpha.crop((0, 0, 400, 60))  # a band of backdrop above the product
    inside = alpha.crop((120, 95, 280, 205))
    low, high = outside.getextrema()
    assert not isinstance(high, tuple) and high < 10
    low, high = inside.getextrema()
    assert not isinstance(low, tuple) and low > 245


def test_the_alpha_answer_is_the_cutouts_alpha_as_a_grayscale_png() -> None:
    data = _photo(200, 150)
    matte_png = open_image(matte.cut_out(matte.decode(data), alpha_only=True))
    assert (matte_png.format, matte_png.mode, matte_png.size) == ("PNG", "L", (200, 150))
    assert matte_png.tobytes() == _cut_out(data).getchannel("A").tobytes()


def test_a_transparent_colour_key_is_transparency_like_an_alpha_channel() -> None:
    # An RGB PNG whose tRNS chunk makes one colour transparent: the daemon reads it
    # as transparency (imaging.rgb_and_alpha), so the emulator must too.
    img = Image.open(io.BytesIO(product_image(64, 48, fmt="PNG"))).convert("RGB")
    ImageDraw.Draw(img).rectangle((28, 20, 35, 27), fill=(1, 2, 3))  # a hole in the object
    img = _cut_out(_encode(img, "PNG", transparency=(1, 2, 3)))
    assert alpha_at(img, (31, 23)) == 0
    assert alpha_at(img, (24, 24)) > 245  # the object around the hole stays


def test_an_answer_carries_no_metadata_of_the_upload() -> None:
    # 0.1 copied the upload's ICC profile into the answer (a CMYK JPEG's profile onto
    # an RGBA PNG); the outputs take their metadata from the original, never the answer.
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = Image.open(io.BytesIO(_photo(80, 60)))
    data = _encode(photo, "JPEG", icc_profile=icc, dpi=(300, 300))
    for alpha_only in (False, True):
        answer = open_image(matte.cut_out(matte.decode(data), alpha_only=alpha_only))
        assert not {"icc_profile", "dpi", "exif"} & set(answer.info), answer.info


def test_a_decompression_bomb_is_415_at_the_daemons_own_limit(
    emu: Emulator, client: httpx.Client
) -> None:
    """One limit for the daemon and the emulator: ``imaging.MAX_PIXELS``."""
    over = _png_claiming(imaging.MAX_PIXELS + 1, 1)
    r = upload(client, over)
    assert r.status_code == 415
    error = r.json()["error"]
    assert error == "Unsupported media type: upload has too many pixels to decode safely"
    with pytest.raises(matte.UndecodableImage, match="too many pixels"):
        matte.decode(over)
    assert emu.credits == 1000


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` 1-bit pixels (one row of data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(bytes(1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_large_image_is_cut_out_at_its_full_size() -> None:
    # How long it takes is bench/matte.py's figure, not an assertion here.
    answer = matte.cut_out(matte.decode(_photo(2000, 1500)), alpha_only=False)
    assert open_image(answer).size == (2000, 1500)


# --- every status of the reference ----------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_401_for_a_missing_or_wrong_key(emu: Emulator, headers: dict[str, str]) -> None:
    for path in (CUTOUT, CREDIT):
        method = "POST" if path == CUTOUT else "GET"
        files = {"image": product_image()} if method == "POST" else None
        r = requests.request(method, emu.url + path, headers=headers, files=files, timeout=10)
        assert r.status_code == 401
        assert r.json() == {"error": "Invalid API Key"}
    assert emu.credits == 1000


def test_402_without_credits(emu: Emulator, client: httpx.Client) -> None:
    emu.configure(credits=1)
    assert upload(client, product_image()).status_code == 200
    r = upload(client, product_image())
    assert r.status_code == 402
    assert r.json()["error"]
    assert client.get(CREDIT).json()["available_credits"] == 0


def test_402_never_lets_concurrent_requests_overspend(emu: Emulator) -> None:
    emu.configure(credits=2, latency=0.3)

    def one(_: int) -> int:
        r = requests.post(emu.url + CUTOUT, headers=KEY, files={"image": product_image()})
        return r.status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(one, range(4)))
    assert codes == [200, 200, 402, 402]
    assert emu.credits == 0


def test_403_when_the_credits_expired(emu: Emulator, client: httpx.Client) -> None:
    emu.configure(expires=PAST)
    r = upload(client, product_image())
    assert r.status_code == 403
    assert r.json()["error"]
    credit = client.get(CREDIT)  # the balance stays readable, with its expiry
    assert credit.json() == {"available_credits": 1000, "expiration_date": "2020-01-01T00:00:00Z"}


def test_413_over_max_bytes_of_decoded_image(emu: Emulator, client: httpx.Client) -> None:
    data = noisy_image(40, 40)
    emu.configure(max_bytes=len(data) - 1)
    r = upload(client, data)
    assert r.status_code == 413
    assert "too large" in r.json()["error"]
    assert client.post(CUTOUT_B64, json={"image": b64(data)}).status_code == 413
    emu.configure(max_bytes=len(data))
    assert upload(client, data).status_code == 200  # same connection, still usable
    assert emu.credits == 999


def test_413_for_a_huge_body_is_answered_before_it_is_read(emu: Emulator) -> None:
    emu.configure(max_bytes=1000)
    big = b"\xff\xd8\xff" + bytes(8 * 1024 * 1024)
    began = time.monotonic()
    r = requests.post(emu.url + CUTOUT, headers=KEY, files={"image": big}, timeout=10)
    assert r.status_code == 413
    assert r.headers["Connection"] == "close"
    assert time.monotonic() - began < 5
    assert emu.requests()[-1].image_sha256 is None  # never buffered nor parsed


def test_415_for_a_text_file_and_a_truncated_jpeg(emu: Emulator, client: httpx.Client) -> None:
    r = upload(client, b"hello, this is not an image\n" * 20)
    assert r.status_code == 415
    assert r.json()["error"].startswith("Unsupported media type")
    jpeg = product_image(200, 150)
    r = upload(client, jpeg[: len(jpeg) // 2])
    assert r.status_code == 415
    assert upload(client, b"").status_code == 415
    assert emu.credits == 1000


def test_eight_quick_calls_with_one_key_the_eighth_is_429() -> None:
    with Emulator(keys=["a", "b"]) as emulator:
        with httpx.Client(base_url=emulator.url, headers={"X-API-Key": "a"}) as c:
            codes = [c.get(CREDIT).status_code for _ in range(4)]
            codes += [upload(c, product_image()).status_code for _ in range(4)]
            assert codes == [200] * 7 + [429]
            r = c.get(CREDIT)
            assert r.status_code == 429
            assert r.json() == {"error": "Rate limit exceeded"}
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            # the limit is per key
            assert c.get(CREDIT, headers={"X-API-Key": "b"}).status_code == 200
        assert emulator.credits == 997


def test_rate_limit_is_a_sliding_window_and_429s_do_not_count() -> None:
    now = [1000.0]
    emulator = Emulator(rate_limit=2, rate_window=60, clock=lambda: now[0])
    with emulator, httpx.Client(base_url=emulator.url, headers=KEY) as c:

        def at(t: float) -> httpx.Response:
            now[0] = t
            return c.get(CREDIT)

        assert at(1000).status_code == 200
        assert at(1010).status_code == 200
        refused = at(1030)
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "30")
        assert at(1059.2).headers["Retry-After"] == "1"  # whole seconds, rounded up
        assert at(1060).status_code == 200  # the 1000 one left; the 429s never counted
        assert at(1065).headers["Retry-After"] == "5"
        emulator.configure(rate_limit=1)
        assert at(1071).headers["Retry-After"] == "49"  # until only one is left


def test_500_with_fail_rate_one_charges_nothing(emu: Emulator, client: httpx.Client) -> None:
    emu.configure(fail_rate=1.0)
    r = upload(client, product_image())
    assert r.status_code == 500
    assert r.json() == {"error": "Internal server error"}
    assert client.get(CREDIT).status_code == 200  # credit checks never fail
    assert emu.credits == 1000


def test_checks_run_in_the_documented_order(emu: Emulator) -> None:
    text = b"not an image " * 200

    def status(key: str = "test-key") -> int:
        r = requests.post(emu.url + CUTOUT, headers={"X-API-Key": key}, files={"image": text})
        return r.status_code

    emu.configure(credits=0, expires=PAST, max_bytes=100, fail_rate=1.0, rate_limit=2)
    assert status("wrong") == 401
    assert status() == 403  # counts in the window
    assert status() == 403
    assert status() == 429
    emu.configure(rate_limit=1000)
    assert status() == 403
    emu.configure(expires=None)
    assert status() == 402
    emu.configure(credits=5)
    assert status() == 413
    emu.configure(max_bytes=10_000)
    assert status() == 415
    emu.configure(fail_rate=0.0)
    assert status() == 415
    assert emu.credits == 5


def test_drop_rate_charges_and_closes_without_an_answer(emu: Emulator) -> None:
    emu.configure(drop_rate=1.0)
    with httpx.Client(base_url=emu.url, headers=KEY) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            upload(c, product_image())
        assert emu.credits == 999
        assert emu.requests()[-1].status == 0
        emu.configure(drop_rate=0.0)
        assert upload(c, product_image()).status_code == 200


def test_latency_delays_the_answer(emu: Emulator, client: httpx.Client) -> None:
    emu.configure(latency=0.3)
    began = time.monotonic()
    assert upload(client, product_image()).status_code == 200
    assert time.monotonic() - began >= 0.3


def test_fault_injection_is_seeded() -> None:
    def run() -> list[int]:
        emulator = Emulator(rate_limit=100, fail_rate=0.5, seed=42)
        with emulator, httpx.Client(base_url=emulator.url, headers=KEY) as c:
            return [upload(c, product_image(16, 16)).status_code for _ in range(12)]

    first = run()
    assert first == run()
    assert set(first) == {200, 500}


# --- robustness -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kwargs", "words"),
    [
        (CUTOUT_B64, {"content": b"{not json"}, "JSON"),
        (CUTOUT_B64, {"json": ["a list"]}, "object"),
        (ALPHA_B64, {"json": {"picture": "AAAA"}}, "image"),
        (ALPHA_B64, {"json": {"image": 12}}, "image"),
        (CUTOUT_B64, {"json": {"image": "!!! not base64 !!!"}}, "base64"),
        (CUTOUT, {"files": {"photo": b"\xff\xd8\xff"}}, "image"),
        (CUTOUT, {"json": {"image": "AAAA"}}, "multipart"),
        (CUTOUT, {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}, "multi"),
    ],
)
def test_bad_requests_are_400_json(
    emu: Emulator, client: httpx.Client, path: str, kwargs: dict[str, object], words: str
) -> None:
    r = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400
    assert words in r.json()["error"]
    assert client.get(CREDIT).status_code == 200  # the connection and server live on
    assert emu.credits == 1000


def test_unknown_path_404_and_wrong_method_405(client: httpx.Client) -> None:
    r = client.get("/v2/nothing")
    assert (r.status_code, r.headers["content-type"]) == (404, "application/json")
    assert "error" in r.json()
    r = client.get(CUTOUT)
    assert (r.status_code, r.headers["Allow"]) == (405, "POST")
    assert client.post(CREDIT).status_code == 405
    assert client.delete(CREDIT).status_code == 405


def _raw(emu: Emulator, request: bytes) -> bytes:
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        return s.makefile("rb").read()


def test_garbage_requests_get_json_and_the_server_lives(emu: Emulator) -> None:
    # A one-word request line is HTTP/0.9: the answer is a bare body.
    assert "Bad request" in json.loads(_raw(emu, b"GARBAGE\r\n\r\n"))["error"]
    head, _, body = _raw(emu, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501")
    assert b"Connection: close" in head
    assert "error" in json.loads(body)
    head = _raw(emu, b"POST /v1.0/alpha-channel HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")  # no key: refused before the length matters
    bad_length = (
        b"POST /v1.0/alpha-channel HTTP/1.1\r\nX-API-Key: test-key\r\nContent-Length: x\r\n\r\n"
    )
    head, _, body = _raw(emu, bad_length).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body) == {"error": "Invalid Content-Length"}
    assert requests.get(emu.url + CREDIT, headers=KEY, timeout=5).status_code == 200


def test_keep_alive_survives_refusals_with_unread_bodies(emu: Emulator) -> None:
    conn = http.client.HTTPConnection(emu.url.removeprefix("http://"), timeout=5)
    body = json.dumps({"image": b64(product_image())})
    try:
        conn.request("POST", CUTOUT_B64, body, {"X-API-Key": "wrong"})
        first = conn.getresponse()
        assert (first.status, first.will_close) == (401, False)
        first.read()
        sock = conn.sock
        conn.request("POST", CUTOUT_B64, body, KEY)
        second = conn.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["image"]
        assert conn.sock is sock  # one connection for both
    finally:
        conn.close()


def test_chunked_body_in_the_node_form_data_layout(emu: Emulator) -> None:
    # What form-data + axios send from a stream: this boundary style, chunked.
    boundary = "--------------------------" + "".join(random.choices("0123456789", k=24))
    image = product_image()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="input.jpg"'
        f"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"X-API-Key": "test-key", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    conn = http.client.HTTPConnection(emu.url.removeprefix("http://"), timeout=5)
    try:
        chunks = iter([body[:100], body[100:1000], body[1000:]])
        conn.request("POST", CUTOUT, chunks, headers, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200
        assert open_image(r.read()).mode == "RGBA"
    finally:
        conn.close()
    assert emu.requests()[-1].image_sha256 == hashlib.sha256(image).hexdigest()


def test_stop_closes_idle_keep_alive_connections() -> None:
    emulator = Emulator().start()
    with httpx.Client(base_url=emulator.url, headers=KEY) as c:
        assert c.get(CREDIT).status_code == 200
        emulator.stop()
        with pytest.raises(httpx.TransportError):
            c.get(CREDIT)
    emulator.stop()  # idempotent


# --- the multipart parser -------------------------------------------------------------


def test_multipart_parser_round_trips_binary_from_several_encoders() -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--\r\n\r\n--x\n\r"
    body, ctype = urllib3.encode_multipart_formdata(
        {"note": "hello", "image": ("a.jpg", payload, "image/jpeg")}
    )
    assert parse_multipart(body, ctype) == {"note": b"hello", "image": payload}
    request = httpx.Request("POST", "http://x/", files={"file": ("b.png", payload)})
    fields = parse_multipart(request.read(), request.headers["Content-Type"])
    assert fields == {"file": payload}


def test_multipart_parser_quoting_preamble_epilogue_and_bare_newlines() -> None:
    body = (
        b"preamble\r\n--a b\r\nContent-Disposition: form-data; name*=UTF-8''image\r\n\r\n"
        b"DATA\r\n--a b--\r\nepilogue"
    )
    assert parse_multipart(body, 'multipart/form-data; boundary="a b"') == {"image": b"DATA"}
    lf = b'--z\nContent-Disposition: form-data; name="image"\n\nDATA\n--z--\n'
    assert parse_multipart(lf, "multipart/form-data; boundary=z") == {"image": b"DATA"}


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"--z\r\nContent-Disposition: form-data; name=image\r\n\r\nDATA", "boundary=z"),
        (b"anything", "text/plain"),
        (b"no boundary here", "multipart/form-data; boundary=z"),
        (b"x", "multipart/form-data"),
    ],
)
def test_multipart_parser_rejects_broken_bodies(body: bytes, ctype: str) -> None:
    if not ctype.startswith("multipart"):
        ctype = "multipart/form-data; " + ctype if "=" in ctype else ctype
    with pytest.raises(ValueError):
        parse_multipart(body, ctype)


# --- control surface and Python API ---------------------------------------------------


def test_control_state_never_shows_keys_and_changes_live(emu: Emulator) -> None:
    emu.configure(keys=["secret-one"])
    with httpx.Client(base_url=emu.url) as c:  # no key needed
        state = c.get("/_emulator/state")
        assert state.status_code == 200
        assert "secret-one" not in state.text
        assert set(state.json()) >= {
            "credits", "expires", "latency", "fail_rate", "drop_rate",
            "rate_limit", "rate_window", "request_count",
        }  # fmt: skip
        changes = {"credits": 3, "keys": ["k2"], "expires": "2030-01-01T00:00:00Z"}
        r = c.post("/_emulator/state", json=changes)
        assert r.status_code == 200
        assert r.json()["credits"] == 3
        credit = c.get(CREDIT, headers={"X-API-Key": "k2"}).json()
        assert credit == {"available_credits": 3, "expiration_date": "2030-01-01T00:00:00Z"}
        assert c.get(CREDIT, headers={"X-API-Key": "secret-one"}).status_code == 401
        bad_changes: list[object] = [{"nope": 1}, {"credits": -1}, {"fail_rate": 2}, {"keys": []}]
        for bad in [*bad_changes, [1]]:
            r = c.post("/_emulator/state", json=bad)
            assert r.status_code == 400
            assert r.json()["error"]
        assert c.post("/_emulator/state", content=b"{").status_code == 400
        assert c.get("/_emulator/state").json()["credits"] == 3


def test_control_requests_lists_what_was_recorded(emu: Emulator, client: httpx.Client) -> None:
    image = product_image()
    began = time.time()
    upload(client, image)
    client.get(CREDIT)
    client.get("/_emulator/state")  # not recorded
    listed = client.get("/_emulator/requests").json()
    assert [(r["method"], r["path"], r["status"]) for r in listed] == [
        ("POST", CUTOUT, 200),
        ("GET", CREDIT, 200),
    ]
    assert listed[0]["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert listed[0]["image_size"] == len(image)
    assert listed[1]["image_sha256"] is None
    assert began <= listed[0]["started"] <= listed[1]["started"] <= time.time()
    assert [r.status for r in emu.requests()] == [200, 200]


def test_configure_rejects_bad_values_and_keeps_the_old_ones(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        emu.configure(speed=3)
    with pytest.raises(ValueError, match="drop_rate"):
        emu.configure(credits=5, drop_rate=1.5)
    assert emu.credits == 1000
    with pytest.raises(ValueError, match="credits"):
        emu.configure(credits=True)


# --- bandwidth: an uplink of a given speed ------------------------------------------


def timed_upload(url: str, body: bytes, *, chunked: bool = False) -> float:
    """Seconds to send ``body`` as an image and get the answer (415: not an image)."""
    content: bytes | Iterator[bytes] = body
    if chunked:
        content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    headers = {**KEY, "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as c:
        began = time.monotonic()
        r = c.post(CUTOUT_B64, content=content, headers=headers)
        elapsed = time.monotonic() - began
    # Refused only after the whole body was read: the time is the upload's.
    assert r.status_code == 415, r.text
    return elapsed


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bandwidth_reads_bodies_no_faster_than_the_uplink(chunked: bool) -> None:
    body = json.dumps({"image": "A" * 599_990}).encode()  # base64 of zero bytes: not an image
    assert len(body) >= 600_000
    with Emulator(rate_limit=1000, bandwidth=400_000) as emu:
        expected = len(body) / 400_000  # 1.5 s
        elapsed = timed_upload(emu.url, body, chunked=chunked)
        assert expected * 0.97 <= elapsed <= expected + 0.75
        emu.configure(bandwidth=0)  # unlimited: the same body is an order of magnitude faster
        assert timed_upload(emu.url, body, chunked=chunked) < expected / 5


def test_bandwidth_is_set_through_the_control_surface_and_the_command_line(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"image": "A" * 599_990}).encode()
    with httpx.Client(base_url=emu.url) as c:
        assert c.get("/_emulator/state").json()["bandwidth"] == 0
        r = c.post("/_emulator/state", json={"bandwidth": 1_200_000})
        assert r.json()["bandwidth"] == 1_200_000
        for bad in (-1, 2.5, "fast"):
            assert c.post("/_emulator/state", json={"bandwidth": bad}).status_code == 400
    elapsed = timed_upload(emu.url, body)
    assert len(body) / 1_200_000 * 0.97 <= elapsed <= len(body) / 1_200_000 + 0.75
    assert main(["--bandwidth", "-5"]) == 2
    assert "bandwidth" in capsys.readouterr().err


class AdmittingEmulator(Emulator):
    """The emulator, telling when an image request was admitted (its body not yet read)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.admitted = threading.Event()

    def admit(self, key: str | None, *, image: bool) -> None:
        super().admit(key, image=image)
        self.admitted.set()


def test_bandwidth_does_not_hold_up_a_stop() -> None:
    emu = AdmittingEmulator(rate_limit=1000, bandwidth=10_000)
    emu.start()
    body = json.dumps({"image": "A" * 500_000}).encode()  # 50 s at that speed

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError, AssertionError):  # cut off by the stop
            timed_upload(emu.url, body)

    sender = threading.Thread(target=send, daemon=True)
    began = time.monotonic()
    sender.start()
    assert emu.admitted.wait(10)  # the body is being read, slowly
    emu.stop()
    sender.join(10)
    assert not sender.is_alive()
    assert time.monotonic() - began < 10


# --- the subpackage's shape -----------------------------------------------------------

EMULATOR_MODULES = ("account", "bodies", "matte", "handler", "service", "cli")


def test_emulator_modules_import_one_way_and_no_private_names() -> None:
    """Each module imports only the ones listed before it, and only public names."""
    import ast

    package = Path(matte.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py")) == sorted([*EMULATOR_MODULES, "__init__"])
    for position, name in enumerate(EMULATOR_MODULES):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bgsyncd"):
                module = node.module or ""
                if module.startswith("bgsyncd.emulator."):
                    used = module.rsplit(".", 1)[1]
                    assert used in EMULATOR_MODULES[:position], f"{name} imports {used}"
                assert module != "bgsyncd.emulator", f"{name} imports the package itself"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports {private} from {module}"


# --- the reference's own examples, unchanged but for the host -------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_reference_curl_examples(emu: Emulator, tmp_path: Path) -> None:
    (tmp_path / "your_image.jpg").write_bytes(product_image(90, 60))
    cmd = f"""curl -X POST "{emu.url}/v1.0/image-without-background" \\
  -H "X-API-Key: test-key" \\
  -F "image=@your_image.jpg" \\
  --output result.png"""
    subprocess.run(["sh", "-c", cmd], cwd=tmp_path, check=True, timeout=30, capture_output=True)
    img = open_image((tmp_path / "result.png").read_bytes())
    assert (img.mode, img.size) == ("RGBA", (90, 60))

    cmd = f"""curl -X GET "{emu.url}/available-credit" \\
  -H "X-API-Key: test-key\""""
    out = subprocess.run(["sh", "-c", cmd], check=True, timeout=30, capture_output=True).stdout
    assert json.loads(out)["available_credits"] == 999

    data = b64(product_image())
    cmd = f"""curl -X POST "{emu.url}/v1.0/image-without-background-base64" \\
  -H "X-API-Key: test-key" \\
  -H "Content-Type: application/json" \\
  -d '{{"image": "{data}"}}'"""
    out = subprocess.run(["sh", "-c", cmd], check=True, timeout=30, capture_output=True).stdout
    assert open_image(base64.b64decode(json.loads(out)["image"])).mode == "RGBA"


PYTHON_EXAMPLE = """import requests

# Remove background
url = "https://api.withoutbg.com/v1.0/image-without-background"
headers = {"X-API-Key": "your_api_key_here"}

with open("input.jpg", "rb") as image_file:
    files = {"image": image_file}
    response = requests.post(url, headers=headers, files=files)
    
    if response.status_code == 200:
        with open("output.png", "wb") as output_file:
            output_file.write(response.content)
    else:
        print(f"Error: {response.json()}")
"""  # noqa: W293 - the example's own trailing whitespace, kept


def test_reference_python_example(emu: Emulator, tmp_path: Path) -> None:
    script = PYTHON_EXAMPLE.replace("https://api.withoutbg.com", emu.url)
    script = script.replace("your_api_key_here", "test-key")
    (tmp_path / "example.py").write_text(script)
    (tmp_path / "input.jpg").write_bytes(product_image(64, 48))
    run = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert open_image((tmp_path / "output.png").read_bytes()).mode == "RGBA"
    emu.configure(credits=0)
    run = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.startswith("Error: {'error': ")


NODE_FETCH = """
const fs = require('fs');
const form = new FormData();
form.append('image', new Blob([fs.readFileSync('input.jpg')], {type: 'image/jpeg'}), 'input.jpg');
fetch(process.env.EMULATOR_URL + '/v1.0/image-without-background', {
  method: 'POST', headers: {'X-API-Key': 'test-key'}, body: form,
}).then(async (response) => {
  if (response.status !== 200) { console.error(await response.text()); process.exit(1); }
  fs.writeFileSync('output.png', Buffer.from(await response.arrayBuffer()));
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_node_fetch_form_data_upload(emu: Emulator, tmp_path: Path) -> None:
    # The reference's Node example needs the form-data and axios packages, which CI
    # lacks; Node's own FormData is the other multipart encoder Node users have.
    (tmp_path / "upload.js").write_text(NODE_FETCH)
    (tmp_path / "input.jpg").write_bytes(product_image())
    env = {"PATH": "/usr/bin:/bin", "EMULATOR_URL": emu.url}
    run = subprocess.run(
        ["node", "upload.js"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert open_image((tmp_path / "output.png").read_bytes()).mode == "RGBA"


# --- the command line -----------------------------------------------------------------


def test_main_serves_until_sigterm_and_never_logs_the_key() -> None:
    key = "emulator-only-key-4711"
    code = "from bgsyncd.emulator import main; raise SystemExit(main(__import__('sys').argv[1:]))"
    args = ["--port", "0", "--key", key, "--credits", "42", "--expires", "2031-05-06T07:08:09Z"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    try:
        lines: list[str] = []
        threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True).start()
        first = wait_until(lambda: lines[0] if lines else "", timeout=20, what="listening line")
        assert first.startswith("emulator listening on http://127.0.0.1:")
        url = first.split()[-1]
        r = requests.get(url + CREDIT, headers={"X-API-Key": key}, timeout=5)
        assert r.json() == {"available_credits": 42, "expiration_date": "2031-05-06T07:08:09Z"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err = stderr.read()
        assert "GET /available-credit 200" in err
        assert key not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()
        stderr.close()


def test_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fail-rate", "2"]) == 2
    assert "fail_rate" in capsys.readouterr().err
    assert main(["--expires", "soon"]) == 2
    assert main(["--credits", "many"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 1
    assert "cannot listen" in capsys.readouterr().err
