"""``bgsyncd once`` (SPEC §3) under a real pseudo-terminal: what the screen shows,
what the bar counts, what it says while it waits, and the exit status."""

from __future__ import annotations

from dataclasses import replace

from bgsyncd.service.once import EXIT_OK, EXIT_PAUSED, Snapshot, Verdict, decide
from bgsyncd.service.progress import render


def test_the_bar_fits_the_terminal_and_says_what_it_waits_for() -> None:
    line = render(3, 7, "rate limit: next request in 12 s", columns=40)
    assert line == "[##########--------------] 3/7  rate li"
    assert len(line) == 39  # a full-width line would wrap, and the redraw would tear it
    assert render(0, 0, "", columns=80) == "[------------------------] 0/0"


def test_once_decisions() -> None:
    base = Snapshot(
        open_jobs=2,
        in_flight=0,
        intake_busy=False,
        ready_in=0.0,
        rate_wait=12.2,
        paused=None,
        paused_for=0.0,
        next_check_in=600.0,
    )
    assert decide(base) == Verdict(False, waiting="rate limit: next request in 13 s")
    soon = replace(base, ready_in=30.0, rate_wait=0.0)
    assert decide(soon) == Verdict(False, waiting="waiting for a retry in 30 s")
    assert decide(replace(soon, ready_in=61.0)) == Verdict(True, EXIT_OK)
    assert decide(replace(base, open_jobs=0, ready_in=None)) == Verdict(True, EXIT_OK)
    # Claimed between the looks (the queue says in flight, the dispatcher not yet):
    # the run is not over (it once ended "1/2 files finished", exit 0).
    assert decide(replace(base, open_jobs=1, ready_in=None)) == Verdict(False)
    account = replace(base, paused="invalid_api_key")
    assert decide(account) == Verdict(True, EXIT_PAUSED, "paused: invalid_api_key")
    check_soon = replace(account, next_check_in=20.0, paused_for=10.0)
    assert decide(check_soon) == Verdict(
        False, waiting="paused: invalid_api_key; next credit check in 20 s, giving up in 50 s"
    )
    disk = replace(base, paused="output_unwritable", paused_for=59.0)
    assert not decide(disk).over
    assert decide(replace(disk, paused_for=60.0)) == Verdict(
        True, EXIT_PAUSED, "paused: output_unwritable"
    )
    assert not decide(replace(account, in_flight=1)).over  # its answer may still come
