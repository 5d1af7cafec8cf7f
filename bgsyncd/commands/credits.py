"""``bgsyncd credits``: one credit check from outside the daemon, paced like the daemon's.

The request is recorded in the queue database's request log before it is sent
(the database is created when missing, so a check made before the daemon ever
ran still counts against the rate limit the daemon will see). When it cannot
be recorded nothing is sent: an unrecorded request could push the account over
its limit and cost the daemon a 429.
"""

from __future__ import annotations

import json
import sys

from bgsyncd.config.loading import require_api_key
from bgsyncd.config.schema import Settings
from bgsyncd.dispatch.pacer import Pacer
from bgsyncd.errors import ApiError, BgsyncdError
from bgsyncd.service.backends import open_request_log
from bgsyncd.storage.contract import QueueError

EXIT_OK = 0
EXIT_FAILURE = 1


class NotRecorded(BgsyncdError):
    """The request could not be written to the request log; nothing was sent."""


def fetch_credits(settings: Settings) -> tuple[int, str | None]:
    """Ask the API once, paced through the persisted request log: (available, expiry ISO)."""
    from bgsyncd.api.client import Client  # httpx is slow to import; only this command needs it

    key = require_api_key(settings)
    database = settings.queue.database if settings.queue.backend == "sqlite" else "the fleet's log"
    try:
        log, close = open_request_log(settings, key)
    except QueueError as exc:
        raise NotRecorded(f"{exc}; nothing was sent") from None
    try:
        pacer = Pacer(settings.api.rate_limit, settings.api.rate_window_seconds, log)

        def gate() -> float:
            try:
                return pacer.acquire()
            except QueueError as exc:
                raise NotRecorded(
                    f"cannot record the request in {database}: {exc}; nothing was sent"
                ) from None

        with Client(settings.api.base_url, key, settings.api.timeout_seconds, gate=gate) as client:
            credits = client.available_credits()
    finally:
        close()
    expires = credits.expires_at.isoformat() if credits.expires_at else None
    return credits.available, expires


def print_credits(settings: Settings, as_json: bool) -> int:
    """``bgsyncd credits [--json]``: 0 when the API answered, 1 otherwise (one line why)."""
    try:
        available, expires = fetch_credits(settings)
    except NotRecorded as exc:
        print(f"bgsyncd: credits: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ApiError as exc:
        print(f"bgsyncd: credit check failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        print(json.dumps({"available_credits": available, "expiration_date": expires}))
    else:
        print(f"available credits: {available}")
        print(f"expires:           {expires or 'unknown'}")
    return EXIT_OK
