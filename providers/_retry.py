"""The one retry and polling helper every provider client uses; no per-vendor loops.

    classify_status / classify_transport_error   an HTTP outcome -> Failure(kind, code, ...)
    call_with_retry                               one request, retried by kind under a deadline
    poll_job                                      a generation polled until terminal or deadline

Failure kinds and what they get (PROVIDERS.md section 5):

    concurrency   429 "too many concurrent requests / active job limit": the request was refused,
                  so waiting for a slot and resending is safe, even for a create; not counted as a
                  failed try
    rate, busy    429 rate limit, 429 system_busy, 503: back off with jitter, honouring
                  Retry-After; safe to resend, even a create (the provider refused it)
    transient     5xx, 408, timeouts, network errors, malformed bodies: retried for idempotent
                  requests (GET, download); for a create the outcome is unknown, so it is NOT
                  resent (the job keeps its idempotency key and resumes later)
    permanent     any other 4xx: the request itself is wrong; never retried

Every wait comes from `node.backoff` (`backoff_delay`, `retry_after_delay`); a wait that would
pass the deadline ends the call at once, so the chain falls back quickly instead of sleeping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, TypeVar

import httpx

from node.backoff import backoff_delay, retry_after_delay
from node.errors import Cancelled
from providers import metrics
from providers.base import ProviderError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Provider error codes (or message fragments) that mean "over your concurrency", by vendor:
#: ElevenLabs old and new names, Sync's "Active job limit reached".
CONCURRENCY_MARKERS = ("too_many_concurrent_requests", "concurrent_limit_exceeded", "concurrency",
                       "active job limit", "active_job_limit", "concurrent")
#: ... and "the provider is overloaded, retrying will generally succeed".
BUSY_MARKERS = ("system_busy", "server_busy", "overloaded")
#: HTTP statuses whose request may have been processed before the failure.
TRANSIENT_STATUSES = {408, 500, 502, 504}
#: 4xx statuses caused by the job's own input: these never count against the provider.
INPUT_STATUSES = {400, 413, 415, 422}


class FailureKind(str, Enum):
    concurrency = "concurrency"
    rate = "rate"
    busy = "busy"
    transient = "transient"
    permanent = "permanent"


@dataclass(frozen=True)
class Failure:
    """One try that did not succeed."""

    kind: FailureKind
    code: str  # the provider's own code when it sent one, else ours: http_503, timeout, ...
    message: str
    status: int | None = None
    retry_after: str | None = None  # the raw Retry-After header
    sent: bool = True  # False: the request provably never reached the provider (connect error)

    def label(self) -> str:
        return f"{self.status} {self.code}" if self.status else self.code


class AttemptFailed(Exception):
    """Raised by a single try inside `call_with_retry`."""

    def __init__(self, failure: Failure):
        super().__init__(failure.label())
        self.failure = failure


class CreateOutcomeUnknown(ProviderError):
    """A create call failed after it was sent: the provider may have created the generation.
    Never resent automatically; providers with idempotency keys resolve it on the job's next
    attempt, the others record OUTCOME_UNKNOWN so nothing is created twice."""


def classify_status(status: int, code: str | None, message: str,
                    retry_after: str | None = None) -> Failure:
    text = f"{code or ''} {message}".lower()
    code = code or f"http_{status}"
    if status == 429:
        if any(m in text for m in CONCURRENCY_MARKERS):
            kind = FailureKind.concurrency
        elif any(m in text for m in BUSY_MARKERS):
            kind = FailureKind.busy
        else:
            kind = FailureKind.rate
    elif status == 503:
        kind = FailureKind.busy
    elif status in TRANSIENT_STATUSES or status >= 500:
        kind = FailureKind.transient
    else:
        kind = FailureKind.permanent
    return Failure(kind, code, message[:300], status, retry_after)


def classify_transport_error(exc: httpx.HTTPError) -> Failure:
    not_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "network_error"
    # The exception text names host and port only; request headers (keys) never appear in it.
    return Failure(FailureKind.transient, code, f"{type(exc).__name__}: {exc}"[:300], sent=not not_sent)


@dataclass(frozen=True)
class RetryPolicy:
    #: tries of one request on rate/busy/transient failures (concurrency waits are not counted)
    max_attempts: int = 4
    #: seconds; first backoff step and the cap of any single wait without a longer Retry-After
    base_s: float = 1.0
    cap_s: float = 30.0


class Deadline:
    """A point in time (monotonic) a whole provider call must finish by."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self._clock = seconds, clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()


@dataclass
class CallLog:
    """The retries a call went through, summarised for the job's attempts."""

    events: list[str] = field(default_factory=list)

    def add(self, event: str) -> None:
        self.events.append(event)

    def note(self) -> str | None:
        return "; ".join(self.events) if self.events else None


def call_with_retry(attempt: Callable[[], T], *, provider: str, what: str, policy: RetryPolicy,
                    deadline: Deadline, create: bool = False, calls: CallLog | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """`attempt()` until it returns, retrying by failure kind (module docstring) under `deadline`.

    Raises ProviderError: permanent failures with retryable=False; CreateOutcomeUnknown when a
    create failed after being sent; otherwise the last failure once tries or time run out."""
    tries = waits = 0
    while True:
        try:
            return attempt()
        except AttemptFailed as e:
            failure = e.failure
        waits += 1
        if failure.kind is FailureKind.permanent:
            raise ProviderError(failure.code, f"{what}: {failure.label()}: {failure.message}", retryable=False,
                                provider_fault=failure.status not in INPUT_STATUSES)
        if create and failure.kind is FailureKind.transient and failure.sent:
            raise CreateOutcomeUnknown(failure.code, f"{what}: {failure.label()} after the request was "
                                       "sent; the outcome is unknown, so it is not re-sent")
        if failure.kind is not FailureKind.concurrency:
            tries += 1
            if tries >= policy.max_attempts:
                raise ProviderError(failure.code, f"{what}: {failure.label()} on {tries} tries: {failure.message}")
        delay = _delay(failure, waits, policy)
        left = deadline.remaining()
        if delay >= left:
            raise ProviderError(failure.code, f"{what}: {failure.label()}; the next try in {delay:.1f}s would "
                                f"pass the {deadline.seconds:g}s deadline ({max(left, 0):.1f}s left)")
        metrics.PROVIDER_RETRIES.labels(provider, failure.kind.value).inc()
        if calls is not None:
            calls.add(f"{failure.label()} ({failure.kind.value}), waited {delay:.1f}s")
        log.info("%s: %s: %s (%s); retrying in %.2fs", provider, what, failure.label(), failure.kind.value, delay)
        sleep(delay)


def _delay(failure: Failure, n: int, policy: RetryPolicy) -> float:
    """Retry-After when the provider sent one (even above our cap: it knows), else our backoff."""
    try:
        stated = float(failure.retry_after) if failure.retry_after else 0.0
    except ValueError:
        stated = 0.0
    return retry_after_delay(failure.retry_after, n, base_s=policy.base_s, cap_s=max(policy.cap_s, stated))


# --- polling a generation ----------------------------------------------------------------------

class GenerationState(str, Enum):
    """A remote generation's state, normalised from the provider's own status string."""

    running = "running"  # also every status string we do not know
    succeeded = "succeeded"
    failed = "failed"


@dataclass(frozen=True)
class GenerationStatus:
    """A provider's generation status, normalised."""

    state: GenerationState
    raw: str  # the provider's own status string
    output_url: str | None = None
    error_code: str | None = None
    error: str | None = None


def generation_state(raw: str | None, *, succeeded: set[str], failed: set[str]) -> GenerationState:
    """Unknown or missing statuses are non-terminal: providers add states ("waiting", "queued")."""
    value = (raw or "").lower()
    if value in succeeded:
        return GenerationState.succeeded
    if value in failed:
        return GenerationState.failed
    return GenerationState.running


#: seconds; a poll wait is slept in steps this long, so a drain is noticed promptly.
STOP_CHECK_S = 1.0


def poll_job(fetch: Callable[[], GenerationStatus], *, provider: str, generation_id: str, deadline: Deadline,
             base_s: float, cap_s: float, sleep: Callable[[float], None] = time.sleep,
             should_stop: Callable[[], bool] | None = None) -> GenerationStatus:
    """`fetch()` with backoff (base_s doubling to cap_s, jittered) until a terminal state.

    A retryable fetch error is one more poll later, not the end: only a permanent error or the
    deadline stops polling. On the deadline the generation id stays stored by the caller, so a
    retried job resumes this generation. `should_stop()` turning true (a drain, a lost lease)
    ends polling with Cancelled, between polls, the same way a local engine stops between batches."""
    polls, last = 0, "no status yet"
    while True:
        try:
            status = fetch()
        except ProviderError as e:
            if not e.retryable:
                raise
            last = f"last poll failed: {e.code}"
        else:
            if status.state is not GenerationState.running:
                return status
            last = f"still {status.raw or 'without a status'}"
        left = deadline.remaining()
        if left <= 0:
            raise ProviderError("generation_timeout", f"generation {generation_id} not finished within "
                                f"the {deadline.seconds:g}s deadline ({last})")
        polls += 1
        wait = min(backoff_delay(polls, base_s=base_s, cap_s=cap_s), left)
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped while polling {provider} generation {generation_id}; the job "
                                "resumes it when it runs again")
            if wait <= 0:
                break
            step = min(wait, STOP_CHECK_S)
            sleep(step)
            wait -= step
