"""What one input sends to the API, and what comes back (SPEC §5 "What is sent").

The worker's content path in three steps, each small enough to test alone:
:func:`prepare` decides and makes the upload (the file itself, or a copy of its
stored pixels), :func:`send` sends it and counts its bytes, :func:`check` judges
the answer before anything keeps it. An :class:`Answer` is what the API
returned, tagged with its cache entry kind: a matte in ``"proxy"`` mode (and
``"original"`` mode's shrink path), a cut-out in ``"original"`` mode. The
outputs are made from it and the original by :func:`bgsyncd.imaging.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from bgsyncd import imaging
from bgsyncd.api.client import Client
from bgsyncd.api.endpoints import ALPHA_CHANNEL, REMOVE_BACKGROUND
from bgsyncd.errors import ApiError, Stopped
from bgsyncd.ops.metrics import Recorder
from bgsyncd.storage import cache

ENDPOINT_NAMES = {"alpha_channel": ALPHA_CHANNEL, "remove_background": REMOVE_BACKGROUND}
"""The client method a plan names -> the endpoint's name in metrics."""

_SERVES = {
    "proxy": (cache.PROXY_MATTE,),
    "original": (cache.ORIGINAL_CUTOUT, cache.ORIGINAL_MATTE),
}


def kinds_serving(upload: str) -> tuple[str, ...]:
    """The cache entry kinds that may serve ``upload``, in the order they are tried.

    A matte is never taken for a cut-out, nor one setting's answer for the
    other's: 0.1's entries (cut-outs) serve ``"original"`` mode only.
    """
    return _SERVES[upload]


@dataclass(frozen=True)
class Answer:
    """What the API returned for some content (or the cache kept of it), and its kind."""

    data: bytes
    kind: str
    """A cache entry kind: :data:`bgsyncd.storage.cache.PROXY_MATTE`, ..."""

    @property
    def matte(self) -> bool:
        """A matte (alpha-channel answer) rather than a cut-out."""
        return self.kind.endswith(".matte")


def kept_key(sha: str, kind: str) -> str:
    """The key a charged answer is kept under in memory: content and entry kind."""
    return f"{sha}.{kind}"


@dataclass(frozen=True)
class Upload:
    """What is sent for one input, to which endpoint, and the size to check the answer by."""

    endpoint: str
    """The client method: "alpha_channel" or "remove_background"."""
    data: bytes
    size: imaging.Size
    """The pixel size of ``data``: a matte must have its shape."""
    filename: str
    reason: str
    """Why a copy was sent ("" for the file itself)."""

    @property
    def matte(self) -> bool:
        """The answer will be a matte."""
        return self.endpoint == "alpha_channel"


@dataclass(frozen=True)
class Refused:
    """The input cannot be sent: a local verdict (``too_large``, ``corrupt_image``)."""

    reason: str
    message: str


def prepare(
    data: bytes,
    info: imaging.ImageInfo,
    name: str,
    *,
    upload: str,
    proxy_side: int,
    max_upload_bytes: int,
    oversize: str,
) -> Upload | Refused:
    """Decide what is sent for the input ``data`` (file ``name``) and make it.

    ``upload``, ``proxy_side``, ``max_upload_bytes`` from ``[api]``, ``oversize``
    the folder's. A copy is made by :func:`bgsyncd.imaging.make_proxy` (a JPEG
    decoded at reduced scale; anything else in the full-decode slot).
    """
    plan = imaging.plan_upload(
        info.size,
        info.orientation,
        len(data),
        upload=upload,
        proxy_side=proxy_side,
        max_upload_bytes=max_upload_bytes,
        oversize=oversize,
    )
    if plan.action == "too_large":
        return Refused("too_large", plan.reason)
    if plan.action == "as_is":
        return Upload(plan.endpoint, data, info.size, name, "")
    try:
        proxy = imaging.make_proxy(data, side=plan.side, max_bytes=max_upload_bytes)
    except imaging.CorruptImage as exc:
        return Refused("corrupt_image", str(exc))
    except ValueError as exc:
        return Refused("too_large", f"cannot shrink below the limit: {exc}")
    # The name says what is sent: a JPEG copy of a PNG is not a ".png".
    ext = "jpg" if proxy.format == "jpeg" else "png"
    filename = f"{PurePath(name).stem or 'image'}.{ext}"
    return Upload(plan.endpoint, proxy.data, proxy.size, filename, plan.reason)


def send(client: Client, recorder: Recorder, up: Upload) -> bytes:
    """Send ``up`` and return the answer; count its bytes when a request was made.

    Raises what the client raises: :class:`~bgsyncd.errors.Stopped` (nothing
    was sent), any :class:`~bgsyncd.errors.ApiError`.
    """
    limit = client.answer_limit(matte=up.matte, pixels=up.size[0] * up.size[1])
    method = client.alpha_channel if up.matte else client.remove_background
    name = ENDPOINT_NAMES[up.endpoint]
    try:
        answer = method(up.data, filename=up.filename, max_bytes=limit)
    except Stopped:
        raise
    except ApiError:
        recorder.upload_bytes(name, len(up.data))  # a request was made, and failed
        raise
    recorder.upload_bytes(name, len(up.data))
    return answer


def check(answer: bytes, up: Upload, info: imaging.ImageInfo, upload: str) -> Answer:
    """The answer tagged with its kind, once it passed; else :class:`~imaging.UnusableResult`.

    Unusable: a matte not of the shape sent, or with over 4 times its pixels or
    under a quarter of its longer side (judged from its header, then decoded in
    the full-decode slot), a cut-out of neither the stored nor the turned shape,
    anything undecodable or over the decoding budget.
    """
    if up.matte:
        imaging.check_matte(answer, up.size)
    else:
        with imaging.full_decode_slot():  # a cut-out comes at full size
            imaging.check_cutout(answer, info)
    return Answer(answer, cache.entry_kind(upload, up.matte))
