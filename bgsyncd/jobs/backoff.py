"""Exponential backoff with full jitter, as a pure function."""

from __future__ import annotations

import random
from collections.abc import Callable

# 2**64 times any sane base is far above any cap; stopping the exponent here
# keeps a runaway attempt count from overflowing a float.
_MAX_EXPONENT = 64


def compute_backoff(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry).

    Full jitter: a uniform pick in ``[0, min(cap, base * 2 ** (attempt - 1))]``,
    so many clients failing together do not retry together.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return rand() * ceiling
