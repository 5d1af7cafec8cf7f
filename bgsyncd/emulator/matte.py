"""The emulator's image answers: what the fake API says about an upload (policy only).

The pixels are :mod:`bgsyncd.imaging`'s, the daemon's own, so both agree on
every image fact: what is an image (:func:`bgsyncd.imaging.sniff`: a "BM"
text file is not a BMP, BigTIFF is a TIFF), the decompression-bomb limit
(:data:`bgsyncd.imaging.MAX_PIXELS`), 16-bit to 8-bit, and what counts as an
image's own transparency. The matte itself is
:func:`bgsyncd.imaging.border_matte`, a studio matte from the border inwards.

What stays here is what the vendor's API answers: an upload it cannot decode
is a 415 "Unsupported media type"; the cut-out endpoints answer an RGBA PNG of
the upload's size, the alpha-channel endpoints the matte alone as a grayscale
("L") PNG; the upload's own transparency is kept; no metadata of the upload
is copied into an answer; PNGs are encoded for speed, not size (the answer
travels over loopback).
"""

from __future__ import annotations

from typing import TypeAlias

from bgsyncd import imaging

Layers: TypeAlias = tuple[imaging.Picture, imaging.Picture | None]
"""An upload decoded into 8-bit RGB and its own alpha (None without one)."""


class UndecodableImage(ValueError):
    """The upload is not an image the API accepts; the message is the 415's error text."""


def decode(data: bytes) -> Layers:
    """Decode the first frame of an upload into its layers; raise UndecodableImage otherwise."""
    try:
        return imaging.rgb_and_alpha(imaging.decode(data, "upload"))
    except imaging.CorruptImage as exc:
        raise UndecodableImage(f"Unsupported media type: {exc}") from None


def cut_out(layers: Layers, *, alpha_only: bool) -> bytes:
    """The answer's PNG: the RGBA cut-out of the upload, or with ``alpha_only`` its "L" matte."""
    rgb, own_alpha = layers
    alpha = imaging.border_matte(rgb, own_alpha)
    answer = alpha if alpha_only else imaging.with_alpha(rgb, alpha)
    return imaging.save(answer, "PNG", compress_level=1)  # speed over size: a local answer
