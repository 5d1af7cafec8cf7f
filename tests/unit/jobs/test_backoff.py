"""Exponential backoff with full jitter."""

from __future__ import annotations

import pytest

from bgsyncd.jobs.backoff import compute_backoff


@pytest.mark.parametrize("attempt", range(1, 11))
def test_bounds_follow_the_exponential_until_the_cap(attempt: int) -> None:
    expected_ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
    assert compute_backoff(attempt, 2.0, 300.0, rand=lambda: 1.0) == expected_ceiling
    assert compute_backoff(attempt, 2.0, 300.0, rand=lambda: 0.0) == 0.0


def test_first_attempts_double() -> None:
    top = [compute_backoff(n, 1.0, 1000.0, rand=lambda: 1.0) for n in range(1, 6)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_cap_is_honoured() -> None:
    assert compute_backoff(8, 2.0, 60.0, rand=lambda: 1.0) == 60.0
    # A runaway attempt count neither overflows nor passes the cap.
    assert compute_backoff(10_000, 2.0, 60.0, rand=lambda: 1.0) == 60.0


def test_full_jitter_scales_by_rand() -> None:
    assert compute_backoff(3, 1.0, 100.0, rand=lambda: 0.25) == 1.0
    assert compute_backoff(3, 1.0, 100.0, rand=lambda: 0.5) == 2.0


def test_default_rand_stays_within_bounds_and_varies() -> None:
    values = [compute_backoff(4, 1.0, 100.0) for _ in range(200)]
    assert all(0.0 <= v <= 8.0 for v in values)
    assert len(set(values)) > 100


def test_attempt_starts_at_one() -> None:
    with pytest.raises(ValueError):
        compute_backoff(0, 1.0, 10.0)
