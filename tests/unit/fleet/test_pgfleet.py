"""The fleet's shared pieces on a real PostgreSQL: one rate limit, hosts and leases."""

from __future__ import annotations

from bgsyncd.storage.postgres.request_log import account_id


def test_the_account_is_a_hash_never_the_key() -> None:
    key = "sk-very-secret-key"
    assert key not in account_id(key) and len(account_id(key)) == 32
    assert account_id(key) != account_id(key + "x")
