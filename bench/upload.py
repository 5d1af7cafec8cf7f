"""Benchmark: what is sent (issue "The matte workflow"), ``"proxy"`` against ``"original"``.

The contract (SPEC §5 "What is sent", issue 11's budgets), through a slow
uplink: twelve camera-size photos (4000x3000 and 6000x4000 JPEGs with real
detail, 2-8 MB each, generated) go through the emulator at ``--bandwidth``
1 MB/s, once with ``upload = "original"`` (0.1's behaviour, the baseline) and
once with ``upload = "proxy"`` (the default), in the same run:

- bytes sent per photo: proxy <= 0.10 x original, for every photo;
- drop-to-output p50: proxy <= 0.33 x original's (p90 printed beside it);
- peak RSS (VmHWM) of the daemon while it processes six 6000x4000 JPEGs with
  ``max_in_flight = 3``: proxy <= 400 MiB (original's printed beside it).

The emulator runs in this process, ``bgsyncd run`` as a real subprocess per
mode and phase, each with its own state folder (so no cache entry of one run
serves another). Latency: one photo at a time into an idle daemon, from the
moment its ``close`` returned to the moment its output exists (outputs are
renamed into place, so existing means complete). Memory: six 6000x4000 photos
dropped together into a fresh daemon; its peak RSS once all six are written.
Exit status 0 when every budget is met, 1 otherwise.

    .venv/bin/python -m bench.upload [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from bgsyncd.emulator import Emulator

BANDWIDTH = 1_000_000  # bytes a second: the emulator's uplink for each request
BYTES_BUDGET = 0.10  # proxy bytes / original bytes, per photo
P50_BUDGET = 0.33  # proxy p50 / original p50, drop to output
RSS_BUDGET_MIB = 400.0  # proxy peak RSS, six 6000x4000 photos, three in flight
MAX_IN_FLIGHT = 3
MODES = ("original", "proxy")  # the baseline first
# Twelve photos: six of each camera size, JPEG quality varied so sizes spread over 2-8 MB.
PHOTOS = [((4000, 3000), q) for q in (82, 85, 88, 90, 86, 84)] + [
    ((6000, 4000), q) for q in (80, 83, 85, 86, 82, 84)
]
RATE_LIMIT = 600  # far above what the run needs: the pacer must not add waits
KEY = "bench-upload-key"
SAMPLE_TIMEOUT = 180.0
MIB = 1024 * 1024
IMAGE_PATHS = ("/v1.0/image-without-background", "/v1.0/alpha-channel")


def camera_photo(size: tuple[int, int], quality: int, n: int) -> bytes:
    """A camera-size JPEG with real detail: grain over gradients, a textured object."""
    w, h = size
    grain = Image.effect_noise((w // 2, h // 2), 40 + 8 * (n % 4))
    grain = grain.resize((w, h), Image.Resampling.BILINEAR)
    ramp = Image.linear_gradient("L").resize((w, h))
    img = Image.merge(
        "RGB",
        (
            Image.blend(ramp, grain, 0.5),
            Image.blend(ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grain, 0.4),
            grain,
        ),
    )
    box = (w // 4, h // 5, w * 3 // 4, h * 4 // 5)
    shape = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    ImageDraw.Draw(shape).ellipse((0, 0, shape.width - 1, shape.height - 1), 255)
    texture = Image.effect_noise(shape.size, 30).convert("RGB")
    thing = Image.blend(Image.new("RGB", shape.size, (140, 40 + 10 * n, 50)), texture, 0.3)
    img.paste(thing, box[:2], shape)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def write_config(root: Path, base_url: str, upload: str) -> Path:
    """One folder, the given ``upload`` setting, everything else the defaults."""
    (root / "inbox").mkdir(parents=True)
    lines = [
        "[api]",
        f'base_url = "{base_url}"',
        f'upload = "{upload}"',
        f"rate_limit = {RATE_LIMIT}",
        "rate_window_seconds = 60",
        f"max_in_flight = {MAX_IN_FLIGHT}",
        "timeout_seconds = 120",
        "[credits]",
        "check_interval_seconds = 3600",
        "[queue]",
        f'database = "{root / "state" / "queue.sqlite3"}"',
        "[metrics]",
        'listen = ""',
        "[logging]",
        'format = "json"',
        'level = "info"',
        "[[folder]]",
        'name = "photos"',
        f'inbox = "{root / "inbox"}"',
        f'outbox = "{root / "outbox"}"',
        f'quarantine = "{root / "quarantine"}"',
    ]
    config = root / "config.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


@contextlib.contextmanager
def daemon(config: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``bgsyncd run`` as a subprocess, ready (its start-up scan done) when yielded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGSYNCD_")}
    env["BGSYNCD_API_KEY"] = KEY  # through the environment: never on a command line
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsyncd", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_for(
                lambda: proc.poll() is not None or b'"daemon.ready"' in log_path.read_bytes(),
                30,
                "daemon.ready",
            )
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited:\n" + log_path.read_text(errors="replace"))
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def image_requests(emu: Emulator) -> list[int]:
    """The sizes of the images the emulator received so far, in order."""
    return [r.image_size or 0 for r in emu.requests() if r.path in IMAGE_PATHS]


@dataclass
class Sample:
    """One photo in one mode: bytes sent, seconds from drop to output."""

    sent: int
    seconds: float


def one_at_a_time(root: Path, emu: Emulator, upload: str, photos: list[bytes]) -> list[Sample]:
    """Drop each photo into an idle daemon; time it to its output; count what was sent."""
    config = write_config(root, emu.url, upload)
    samples = []
    with daemon(config, root / "daemon.log"):
        for n, data in enumerate(photos, 1):
            before = len(image_requests(emu))
            out = root / "outbox" / f"p{n:02d}.png"
            with (root / "inbox" / f"p{n:02d}.jpg").open("wb") as fh:
                fh.write(data)
            dropped = time.monotonic()
            wait_for(out.exists, SAMPLE_TIMEOUT, f"{upload}: output of p{n:02d}")
            seconds = time.monotonic() - dropped
            samples.append(Sample(sum(image_requests(emu)[before:]), seconds))
            print(f"  {upload:<8} p{n:02d}: {seconds:6.2f} s", file=sys.stderr)
    return samples


def burst_peak_rss(root: Path, emu: Emulator, upload: str, photos: list[bytes]) -> int:
    """Drop ``photos`` together into a fresh daemon; its peak RSS once all are written."""
    config = write_config(root, emu.url, upload)
    with daemon(config, root / "daemon.log") as proc:
        for n, data in enumerate(photos, 1):
            (root / "inbox" / f"b{n:02d}.jpg").write_bytes(data)
        outs = [root / "outbox" / f"b{n:02d}.png" for n in range(1, len(photos) + 1)]
        wait_for(lambda: all(o.exists() for o in outs), SAMPLE_TIMEOUT * 2, f"{upload}: burst")
        return peak_rss(proc.pid)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table; 0 within budget, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m bench.upload", description=__doc__)
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True)
        return run(args.keep.resolve())
    with tempfile.TemporaryDirectory(prefix="bgsyncd-bench-") as tmp:
        return run(Path(tmp))


def run(root: Path) -> int:
    """The measurement itself, in ``root``."""
    print("generating 12 camera photos...", file=sys.stderr)
    photos = [camera_photo(size, quality, n) for n, (size, quality) in enumerate(PHOTOS, 1)]
    big = [p for p, (size, _q) in zip(photos, PHOTOS, strict=True) if size == (6000, 4000)]
    with Emulator(
        keys=[KEY], credits=100_000, rate_limit=RATE_LIMIT, seed=1, bandwidth=BANDWIDTH
    ) as emu:
        runs = {mode: one_at_a_time(root / mode, emu, mode, photos) for mode in MODES}
        rss = {mode: burst_peak_rss(root / f"{mode}-rss", emu, mode, big) for mode in MODES}
    return report(photos, runs, rss)


def report(photos: list[bytes], runs: dict[str, list[Sample]], rss: dict[str, int]) -> int:
    """Print the table and the budgets; 0 when every budget is met."""
    orig, prox = runs["original"], runs["proxy"]
    print(
        f"bgsyncd what is sent: {len(photos)} camera photos through the emulator at"
        f" {BANDWIDTH / 1e6:g} MB/s, one at a time (see bench/README.md)"
    )
    print(
        f"{'photo':<6} {'pixels':>10} {'file MB':>8} {'orig sent':>10} {'proxy sent':>11}"
        f" {'ratio':>6} {'orig s':>7} {'proxy s':>8}"
    )
    ratios = []
    for n, (data, (size, _q), o, p) in enumerate(zip(photos, PHOTOS, orig, prox, strict=True), 1):
        ratio = p.sent / o.sent if o.sent else math.inf
        ratios.append(ratio)
        print(
            f"p{n:02d}    {size[0]:>5}x{size[1]:<4} {len(data) / 1e6:8.2f} {o.sent / 1e6:9.2f}M"
            f" {p.sent / 1e3:10.0f}K {ratio:6.3f} {o.seconds:7.2f} {p.seconds:8.2f}"
        )
    o50 = statistics.median(s.seconds for s in orig)
    p50 = statistics.median(s.seconds for s in prox)
    o90 = percentile([s.seconds for s in orig], 0.9)
    p90 = percentile([s.seconds for s in prox], 0.9)
    o_rss, p_rss = rss["original"] / MIB, rss["proxy"] / MIB
    checks = [
        ("bytes sent, worst photo ratio", max(ratios), BYTES_BUDGET, "x original"),
        ("drop-to-output p50 ratio", p50 / o50, P50_BUDGET, "x original"),
        ("peak RSS, proxy (MiB)", p_rss, RSS_BUDGET_MIB, "MiB"),
    ]
    print()
    print(f"{'figure':<44} {'original':>9} {'proxy':>9} {'ratio':>7}")
    print(
        f"{'bytes sent, total (MB)':<44} {sum(s.sent for s in orig) / 1e6:9.2f}"
        f" {sum(s.sent for s in prox) / 1e6:9.2f}"
        f" {sum(s.sent for s in prox) / sum(s.sent for s in orig):7.3f}"
    )
    print(f"{'drop-to-output p50 (s)':<44} {o50:9.2f} {p50:9.2f} {p50 / o50:7.3f}")
    print(f"{'drop-to-output p90 (s)':<44} {o90:9.2f} {p90:9.2f} {p90 / o90:7.3f}")
    label = f"peak RSS, 6 x 6000x4000, {MAX_IN_FLIGHT} in flight (MiB)"
    print(f"{label:<44} {o_rss:9.0f} {p_rss:9.0f} {p_rss / o_rss:7.3f}")
    print()
    ok = True
    for name, value, budget, unit in checks:
        met = value <= budget
        ok = ok and met
        print(f"budget: {name} {value:.3f} <= {budget:g} {unit} -> {'OK' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
