"""The retry policy, a pure function: what happens to a job whose attempt failed.

    permanent error (invalid input, malformed entry)  -> dead: the DLQ at once
    transient error, attempts left                    -> retry after backoff_delay(attempt)
    transient error, MAX_JOB_ATTEMPTS used            -> failed: the DLQ

An error is permanent when it is `InvalidInput` (or its code is one of InvalidInput's) or says
`retryable=False`; anything unexpected counts as transient, so a node bug gets a second chance on
another node before the job is parked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from node.backoff import backoff_delay
from node.errors import InvalidInput, LipsyncError


@dataclass(frozen=True)
class JobError:
    """An attempt's error as the job record and the DLQ keep it (never a secret in `message`)."""

    code: str
    message: str
    retryable: bool

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def of(cls, exc: BaseException) -> "JobError":
        if isinstance(exc, InvalidInput):
            return cls(exc.code, exc.message, False)
        if isinstance(exc, LipsyncError):
            return cls(exc.code, exc.message, exc.retryable)
        return cls("internal_error", f"{type(exc).__name__}: {exc}"[:500], True)


@dataclass(frozen=True)
class RetryDecision:
    outcome: str  # retry | failed | dead (finish.lua's outcomes)
    delay_s: float = 0.0


def decide_retry(error: JobError, attempts: int, max_attempts: int, *, base_s: float, cap_s: float,
                 rand: Callable[[], float] = random.random) -> RetryDecision:
    """`attempts` = attempts made so far, this one included."""
    if not error.retryable:
        return RetryDecision("dead")
    if attempts >= max_attempts:
        return RetryDecision("failed")
    return RetryDecision("retry", backoff_delay(attempts, base_s=base_s, cap_s=cap_s, rand=rand))
