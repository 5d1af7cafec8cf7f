"""Images: sniffing, guarded decoding, what is sent, proxies, mattes, outputs (Pillow lives here).

One package, one public surface (import ``from bgsyncd import imaging``):

- :mod:`~bgsyncd.imaging.codec`: the one definition of each image fact:
  :func:`sniff`, guarded :func:`decode` and :func:`inspect` under one
  decompression-bomb limit (:data:`MAX_PIXELS`), :func:`to_eight_bit`,
  :func:`rgb_and_alpha` / :func:`with_alpha`, :func:`save` (encoding with
  only the metadata given), and :func:`full_decode_slot`, the one-at-a-time
  slot for full-size decodes.
- :mod:`~bgsyncd.imaging.budget` (no Pillow): what a file's structure may
  cost beside its pixels (TIFF strips and tags, metadata chunks, a
  progressive JPEG's coefficients), read from its bytes before Pillow opens it.
- :mod:`~bgsyncd.imaging.plan` (no Pillow): :func:`plan_upload` decides what
  is sent (SPEC §5 "What is sent"); :func:`same_aspect` and
  :func:`rotated_by_server` judge an answer's size.
- :mod:`~bgsyncd.imaging.proxies`: :func:`make_proxy`, the copy that is sent.
- :mod:`~bgsyncd.imaging.cutouts`: :func:`check_matte` / :func:`check_cutout`
  on an answer, :func:`render` of a folder's outputs.
- :mod:`~bgsyncd.imaging.edges`: :func:`~bgsyncd.imaging.edges.refine`, the
  matte brought to full size along the photo's edges, edge colours cleaned
  (``edges = "refine"``; numpy lives here).
- :mod:`~bgsyncd.imaging.geometry`: a finishing's crop, margin, canvas, align
  and max_side (:func:`~bgsyncd.imaging.geometry.plan`, applied alike to the
  cut-out and the mask) and its soft shadow (SPEC §9).
- :mod:`~bgsyncd.imaging.mattes`: :func:`border_matte`, the emulator's local
  stand-in for the vendor's model; :mod:`~bgsyncd.imaging.regions` (no
  Pillow): its flood fill by runs and its grid filling.
- :mod:`~bgsyncd.imaging.samples`: the demo's sample pictures, drawn.
- :mod:`~bgsyncd.imaging.thumbs`: :func:`make_thumbnail`, the status page's
  small pictures (at most 256 pixels, a JPEG decoded at reduced scale).

Pillow is imported in this package only; everything else speaks this
package's functions and :data:`Picture`.

Geometry: pixels are kept as stored. EXIF orientation is never applied: the
proxy is made from the stored pixels, the matte lines up with them, and the
outputs carry the original's Orientation tag so viewers show them as they show
the original. A finishing with a geometry or a shadow is the exception: its
outputs are turned upright first (a canvas, ``align`` and "down" are what the
viewer sees) and carry no orientation tag. Animated GIFs, WebPs and
multi-page TIFFs give their first frame.

Memory: every full-size decode (the outputs, the proxy or :func:`inspect` of
a non-JPEG, a matte answer) happens inside :func:`full_decode_slot`, one
thread at a time; a JPEG is decoded at 1/2, 1/4 or 1/8 scale for its proxy
(``Image.draft``), so a 24-megapixel photo never needs a full decode to be
sent (a progressive one still buffers its coefficients whole: in the slot).
Beside the pixel limit, a file whose structure would cost more than the
budget of :mod:`~bgsyncd.imaging.budget` is :class:`CorruptImage` from its
header; a matte answer is judged by its header size before it is decoded.
"""

from bgsyncd.files.formats import MIME_TYPES, SNIFF_BYTES, sniff
from bgsyncd.imaging.codec import (
    MAX_PIXELS,
    CorruptImage,
    ImageInfo,
    Picture,
    UnusableResult,
    decode,
    full_decode_slot,
    inspect,
    rgb_and_alpha,
    save,
    to_eight_bit,
    with_alpha,
)
from bgsyncd.imaging.cutouts import (
    EXTENSIONS,
    Rendered,
    check_cutout,
    check_matte,
    output_extension,
    render,
    render_all,
)
from bgsyncd.imaging.heap import return_large_blocks
from bgsyncd.imaging.mattes import border_matte
from bgsyncd.imaging.plan import (
    Size,
    UploadPlan,
    displayed_size,
    plan_upload,
    rotated_by_server,
    same_aspect,
    scaled_size,
)
from bgsyncd.imaging.proxies import Proxy, make_proxy
from bgsyncd.imaging.thumbs import THUMB_SIDE, make_thumbnail

__all__ = [
    "EXTENSIONS",
    "MAX_PIXELS",
    "MIME_TYPES",
    "SNIFF_BYTES",
    "THUMB_SIDE",
    "CorruptImage",
    "ImageInfo",
    "Picture",
    "Proxy",
    "Rendered",
    "Size",
    "UnusableResult",
    "UploadPlan",
    "border_matte",
    "check_cutout",
    "check_matte",
    "decode",
    "displayed_size",
    "full_decode_slot",
    "inspect",
    "make_proxy",
    "make_thumbnail",
    "output_extension",
    "plan_upload",
    "render",
    "render_all",
    "return_large_blocks",
    "rgb_and_alpha",
    "rotated_by_server",
    "same_aspect",
    "save",
    "scaled_size",
    "sniff",
    "to_eight_bit",
    "with_alpha",
]
