"""Hooks: telling other systems when a file is done or quarantined (SPEC §10).

The event and what is recorded for it (``events``, pure), a command run
without a shell under a deadline (``commands``), and the runner that delivers
recorded hooks, at least once, beside the pipeline and never in its way
(``runner``). The webhook's HTTP call is the API part's (``api.webhook``).
"""
