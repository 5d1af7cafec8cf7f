"""Waiting is visible, and work that needs no request does not wait (SPEC §5, §4).

A real ``bgsyncd run`` whose rate window is full: ``status`` (and ``--json``)
and ``bgsyncd_dispatch_next_request_seconds`` say it waits for the rate limit
and how long; a cache hit and a local verdict are settled at once meanwhile.
"""

from __future__ import annotations

import math

from bgsyncd.dispatch.waiting import Waiting, decode, encode, waiting_for


def test_what_the_next_request_waits_for() -> None:
    now = 1000.0

    def w(**kw: object) -> Waiting:
        args: dict[str, object] = {
            "paused": None,
            "check_in": 600.0,
            "ready_at": now,
            "now": now,
            "rate_wait": 0.0,
            **kw,
        }
        return waiting_for(**args)  # type: ignore[arg-type]

    assert w() == Waiting()  # a request may start now
    assert w().gauge == 0.0
    assert w(ready_at=None, rate_wait=30.0) == Waiting()  # nothing to send
    assert w(rate_wait=12.5) == Waiting("rate_limit", 12.5)
    assert w(ready_at=now + 40, rate_wait=12.5) == Waiting("retry", 40.0)
    assert w(ready_at=now + 5, rate_wait=12.5) == Waiting("rate_limit", 12.5)
    # A pause a credit check lifts ends at the next check; one lifted by its own rule is unknown.
    assert w(paused="api_unreachable", check_in=30.0) == Waiting("paused", 30.0)
    assert w(paused="output_unwritable").seconds is None
    assert math.isnan(w(paused="output_unwritable").gauge)
    assert Waiting("rate_limit", 12.34).as_json() == {"reason": "rate_limit", "seconds": 12.3}
    # What the daemon publishes counts down for a `status` read later.
    text = encode(Waiting("rate_limit", 30.0), now)
    assert decode(text, now + 10.0) == Waiting("rate_limit", 20.0)
    assert decode(text, now + 99.0) == Waiting("rate_limit", 0.0)
    assert decode(None, now) == Waiting() == decode("garbage", now)
