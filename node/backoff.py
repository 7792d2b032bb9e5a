"""The one backoff function: exponential with full jitter and a cap.

Used by job retries (the delayed-retry set), provider HTTP retries and polling, and idle polls,
so every wait in the node grows the same way. Pure: pass `rand` to make it deterministic.
"""

from __future__ import annotations

import random
from typing import Callable

#: seconds; the first retry waits up to this long.
DEFAULT_BASE_S = 1.0
#: seconds; no wait is ever longer.
DEFAULT_CAP_S = 300.0


def backoff_delay(attempt: int, *, base_s: float = DEFAULT_BASE_S, cap_s: float = DEFAULT_CAP_S,
                  jitter: bool = True, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Without jitter: base * 2**(attempt-1), capped. With jitter (the default): uniform in
    [half of that, all of it], so a fleet retrying together spreads out but never retries at once.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 62))
    return ceiling * (0.5 + 0.5 * rand()) if jitter else ceiling


def retry_after_delay(header: str | None, attempt: int, **kwargs) -> float:
    """Honour an HTTP `Retry-After` (seconds form) when given, else `backoff_delay`."""
    if header:
        try:
            return min(max(float(header), 0.0), kwargs.get("cap_s", DEFAULT_CAP_S))
        except ValueError:
            pass  # the HTTP-date form is rare from APIs; fall back to our own schedule
    return backoff_delay(attempt, **kwargs)
