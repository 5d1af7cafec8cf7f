"""What is sent for an input, and whether an answer fits it: pure decisions, no pixels.

SPEC §5 "What is sent". The vendor's model works at 1024 pixels on the longer
side: a larger upload is scaled down on their side and its matte scaled back
up, so sending more buys nothing but upload time. In ``"proxy"`` mode an input
goes as it is only when it is already small (longer side at most
``proxy_side``), fits ``max_upload_bytes`` and carries no EXIF rotation (a
server might or might not apply it, and the matte must line up with the stored
pixels); every other input is sent as a copy of its stored pixels, made by
:func:`bgsyncd.imaging.make_proxy`. ``"original"`` mode sends the file itself
to the cut-out endpoint, or, when it is too large, a reduced copy to the
alpha-channel endpoint as 0.1 did.

Everything here decides from sizes and tags already known
(:class:`bgsyncd.imaging.ImageInfo`); the other modules of the package do the
pixel work. No Pillow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Size = tuple[int, int]
"""(width, height) in pixels."""

Endpoint = Literal["alpha_channel", "remove_background"]
"""The :class:`bgsyncd.api.client.Client` method the upload goes to."""

Action = Literal["as_is", "proxy", "too_large"]
"""Send the file's own bytes, send a copy, or quarantine it as ``too_large``."""

ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height when applied."""

MATTE_MAX_SCALE = 4
"""A matte may have up to 4 times the pixels sent, and no less than 1/4 of its longer side."""


@dataclass(frozen=True)
class UploadPlan:
    """What to send for one input, and why."""

    action: Action
    endpoint: Endpoint
    side: int | None
    """Longer side of the copy (never more than the stored one); None: start at full size."""
    reason: str
    """Why a copy or a refusal (for the log line); "" when sent as it is."""


def plan_upload(
    size: Size,
    orientation: int,
    file_size: int,
    *,
    upload: str,
    proxy_side: int,
    max_upload_bytes: int,
    oversize: str,
) -> UploadPlan:
    """Decide what is sent for an input of stored ``size`` and ``file_size`` bytes.

    ``upload`` is ``api.upload`` ("proxy" | "original"), ``oversize`` the
    folder's ("shrink" | "quarantine"); ``orientation`` is the EXIF tag (1 when
    absent). A file over ``max_upload_bytes`` with ``oversize = "quarantine"``
    is ``too_large`` in either mode.
    """
    too_big = file_size > max_upload_bytes
    if too_big and oversize == "quarantine":
        reason = f"{file_size} bytes is over api.max_upload_bytes"
        return UploadPlan("too_large", "alpha_channel", None, reason)
    if upload == "original":
        if too_big:
            reason = f"{file_size} bytes is over api.max_upload_bytes"
            return UploadPlan("proxy", "alpha_channel", None, reason)
        return UploadPlan("as_is", "remove_background", None, "")
    longer = max(size)
    reasons = []
    if longer > proxy_side:
        reasons.append(f"longer side {longer} is over api.proxy_side")
    if too_big:
        reasons.append(f"{file_size} bytes is over api.max_upload_bytes")
    if orientation != 1:
        reasons.append(f"EXIF orientation {orientation}")
    if not reasons:
        return UploadPlan("as_is", "alpha_channel", None, "")
    return UploadPlan("proxy", "alpha_channel", min(longer, proxy_side), "; ".join(reasons))


def scaled_size(size: Size, side: int) -> Size:
    """``size`` scaled so its longer side is ``side``, never enlarged, each side >= 1."""
    width, height = size
    longer = max(width, height)
    if longer <= side:
        return size
    scale = side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def same_aspect(answer: Size, sent: Size) -> bool:
    """True when ``answer`` is ``sent`` at some scale, to within a pixel of the answer.

    An answer made by scaling ``sent`` by any factor k and rounding each side
    satisfies ``|aw*sh - ah*sw| <= (sw + sh) / 2``; a pixel of error on each
    side is allowed, hence ``sw + sh``. The test is in the answer's own pixels,
    so it is as strict for a 4096-pixel matte as for a 256-pixel one.
    """
    (aw, ah), (sw, sh) = answer, sent
    if min(aw, ah, sw, sh) < 1:
        return False
    return abs(aw * sh - ah * sw) <= sw + sh


def matte_scale_fits(answer: Size, sent: Size) -> bool:
    """True when a matte of size ``answer`` is within the scales usable for ``sent`` (SPEC §6).

    At most :data:`MATTE_MAX_SCALE` times the pixels of what was sent (a larger
    one buys nothing and costs its decode), and a longer side of at least
    1/:data:`MATTE_MAX_SCALE` of the one sent (a smaller one is no matte at all:
    a 1 x 1 answer has the shape of anything within a pixel).
    """
    (aw, ah), (sw, sh) = answer, sent
    fewer_pixels = aw * ah <= MATTE_MAX_SCALE * sw * sh
    return fewer_pixels and MATTE_MAX_SCALE * max(aw, ah) >= max(sw, sh)


def displayed_size(size: Size, orientation: int) -> Size:
    """The size a viewer shows after applying the EXIF ``orientation``."""
    width, height = size
    return (height, width) if orientation in ROTATING_ORIENTATIONS else size


def rotated_by_server(answer: Size, stored: Size, orientation: int) -> bool:
    """True when an answer has the input's size after its EXIF rotation and not before.

    Only orientations 5-8 on a non-square image can be told apart by size;
    for any other input the answer is taken as lined up with the stored pixels.
    """
    turned = displayed_size(stored, orientation)
    return turned != stored and same_aspect(answer, turned) and not same_aspect(answer, stored)
