"""The matte's pure-Python steps (no Pillow): regions of a mask, gaps of a grid filled.

:func:`unreached` is the flood fill from the border: a mask's rows are cut
into runs of 255 by a regular expression (in C), and the fill walks runs, not
pixels, so a 1024-pixel matte of a product photo costs a few thousand steps.
:func:`push_pull` fills the unknown cells of a small grid of colours from the
known ones around them.
"""

from __future__ import annotations

import re
from bisect import bisect_right

Colour = tuple[int, int, int]

_RUN = re.compile(rb"\xff+")

Runs = list[tuple[list[int], list[int]]]
"""Each row's runs of 255: the row's list of starts and its list of ends."""


def unreached(
    passable: bytes, width: int, height: int, holes: bytes | None, limit: int, least: int
) -> bytes:
    """A mask (bytes of 0 or 255) of what the border cannot reach through ``passable``.

    ``passable`` is a ``width`` x ``height`` mask, 255 where a pixel may be
    crossed. A run of passable pixels is reached when it touches the border or
    overlaps a reached run in the row above or below (four-connected). With
    ``holes`` (a distance per pixel), an enclosed passable region of at least
    ``least`` pixels whose mean distance is at most ``limit`` is reached too:
    the backdrop itself, seen through a hole (a mug's handle).
    """
    runs = _runs(passable, width, height)
    seeds = [
        (y, k)
        for y, (starts, ends) in enumerate(runs)
        for k, (a, b) in enumerate(zip(starts, ends, strict=True))
        if y in (0, height - 1) or a == 0 or b == width
    ]
    reached = [[False] * len(starts) for starts, _ in runs]
    _fill(runs, reached, seeds)
    if holes is not None:
        distance = holes
        visited = [row[:] for row in reached]
        for y, (starts, _) in enumerate(runs):
            for k in range(len(starts)):
                if visited[y][k]:
                    continue
                region = _fill(runs, visited, [(y, k)])
                area = total = 0
                for ry, rk in region:
                    a, b = runs[ry][0][rk] + ry * width, runs[ry][1][rk] + ry * width
                    area += b - a
                    total += sum(distance[a:b])
                if area >= least and total <= limit * area:
                    for ry, rk in region:
                        reached[ry][rk] = True
    out = bytearray(b"\xff" * (width * height))
    for y, (starts, ends) in enumerate(runs):
        base = y * width
        for a, b, done in zip(starts, ends, reached[y], strict=True):
            if done:
                out[base + a : base + b] = bytes(b - a)
    return bytes(out)


def _runs(data: bytes, width: int, height: int) -> Runs:
    """Each row's runs of 255, as the row's list of starts and list of ends."""
    runs: Runs = []
    for y in range(height):
        starts, ends = [], []
        for match in _RUN.finditer(data, y * width, (y + 1) * width):
            starts.append(match.start() - y * width)
            ends.append(match.end() - y * width)
        runs.append((starts, ends))
    return runs


def _fill(
    runs: Runs, reached: list[list[bool]], seeds: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Mark every run connected to ``seeds`` in ``reached``; return the runs marked."""
    height = len(runs)
    stack = list(seeds)
    for y, k in seeds:
        reached[y][k] = True
    marked = list(seeds)
    while stack:
        y, k = stack.pop()
        a, b = runs[y][0][k], runs[y][1][k]
        for ny in (y - 1, y + 1):
            if not 0 <= ny < height:
                continue
            starts, ends = runs[ny]
            row_reached = reached[ny]
            j = bisect_right(ends, a)  # the first run ending after this one starts
            while j < len(starts) and starts[j] < b:
                if not row_reached[j]:
                    row_reached[j] = True
                    stack.append((ny, j))
                    marked.append((ny, j))
                j += 1
    return marked


def push_pull(cells: list[Colour | None], grid: tuple[int, int]) -> list[Colour]:
    """``cells`` with each unknown one filled from the known ones around it."""
    width, height = grid
    if all(c is None for c in cells):
        return [(0, 0, 0)] * len(cells)
    if all(c is not None for c in cells):
        return [c for c in cells if c is not None]
    half = (max(1, -(-width // 2)), max(1, -(-height // 2)))
    coarse: list[Colour | None] = []
    for cy in range(half[1]):
        for cx in range(half[0]):
            group = [
                c
                for y in (2 * cy, 2 * cy + 1)
                for x in (2 * cx, 2 * cx + 1)
                if x < width and y < height and (c := cells[y * width + x]) is not None
            ]
            coarse.append(_mean(group) if group else None)
    coarse_filled = push_pull(coarse, half) if half != grid else [(0, 0, 0)] * len(coarse)
    return [
        c if (c := cells[y * width + x]) is not None else coarse_filled[(y // 2) * half[0] + x // 2]
        for y in range(height)
        for x in range(width)
    ]


def _mean(colours: list[Colour]) -> Colour:
    n = len(colours)
    return (
        sum(c[0] for c in colours) // n,
        sum(c[1] for c in colours) // n,
        sum(c[2] for c in colours) // n,
    )
