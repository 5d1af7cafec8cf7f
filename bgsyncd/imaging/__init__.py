"""Images: sniffing, guarded decoding, what is sent, proxies, mattes, outputs (Pillow lives here).

One package, one public surface (import ``from bgsyncd import imaging``):

- :mod:`~bgsyncd.imaging.codec`: :func:`sniff`, guarded :func:`decode` and
  :func:`inspect`, :func:`to_eight_bit`, :func:`rgb_and_alpha`, and
  :func:`full_decode_slot`, the one-at-a-time slot for full-size decodes.
- :mod:`~bgsyncd.imaging.plan` (no Pillow): :func:`plan_upload` decides what
  is sent (SPEC §5 "What is sent"); :func:`same_aspect` and
  :func:`rotated_by_server` judge an answer's size.
- :mod:`~bgsyncd.imaging.proxies`: :func:`make_proxy`, the copy that is sent.
- :mod:`~bgsyncd.imaging.cutouts`: :func:`check_matte` / :func:`check_cutout`
  on an answer, :func:`render` of a folder's outputs.

Geometry: pixels are kept as stored. EXIF orientation is never applied: the
proxy is made from the stored pixels, the matte lines up with them, and the
outputs carry the original's Orientation tag so viewers show them as they show
the original. Animated GIFs, WebPs and multi-page TIFFs give their first frame.

Memory: every full-size decode (the outputs, the proxy or :func:`inspect` of
a non-JPEG) happens inside :func:`full_decode_slot`, one thread at a time; a
JPEG is decoded at 1/2, 1/4 or 1/8 scale for its proxy (``Image.draft``), so a
24-megapixel photo never needs a full decode to be sent.
"""

from bgsyncd.imaging.codec import (
    MIME_TYPES,
    SNIFF_BYTES,
    CorruptImage,
    ImageInfo,
    UnusableResult,
    decode,
    full_decode_slot,
    inspect,
    rgb_and_alpha,
    sniff,
    to_eight_bit,
)
from bgsyncd.imaging.cutouts import (
    EXTENSIONS,
    Rendered,
    check_cutout,
    check_matte,
    compose,
    encode_cutout,
    encode_mask,
    render,
)
from bgsyncd.imaging.plan import (
    Size,
    UploadPlan,
    displayed_size,
    plan_upload,
    rotated_by_server,
    same_aspect,
    scaled_size,
)
from bgsyncd.imaging.proxies import Proxy, make_proxy, shrink_to_fit

__all__ = [
    "EXTENSIONS",
    "MIME_TYPES",
    "SNIFF_BYTES",
    "CorruptImage",
    "ImageInfo",
    "Proxy",
    "Rendered",
    "Size",
    "UnusableResult",
    "UploadPlan",
    "check_cutout",
    "check_matte",
    "compose",
    "decode",
    "displayed_size",
    "encode_cutout",
    "encode_mask",
    "full_decode_slot",
    "inspect",
    "make_proxy",
    "plan_upload",
    "render",
    "rgb_and_alpha",
    "rotated_by_server",
    "same_aspect",
    "scaled_size",
    "shrink_to_fit",
    "sniff",
    "to_eight_bit",
]
