"""One rate limit, one credit floor and one pause for a fleet, on a real PostgreSQL (SPEC §8).

Each "host" here is its own :class:`PostgresStore` (its own connection pool and
``host_id``) on one throwaway database; threads stand for the hosts' workers.
The database is the referee: the request log it kept, the reservations it
counted, the pause reasons it holds.
"""

from __future__ import annotations

from tests.support.fleet import peak


def test_peak_sees_a_violation() -> None:
    assert peak([0.0, 1.0, 2.0, 2.5], 2.0) == 3
    assert peak([0.0, 1.0, 2.5], 2.0) == 2
