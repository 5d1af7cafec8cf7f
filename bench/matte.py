"""The emulator's matte alone: how long one camera-size cut-out takes.

Run from the repository root (see bench/README.md)::

    .venv/bin/python -m bench.matte [--width 2000] [--height 1500] [--runs 3]

This was an assertion in tests/unit/emulator/test_emulator.py (a 2000x1500 JPEG cut out
"well under a second"); timings on a shared machine do not belong in the suite.
The figure is the best of ``--runs`` (decode, matte, PNG encode) in process,
so a busy neighbour cannot fail it. Exit status 1 on a miss.
"""

from __future__ import annotations

import argparse
import io
import random
import time

from PIL import Image, ImageDraw

from bench.scale import Figure, print_table
from bgsyncd.emulator import matte


def photo(width: int, height: int) -> bytes:
    """A product on a slightly noisy light backdrop, as a JPEG (as the tests make it)."""
    rng = random.Random(5)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    backdrop = grain.point(lambda v: 226 + v // 32)
    img = Image.merge("RGB", (backdrop, backdrop, backdrop))
    box = (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
    ImageDraw.Draw(img).rounded_rectangle(box, radius=20, fill=(40, 90, 160))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=88)
    return out.getvalue()


def best_cut_out(data: bytes, runs: int) -> float:
    """The fastest of ``runs`` full cut-outs of ``data``, in seconds."""
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        matte.cut_out(matte.decode(data), alpha_only=False)
        best = min(best, time.perf_counter() - began)
    return best


def main(argv: list[str] | None = None) -> int:
    """Measure; exit 1 if the figure misses its budget."""
    parser = argparse.ArgumentParser(prog="python -m bench.matte", description=__doc__)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    took = best_cut_out(photo(args.width, args.height), args.runs)
    name = f"emulator cut-out {args.width}x{args.height}, best of {args.runs}"
    return 0 if print_table([Figure(name, took, "s", 1.0)]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
