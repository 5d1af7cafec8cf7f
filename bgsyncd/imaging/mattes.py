"""A local soft matte from the border inwards: the emulator's stand-in for the vendor's model.

A classic studio matte, good enough for product photos on a plain, gradient
or softly shaded backdrop:

1. **The backdrop, read from the border.** The image's border is walked as
   one closed loop. Where the loop's colour jumps (a subject touching the
   edge, usually the bottom), the jump's side that is not the backdrop is
   left out, and the backdrop there is interpolated from its neighbours.
   From the four edges so repaired, two models of the backdrop are spread
   over the image: top to bottom, and left to right; a pixel is as far from
   the backdrop as from the nearer of the two (a gradient or a soft shadow
   in either direction fits one of them).
2. **Backdrop-like pixels**: within a tolerance of the model, the tolerance
   taken from the border's own spread (its grain, its JPEG noise).
3. **From the edges inwards**: the backdrop is what the border reaches
   through backdrop-like pixels (a flood fill over runs of pixels, so it
   costs per run, not per pixel). The backdrop so found refines the model
   (cells of backdrop pixels, the subject's cells filled from around them)
   and the fill is redone, a few rounds at half size: a spotlight's bright
   centre or a soft shadow is followed inwards a tolerance at a time.
   Everything not reached is the subject, including parts of it that look
   like the backdrop but are enclosed by it (a skin-coloured face on a beige
   wall, a white label on a white bottle); only a large enclosed region
   within half the tolerance of the backdrop is a hole showing the backdrop
   (a mug's handle).
4. **Soft edges**: the binary subject blurred by about a pixel, which only
   changes pixels within two or three of the edge.

Every per-pixel step is a Pillow primitive; Python loops only over border
positions and runs of pixels. Images over :data:`_WORK_SIDE` are matted at
that size and the matte scaled up, so a 2000 x 1500 image costs about what a
1024-pixel one does.

Only pixels here; what the fake API answers (which endpoint gives what, in
which encoding) is :mod:`bgsyncd.emulator.matte`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageChops, ImageFilter

from bgsyncd.imaging import regions

Colour = tuple[int, int, int]

# The longer side the matte is worked out at; the vendor's own mattes are this size.
_WORK_SIDE = 1024
# How deep a strip along each edge is averaged into the border loop (pixels).
_BAND = 3
# A colour jump along the border loop: this much (Chebyshev) over 2 * _STEP_SPAN positions.
_STEP = 28
_STEP_SPAN = 2
# A stretch of the border shorter than this between jumps is never taken for backdrop.
_MIN_SEGMENT = 6
# A stretch of the border is backdrop if its colour is this close to the longest stretch's.
_SAME_BACKDROP = 24
# The tolerance of "backdrop-like": its floor, its ceiling, and how many times the border's
# own spread (75th percentile of its distance to the model) it adds to the floor.
_TOLERANCE_FLOOR = 12
_TOLERANCE_CEILING = 48
_SPREAD_FACTOR = 3
# The feather: sigma of the Gaussian blur of the binary subject, in pixels.
_FEATHER = 0.9
# An enclosed backdrop-like region is a hole showing the backdrop when it is at least this
# large (pixels, and this share of the image) and within half the tolerance on average.
_MIN_HOLE = 64
_HOLE_SHARE = 400
# Flood fills at most, each from a backdrop model refined by the backdrop the last one found.
_ROUNDS = 4
# The refined model's cell size (pixels of the image it is refined at), and how much
# of a cell (of 255) must be backdrop for the cell's colour to be the backdrop's.
_CELL = 8
_CELL_BACKDROP = 32

_ANY = [0] + [255] * 255
_NONE = [255] + [0] * 255
_FEATHER_CLIP = [0 if v < 8 else 255 if v > 247 else v for v in range(256)]


def border_matte(rgb: Image.Image, own_alpha: Image.Image | None = None) -> Image.Image:
    """Return the soft alpha matte ("L") of an RGB image, times ``own_alpha`` if given.

    ``rgb`` and ``own_alpha`` are what :func:`~bgsyncd.imaging.rgb_and_alpha`
    gives. Where the image has its own alpha, only its opaque pixels tell the
    backdrop, and its transparent pixels count as backdrop.
    """
    size = rgb.size
    small_rgb, small_alpha = rgb, own_alpha
    if max(size) > _WORK_SIDE:
        scale = _WORK_SIDE / max(size)
        work = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        small_rgb = rgb.resize(work, Image.Resampling.BOX)
        if own_alpha is not None:
            small_alpha = own_alpha.resize(work, Image.Resampling.BOX)
    subject = _subject(small_rgb, small_alpha)
    # The feather's faint tails (under 8 of 255) would put a haze around the subject.
    alpha = subject.filter(ImageFilter.GaussianBlur(_FEATHER)).point(_FEATHER_CLIP)
    if alpha.size != size:
        alpha = alpha.resize(size, Image.Resampling.BILINEAR)
    if own_alpha is not None:
        alpha = ImageChops.multiply(alpha, own_alpha)
    return alpha


def _subject(rgb: Image.Image, own_alpha: Image.Image | None) -> Image.Image:
    """The binary subject ("L", 0 or 255): what the border cannot reach through backdrop."""
    width, height = rgb.size
    # Pixels of the image's own transparency are backdrop whatever their colour.
    clear = None if own_alpha is None else own_alpha.point(lambda a: 0 if a >= 250 else 255)
    # Smoothing first keeps JPEG noise and grain out of both the model and the distances.
    smooth = rgb.filter(ImageFilter.BoxBlur(1)) if min(width, height) >= 3 else rgb
    loop = _border_loop(smooth, None if clear is None else ImageChops.invert(clear))
    if loop is None:  # no backdrop to be seen: all of it is the subject (or its own alpha)
        return Image.new("L", rgb.size, 255)
    models = _border_models(loop, rgb.size)
    tolerance = _tolerance(_distance(smooth, models))
    lut = [255 if d <= tolerance else 0 for d in range(256)]
    models = _refined(smooth, models, lut, clear)
    distance = _distance(smooth, models)
    subject = _unreached(_passable(distance, lut, clear), distance, tolerance // 2)
    # The smoothing spread the subject by a pixel into the backdrop: the subject's
    # outermost pixels that are backdrop-like unsmoothed are backdrop.
    near_backdrop = ImageChops.invert(subject).filter(ImageFilter.BoxBlur(1)).point(_ANY)
    outline = ImageChops.multiply(subject, near_backdrop)
    peel = ImageChops.multiply(outline, _distance(rgb, models).point(lut))
    subject = ImageChops.subtract(subject, peel)
    # Where the image is clear its own alpha is the edge: no feather from the matte there.
    return subject if clear is None else ImageChops.lighter(subject, clear)


def _passable(distance: Image.Image, lut: list[int], clear: Image.Image | None) -> Image.Image:
    """255 where a pixel is backdrop-like (or transparent), 0 elsewhere."""
    passable = distance.point(lut)
    return passable if clear is None else ImageChops.lighter(passable, clear)


def _refined(
    smooth: Image.Image, models: list[Image.Image], lut: list[int], clear: Image.Image | None
) -> list[Image.Image]:
    """The backdrop models, refined from the backdrop each flood fill finds.

    The backdrop the border reaches tells the backdrop nearer the subject: a
    spotlight's bright centre, a soft shadow darkening towards the subject. Each
    round reaches another tolerance's worth further. Worked out at half the size:
    only the model is kept, the last flood fill is redone at full size.
    """
    width, height = smooth.size
    half = (max(1, width // 2), max(1, height // 2))
    small = smooth.resize(half, Image.Resampling.BOX)
    small_clear = None if clear is None else clear.resize(half, Image.Resampling.BOX).point(_ANY)
    small_models = [m.resize(half, Image.Resampling.BILINEAR) for m in models]
    area = half[0] * half[1]
    for _ in range(_ROUNDS):
        subject = _unreached(_passable(_distance(small, small_models), lut, small_clear))
        before, area = area, _count(subject)
        if before - area <= half[0] * half[1] // 200:  # under half a percent more backdrop
            break
        # Only backdrop two pixels from the subject: its edge pixels would pull the
        # model towards the subject's colour, and the next round further into it.
        inner = subject.filter(ImageFilter.BoxBlur(2)).point(_NONE)
        grid = _seen_backdrop(small, inner)
        small_models = [grid.resize(half, Image.Resampling.BILINEAR)]
        models = [grid.resize(smooth.size, Image.Resampling.BILINEAR)]
    return models


def _grid(size: tuple[int, int]) -> tuple[int, int]:
    """The size of the refined model's grid of cells for an image of ``size``."""
    return max(1, -(-size[0] // _CELL)), max(1, -(-size[1] // _CELL))


def _count(mask: Image.Image) -> int:
    """How many pixels of a 0/255 mask are 255."""
    return mask.histogram()[255]


# --- the backdrop, from the border -----------------------------------------------------


def _border_loop(rgb: Image.Image, opaque: Image.Image | None) -> list[Colour] | None:
    """The backdrop's colour at each border position, clockwise from the top left corner.

    None when no stretch of the border shows a backdrop (a transparent or noisy border).
    """
    raw = _edge_profiles(rgb, opaque)
    count = len(raw)
    known = _segments(raw)
    if not known:
        return None
    longest = max(known, key=len)
    reference = [raw[i] for i in longest[::4]]
    backdrop = [False] * count
    for segment in known:
        if segment is longest or _near(_median(raw, segment), reference, _SAME_BACKDROP):
            for i in segment:
                backdrop[i] = True
    return _interpolate(raw, backdrop)


def _edge_profiles(rgb: Image.Image, opaque: Image.Image | None) -> list[Colour | None]:
    """The mean colour of a strip at each border position (None where not wholly opaque)."""
    width, height = rgb.size
    band = max(1, min(_BAND, width // 2, height // 2))
    strips = (  # (box, as a row or a column, reversed): clockwise from the top left
        ((0, 0, width, band), True, False),
        ((width - band, 0, width, height), False, False),
        ((0, height - band, width, height), True, True),
        ((0, 0, band, height), False, True),
    )
    loop: list[Colour | None] = []
    for box, row, backwards in strips:
        line: list[Colour | None] = list(_strip_means(rgb, box, row))
        if opaque is not None:
            cover = _strip_means(opaque, box, row)
            line = [c if a[0] == 255 else None for c, a in zip(line, cover, strict=True)]
        if backwards:
            line.reverse()
        loop.extend(line[:-1])  # each corner once: it starts the next edge
    return loop


def _strip_means(img: Image.Image, box: tuple[int, int, int, int], row: bool) -> list[Colour]:
    """The mean of ``img`` across a strip, per position along it (as RGB triples)."""
    strip = img.crop(box)
    length = strip.width if row else strip.height
    line = strip.resize((length, 1) if row else (1, length), Image.Resampling.BOX)
    line = line.convert("RGB")
    data = line.tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def _segments(raw: Sequence[Colour | None]) -> list[list[int]]:
    """Stretches of the border loop without a colour jump or an unknown position."""
    count = len(raw)
    good = [False] * count
    for i, colour in enumerate(raw):
        before, after = raw[(i - _STEP_SPAN) % count], raw[(i + _STEP_SPAN) % count]
        if colour is None:
            continue
        good[i] = before is None or after is None or _chebyshev(before, after) <= _STEP
    if all(good):
        return [list(range(count))]
    start = good.index(False)  # walk the loop from a break, so no stretch is cut in two
    segments: list[list[int]] = []
    current: list[int] = []
    for step in range(1, count + 1):
        i = (start + step) % count
        if good[i]:
            current.append(i)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return [s for s in segments if len(s) >= _MIN_SEGMENT]


def _median(raw: Sequence[Colour | None], positions: list[int]) -> Colour:
    """The per-channel median colour at ``positions``."""
    channels = [sorted(c[k] for i in positions if (c := raw[i]) is not None) for k in range(3)]
    middle = len(positions) // 2
    return channels[0][middle], channels[1][middle], channels[2][middle]


def _near(colour: Colour, palette: Sequence[Colour | None], limit: int) -> bool:
    """Whether ``colour`` is within ``limit`` of any colour of ``palette``."""
    return any(p is not None and _chebyshev(colour, p) <= limit for p in palette)


def _interpolate(raw: Sequence[Colour | None], backdrop: list[bool]) -> list[Colour]:
    """The loop with every non-backdrop position filled in linearly from its neighbours."""
    count = len(raw)
    known = [i for i in range(count) if backdrop[i]]
    loop: list[Colour] = [(0, 0, 0)] * count
    for index, i in enumerate(known):
        j = known[(index + 1) % len(known)]
        a, b = raw[i], raw[j]
        assert a is not None and b is not None
        gap = (j - i) % count or count
        for step in range(gap):
            t = step / gap
            loop[(i + step) % count] = (
                round(a[0] + (b[0] - a[0]) * t),
                round(a[1] + (b[1] - a[1]) * t),
                round(a[2] + (b[2] - a[2]) * t),
            )
    return loop


def _chebyshev(a: Colour, b: Colour) -> int:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2]))


def _border_models(loop: list[Colour], size: tuple[int, int]) -> list[Image.Image]:
    """The backdrop spread from the border loop: top to bottom, and left to right."""
    width, height = size
    top = loop[:width]
    right = loop[width - 1 : width + height - 1]
    bottom = loop[width + height - 2 : 2 * width + height - 2][::-1]
    left = (loop[2 * width + height - 3 :] + loop[:1])[::-1]
    # Two rows (or columns) stretched between their centres: a linear blend across the image.
    rows = Image.new("RGB", (width, 2))
    rows.putdata(top + bottom)
    down = rows.resize(size, Image.Resampling.BILINEAR, box=(0, 0.5, width, 1.5))
    columns = Image.new("RGB", (2, height))
    columns.putdata([c for pair in zip(left, right, strict=True) for c in pair])
    across = columns.resize(size, Image.Resampling.BILINEAR, box=(0.5, 0, 1.5, height))
    return [down, across]


def _distance(rgb: Image.Image, models: list[Image.Image]) -> Image.Image:
    """Each pixel's Chebyshev distance ("L") to the nearest of the backdrop ``models``."""
    nearest = _chebyshev_image(rgb, models[0])
    for model in models[1:]:
        nearest = ImageChops.darker(nearest, _chebyshev_image(rgb, model))
    return nearest


def _seen_backdrop(rgb: Image.Image, backdrop: Image.Image) -> Image.Image:
    """The backdrop's mean colour in cells of :data:`_CELL` pixels, from ``backdrop`` (255).

    Only backdrop pixels are averaged; a cell with too little backdrop takes the
    mean of its neighbours at the next coarser level (push-pull), so the
    subject's cells are filled from around it.
    """
    grid = _grid(rgb.size)
    masked = ImageChops.multiply(rgb, Image.merge("RGB", (backdrop,) * 3))
    sums = masked.resize(grid, Image.Resampling.BOX).tobytes()
    weights = backdrop.resize(grid, Image.Resampling.BOX).tobytes()
    known: list[Colour | None] = [
        (_mean_of(sums[3 * k], w), _mean_of(sums[3 * k + 1], w), _mean_of(sums[3 * k + 2], w))
        if w >= _CELL_BACKDROP
        else None
        for k, w in enumerate(weights)
    ]
    model = Image.new("RGB", grid)
    model.putdata(regions.push_pull(known, grid))
    return model


def _mean_of(masked: int, weight: int) -> int:
    """A cell's mean over its backdrop: its masked mean divided by its share of backdrop."""
    return min(255, masked * 255 // weight)


def _chebyshev_image(a: Image.Image, b: Image.Image) -> Image.Image:
    # Chebyshev distance: a change of hue counts as much as a change of brightness.
    red, green, blue = ImageChops.difference(a, b).split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _tolerance(distance: Image.Image) -> int:
    """How far from the model is still backdrop: from the border's own spread around it."""
    width, height = distance.size
    band = max(1, min(_BAND, width // 2, height // 2))
    hist = [0] * 256
    for box in ((0, 0, width, band), (0, height - band, width, height)):
        hist = [a + b for a, b in zip(hist, distance.crop(box).histogram(), strict=True)]
    for box in ((0, band, band, height - band), (width - band, band, width, height - band)):
        if box[3] > box[1]:
            hist = [a + b for a, b in zip(hist, distance.crop(box).histogram(), strict=True)]
    target, seen = sum(hist) * 0.75, 0
    for value, count in enumerate(hist):
        seen += count
        if seen >= target:
            return max(
                _TOLERANCE_FLOOR, min(_TOLERANCE_FLOOR + _SPREAD_FACTOR * value, _TOLERANCE_CEILING)
            )
    return _TOLERANCE_FLOOR


# --- from the edges inwards ------------------------------------------------------------


def _unreached(
    passable: Image.Image, holes: Image.Image | None = None, limit: int = 0
) -> Image.Image:
    """255 where the border cannot reach through passable (255) pixels, 0 where it can.

    With ``holes`` (a distance image), a large enclosed passable region whose mean
    distance is at most ``limit`` is reached too: the backdrop seen through a hole.
    """
    width, height = passable.size
    least = max(_MIN_HOLE, width * height // _HOLE_SHARE)
    out = regions.unreached(
        passable.tobytes(), width, height, None if holes is None else holes.tobytes(), limit, least
    )
    return Image.frombytes("L", (width, height), out)
