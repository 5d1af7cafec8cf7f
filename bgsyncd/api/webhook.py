"""A hook's webhook call: one signed JSON ``POST`` (SPEC §10).

Here because httpx lives in ``api/``: the hooks part hands in the URL, the
body, the event's name and id and the secret, and gets back what the answer
means. The body is signed ``X-Bgsyncd-Signature: sha256=<hex HMAC-SHA256>``
when a secret is set. A 2xx is success; a redirect is never followed (it
is a failure, its target is not called); any other status, a refused
connection, a timeout or a URL httpx cannot use is a failure. The whole call, connect to the
answer's headers, ends within ``timeout`` (the deadline sockets of
:mod:`.deadline`); the answer's body is never read. No message here quotes
the secret or the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import httpx

from bgsyncd import __version__
from bgsyncd.api.deadline import DeadlineBackend, deadline_transport


@dataclass(frozen=True)
class WebhookAnswer:
    """What a call came to: ``ok`` (a 2xx), the status if one came, a failure's detail."""

    ok: bool
    status: int | None
    detail: str = ""
    timed_out: bool = False


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Bgsyncd-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    """Posts events; one reused, thread-safe httpx client. ``close()`` when done."""

    def __init__(self) -> None:
        self._deadlines = DeadlineBackend()
        self._http = httpx.Client(
            follow_redirects=False,
            trust_env=False,  # a receiver is named in full; no proxy from the environment
            headers={"User-Agent": f"bgsyncd/{__version__} (+python-httpx)"},
            transport=deadline_transport(self._deadlines),
        )

    def post(
        self,
        url: str,
        body: bytes,
        *,
        event: str,
        event_id: str,
        secret: bytes | None,
        timeout: float,
    ) -> WebhookAnswer:
        """POST ``body`` (a JSON object) to ``url``; never raises for the network's faults."""
        headers = {
            "Content-Type": "application/json",
            "X-Bgsyncd-Event": event,
            "X-Bgsyncd-Event-Id": event_id,
        }
        if secret is not None:
            headers["X-Bgsyncd-Signature"] = signature(secret, body)
        try:
            with (
                self._deadlines.until(time.monotonic() + timeout),
                self._http.stream(
                    "POST",
                    url,
                    content=body,
                    headers=headers,
                    timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                ) as response,
            ):
                status = response.status_code
        except httpx.TimeoutException:
            return WebhookAnswer(False, None, f"no answer within {timeout:g} s", timed_out=True)
        except httpx.HTTPError as exc:
            return WebhookAnswer(False, None, f"{type(exc).__name__}: {exc}")
        except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA's UnicodeError too
            return WebhookAnswer(False, None, f"cannot call this URL: {type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return WebhookAnswer(True, status)
        if 300 <= status < 400:
            return WebhookAnswer(False, status, "a redirect (not followed)")
        return WebhookAnswer(False, status, f"HTTP {status}")

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
