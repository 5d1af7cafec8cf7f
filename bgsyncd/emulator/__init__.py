"""A local WithoutBG-compatible API server: ``bgsyncd emulator``, tests and the demo.

It serves the whole contract of ``reference/withoutbg-api.md`` on loopback with
the standard library's threading HTTP server: the five endpoints, the
``X-API-Key`` check, a per-key sliding-window rate limit, credits and their
expiry, the size limit, content sniffing, and a real cut-out. Checks run in
this order: key (401) -> rate limit (429) -> expiry (403) -> credits (402) ->
size (413) -> media (415) -> injected faults (latency, 500, dropped
connection) -> processing. Every error body is ``{"error": "..."}``. With
``bandwidth`` set, request bodies arrive no faster than that many bytes a
second, as through a slow uplink.

Like the live service it also accepts what the vendor's own clients send (the
JSON field ``image_base64``, the multipart field ``file``) and answers base64
results under both names. ``/_emulator/state`` (GET, or POST a JSON object of
settings) and ``/_emulator/requests`` are a control surface for tests and the
demo: no key, no rate limit, not recorded. The key is never logged.

Modules, each importing only those before it:

- ``account``: the account and its rules (``Account``, ``Refusal``, ``RecordedRequest``);
- ``bodies``: reading request bodies, paced; multipart and base64 JSON images;
- ``matte``: decoding and the local cut-out;
- ``handler``: the HTTP server and request handler;
- ``service``: ``Emulator``, the account bound to its server;
- ``cli``: ``bgsyncd emulator``.
"""

from __future__ import annotations

from bgsyncd.emulator.account import SETTINGS, Account, RecordedRequest, Refusal
from bgsyncd.emulator.bodies import parse_multipart
from bgsyncd.emulator.cli import main
from bgsyncd.emulator.handler import CREDIT_PATH, IMAGE_ROUTES
from bgsyncd.emulator.service import Emulator

__all__ = [
    "CREDIT_PATH", "IMAGE_ROUTES", "SETTINGS", "Account", "Emulator", "RecordedRequest",
    "Refusal", "main", "parse_multipart",
]  # fmt: skip
