"""Edges: the matte brought to full size guided by the original, edge colours cleaned (SPEC §9).

``edges = "refine"``. The vendor's matte is about 1024 pixels on its longer
side; a camera photo is six times that. Scaled up alone (``"resize"``), its
edges are six pixels of blur, and an edge pixel keeps the old background's
share of its colour, which shows as a fringe once the cut-out is on white.

How, in two stages, so no whole-size float array ever exists:

1. On the matte's own grid (the *grid*, at most :data:`GRID_SIDE` pixels on
   its longer side), with the original scaled down to it as the guide:
   a colour guided filter (He, Sun and Tang, "Guided Image Filtering", 2010;
   upsampled as in He and Sun, "Fast Guided Filter", 2015) gives per grid
   pixel a linear model ``alpha = a . rgb + b``; blur-fusion foreground
   estimation (Forte and Pitié, "Approximate Fast Foreground Colour
   Estimation", 2021) gives the local foreground and background colours.
   A min and a max filter of the matte say where it is certain.
2. At full size, in strips of :data:`STRIP_ROWS` rows: a pixel whose matte
   footprint (the ``2r`` window of every grid pixel it is interpolated
   from) is all 0 or all 255 gets that value; any other gets the model,
   bilinearly interpolated and applied to its own colours. A pixel left
   with 0 < alpha < 255 gets its foreground colour estimated from its own
   colour and the local colours. Opaque pixels keep the original's colours
   exactly. Every full-size step is per pixel, so strips need no overlap
   and give the same result as one piece.

numpy is imported here and in no other part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bgsyncd.imaging.plan import Size

Floats = NDArray[np.float32]
Bytes = NDArray[np.uint8]
Ints = NDArray[np.intp]

GRID_SIDE = 1024
"""The longest side of the grid the filters run on; a larger matte is scaled down to it."""
STRIP_ROWS = 64
"""Full-size rows handled at a time: at most 384,000 pixels of a 6000-pixel-wide photo."""
BAND_ROWS = 128
"""Grid rows filtered at a time (plus what the filters reach around them)."""
RADIUS = 1
"""The guided filter's window radius, in grid pixels (3 x 3: about 18 x 18 at full size)."""
EPS = 1e-4
"""The guided filter's regulariser (colours in 0..1): larger follows the matte more."""
FUSION_SIZES = (15, 3)
"""Blur-fusion's two box sizes on its half-size grid (the paper's 90 and 6 at about 1/6)."""
FUSION_SCALE = 2
"""Blur-fusion's local colours are smooth: they are estimated on a grid this many times
smaller than the guided filter's (a quarter of the time, no visible loss on bench/edges.py)."""
_TINY = 1e-5


def refine(rgb: Image.Image, matte: Image.Image, *, strip_rows: int = STRIP_ROWS) -> Image.Image:
    """Return ``matte`` brought to ``rgb``'s size along the photo's edges; clean ``rgb``'s edges.

    ``rgb`` ("RGB", full size) is changed in place: a pixel whose returned
    alpha is strictly between 0 and 255 gets its estimated foreground
    colour; every other pixel keeps its colour exactly. ``matte`` ("L") may
    be of any size of the same aspect ratio; one not smaller than ``rgb`` is
    scaled to it (Lanczos) and only the colours are cleaned. The caller holds
    :func:`~bgsyncd.imaging.full_decode_slot`.
    """
    size: Size = rgb.size
    guided = matte.width < size[0] and matte.height < size[1]
    full_alpha: Image.Image | None = None
    if guided:
        grid_matte = matte if _fits(matte.size) else matte.resize(_grid(matte.size), _BOX)
    else:
        full_alpha = matte if matte.size == size else matte.resize(size, _LANCZOS)
        grid_matte = full_alpha.resize(_grid(size), _BOX)
    guide = np.asarray(rgb.resize(grid_matte.size, _BOX))
    p = np.asarray(grid_matte)
    model = _in_bands(_guided_model, guide, p, 2 * RADIUS) if guided else None
    del guide, p
    fusion_grid = (
        max(1, grid_matte.width // FUSION_SCALE),
        max(1, grid_matte.height // FUSION_SCALE),
    )
    colours = _in_bands(
        _fusion,
        np.asarray(rgb.resize(fusion_grid, _BOX)),
        np.asarray(grid_matte.resize(fusion_grid, _BOX)),
        sum(s // 2 for s in FUSION_SIZES),
    )
    lo, hi = _footprint(grid_matte)
    out = full_alpha if full_alpha is not None else Image.new("L", size, 0)
    xs = _Axis.of(size[0], grid_matte.width)
    ys = _Axis.of(size[1], grid_matte.height)
    fusion_xs = _Axis.of(size[0], fusion_grid[0])
    fusion_ys = _Axis.of(size[1], fusion_grid[1])
    for top in range(0, size[1], strip_rows):
        box = (0, top, size[0], min(size[1], top + strip_rows))
        rows = ys.part(box[1], box[3])
        fusion_rows = fusion_ys.part(box[1], box[3])
        if model is not None:
            strip = np.array(rgb.crop(box))
            alpha = _strip_alpha(strip, model, lo, hi, rows, xs)
            out.paste(Image.fromarray(alpha, "L"), box)
        else:
            alpha = np.asarray(out.crop(box))
            strip = np.array(rgb.crop(box))
        if _decontaminate(strip, alpha, colours, fusion_rows, fusion_xs):
            rgb.paste(Image.fromarray(strip, "RGB"), box)
    return out


_BOX = Image.Resampling.BOX
_LANCZOS = Image.Resampling.LANCZOS


class _Axis:
    """Bilinear sampling positions of full-size pixels on the grid, along one axis.

    Pixel ``i``'s centre falls at ``(i + 0.5) * grid / full - 0.5`` on the grid
    (as Pillow's resize puts it); it lies between grid pixels ``lo`` and
    ``hi`` with weight ``w`` on ``hi``. Computed per pixel from its index alone,
    so a strip's values are those of the whole.
    """

    def __init__(self, lo: Ints, hi: Ints, w: Floats) -> None:
        self.lo, self.hi, self.w = lo, hi, w

    @classmethod
    def of(cls, full: int, grid: int) -> _Axis:
        pos = (np.arange(full, dtype=np.float64) + 0.5) * (grid / full) - 0.5
        lo = np.clip(np.floor(pos), 0, grid - 1).astype(np.intp)
        hi = np.minimum(lo + 1, grid - 1)
        w = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
        return cls(lo, hi, w)

    def part(self, start: int, stop: int) -> _Axis:
        return _Axis(self.lo[start:stop], self.hi[start:stop], self.w[start:stop])


def _fits(size: Size) -> bool:
    return max(size) <= GRID_SIDE


def _grid(size: Size) -> Size:
    """``size`` scaled to fit :data:`GRID_SIDE` (never enlarged)."""
    if _fits(size):
        return size
    scale = GRID_SIDE / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _unit(pixels: NDArray[Any]) -> Floats:
    """8-bit values as float32 in 0..1."""
    out: Floats = pixels.astype(np.float32) * np.float32(1 / 255)
    return out


def _box(x: Floats, size: int) -> Floats:
    """The mean over a ``size`` x ``size`` window (clipped at the borders) of each pixel."""
    if x.ndim == 3:  # channel by channel: a third of the temporary memory
        out = np.empty_like(x)
        for c in range(x.shape[2]):
            out[..., c] = _box(x[..., c], size)
        return out
    r = size // 2
    total = x
    for axis in (0, 1):
        n = total.shape[axis]
        idx = np.arange(n)
        start, stop = np.clip(idx - r, 0, n), np.clip(idx + r + 1, 0, n)
        count = (stop - start).astype(np.float32)
        if size <= 9:  # a few shifted sums: exact enough for the filter's variances
            pad = [(0, 0), (0, 0)]
            pad[axis] = (r, r)
            padded = np.pad(total, pad)
            total = np.take(padded, idx, axis=axis)
            for k in range(1, size):
                total += np.take(padded, idx + k, axis=axis)
        else:
            pad = [(0, 0), (0, 0)]
            pad[axis] = (1, 0)
            padded = np.cumsum(np.pad(total, pad), axis=axis)
            total = np.take(padded, stop, axis=axis)
            total -= np.take(padded, start, axis=axis)
        del padded
        total /= count[:, None] if axis == 0 else count
    return total


def _in_bands(fn: Any, guide: Bytes, p: Bytes, reach: int) -> NDArray[Any]:
    """``fn(guide, p)`` in 0..1 over bands of :data:`BAND_ROWS` grid rows, for its memory.

    ``fn`` reads ``reach`` rows around each row at most: each band is computed
    with that much more on either side, which is then dropped.
    """
    height = p.shape[0]
    out: NDArray[Any] | None = None
    for top in range(0, height, BAND_ROWS):
        bottom = min(height, top + BAND_ROWS)
        first, last = max(0, top - reach), min(height, bottom + reach)
        part: NDArray[Any] = fn(_unit(guide[first:last]), _unit(p[first:last]))
        if out is None:
            out = np.empty((height, *part.shape[1:]), part.dtype)
        out[top:bottom] = part[top - first : bottom - first]
        del part
    assert out is not None
    return out


def _guided_model(guide: Floats, p: Floats) -> Floats:
    """The colour guided filter's mean coefficients (a_r, a_g, a_b, b) per grid pixel.

    Each window fits ``p ~ a . guide + b`` by least squares (ridge ``EPS``);
    each pixel's model is the mean of its windows' (He et al. 2010, eq. 8).
    """
    size = 2 * RADIUS + 1
    mean_i = _box(guide, size)
    mean_p = _box(p, size)
    cov = _box(guide * p[..., None], size) - mean_i * mean_p[..., None]
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    v = [
        _box(guide[..., i] * guide[..., j], size) - mean_i[..., i] * mean_i[..., j]
        for i, j in pairs
    ]
    for k in (0, 3, 5):
        v[k] += np.float32(EPS)
    xx, xy, xz, yy, yz, zz = v
    # The inverse of the symmetric 3 x 3 [[xx xy xz] [xy yy yz] [xz yz zz]], by cofactors.
    c_xx, c_xy, c_xz = yy * zz - yz * yz, xz * yz - xy * zz, xy * yz - xz * yy
    c_yy, c_yz, c_zz = xx * zz - xz * xz, xy * xz - xx * yz, xx * yy - xy * xy
    det = xx * c_xx + xy * c_xy + xz * c_xz
    del v, xx, xy, xz, yy, yz, zz
    cr, cg, cb = cov[..., 0], cov[..., 1], cov[..., 2]
    model = np.empty((*p.shape, 4), np.float32)
    model[..., 0] = (c_xx * cr + c_xy * cg + c_xz * cb) / det
    model[..., 1] = (c_xy * cr + c_yy * cg + c_yz * cb) / det
    model[..., 2] = (c_xz * cr + c_yz * cg + c_zz * cb) / det
    del cov, cr, cg, cb, c_xx, c_xy, c_xz, c_yy, c_yz, c_zz, det
    model[..., 3] = mean_p - np.einsum("ijk,ijk->ij", model[..., :3], mean_i)
    del mean_i, mean_p
    return _box(model, size)


def _footprint(grid_matte: Image.Image) -> tuple[Bytes, Bytes]:
    """Per grid cell, the matte's least and greatest value over every window it is read from.

    A cell is the 2 x 2 grid pixels a full-size pixel is interpolated from;
    each pixel's model depends on the matte ``2 * RADIUS`` around it.
    """
    m = np.asarray(grid_matte)
    reach = 2 * RADIUS
    return _spread(m, np.minimum, reach), _spread(m, np.maximum, reach)


def _spread(a: Bytes, pick: Any, reach: int) -> Bytes:
    """``pick`` over the pixels from ``reach`` before to ``reach + 1`` after each (edges repeated).

    The one pixel more after is the cell's right and lower neighbour.
    """
    out = a
    for axis in (0, 1):
        n = out.shape[axis]
        idx = np.arange(n)
        pad = [(0, 0), (0, 0)]
        pad[axis] = (reach, reach + 1)
        padded = np.pad(out, pad, mode="edge")
        acc = np.take(padded, idx, axis=axis)
        for k in range(1, 2 * reach + 2):
            acc = pick(acc, np.take(padded, idx + k, axis=axis))
        out = acc
    return out


def _fusion(guide: Floats, p: Floats) -> Bytes:
    """Blur-fusion's local foreground and background colours (6 channels, 0..255) on the grid."""
    a = p[..., None]
    fg, bg = guide, guide
    local = np.empty((*p.shape, 6), np.float32)
    for size in FUSION_SIZES:
        blurred_a = _box(a, size)
        local[..., :3] = _box(fg * a, size)
        local[..., :3] /= blurred_a + _TINY
        local[..., 3:] = _box(bg * (1 - a), size)
        local[..., 3:] /= 1 - blurred_a + _TINY
        del blurred_a
        fg = _estimate(guide, a, local)
        bg = local[..., 3:].copy()
    np.clip(local, 0.0, 1.0, out=local)
    local *= 255
    return np.rint(local, out=local).astype(np.uint8)  # 8 bits are all a colour needs


def _estimate(colour: Floats, a: Floats, local: Floats) -> Floats:
    """F = F^ + a (I - a F^ - (1 - a) B^), clipped to 0..1 (Forte and Pitié, eq. 5)."""
    f_hat, b_hat = local[..., :3], local[..., 3:]
    out: Floats = f_hat + a * (colour - a * f_hat - (1 - a) * b_hat)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _sample(field: NDArray[Any], rows: _Axis, cols: _Axis, ys: Ints, xs: Ints) -> Floats:
    """``field`` (grid, channels) interpolated bilinearly at the strip's pixels (ys, xs)."""
    width = field.shape[1]
    flat = field.reshape(-1, field.shape[2])
    y0, y1, wy = rows.lo[ys] * width, rows.hi[ys] * width, rows.w[ys][:, None]
    x0, x1, wx = cols.lo[xs], cols.hi[xs], cols.w[xs][:, None]
    # np.take of a flat index: ten times faster than field[y, x]
    top = np.take(flat, y0 + x0, axis=0).astype(np.float32)
    right = np.take(flat, y0 + x1, axis=0).astype(np.float32)
    top += (right - top) * wx
    bottom = np.take(flat, y1 + x0, axis=0).astype(np.float32)
    right = np.take(flat, y1 + x1, axis=0).astype(np.float32)
    bottom += (right - bottom) * wx
    top += (bottom - top) * wy
    out: Floats = top
    return out


def _strip_alpha(
    strip: Bytes, model: Floats, lo: Bytes, hi: Bytes, rows: _Axis, cols: _Axis
) -> Bytes:
    """One strip's full-size alpha: certain pixels from the matte, the others from the model."""
    least = lo[rows.lo][:, cols.lo]
    most = hi[rows.lo][:, cols.lo]
    alpha: Bytes = least.copy()  # certain: all 0 (least = most = 0) or all 255 (least = 255)
    ys, xs = np.nonzero((most != 0) & (least != 255))
    del least, most
    if ys.size:
        coeffs = _sample(model, rows, cols, ys, xs)
        colour = _unit(strip[ys, xs])
        q = np.einsum("ij,ij->i", coeffs[:, :3], colour) + coeffs[:, 3]
        alpha[ys, xs] = np.rint(np.clip(q, 0.0, 1.0) * 255).astype(np.uint8)
    return alpha


def _decontaminate(strip: Bytes, alpha: Bytes, local: Bytes, rows: _Axis, cols: _Axis) -> bool:
    """Give the strip's pixels with 0 < alpha < 255 their foreground colour; False if none."""
    ys, xs = np.nonzero((alpha != 0) & (alpha != 255))
    if not ys.size:
        return False
    a = _unit(alpha[ys, xs])[:, None]
    colours = _estimate(
        _unit(strip[ys, xs]), a, _sample(local, rows, cols, ys, xs) * np.float32(1 / 255)
    )
    strip[ys, xs] = np.rint(colours * 255).astype(np.uint8)
    return True
