"""One provider's HTTP boundary: the client, its limits, its circuit breaker.

    ApiKey          a key whose repr/str is ******** (only `reveal()` gives the value)
    ProviderLimits  explicit httpx.Timeout, whole-call deadline, polling, concurrency, circuit
    CircuitBreaker  opens after N consecutive provider failures for a cool-down
    ProviderHttp    request (retried by `_retry`), JSON, download to our storage, a concurrency
                    slot, and `guard()` that feeds the breaker and the metrics

Auth headers are added per request by an `httpx.Auth`, never set as client defaults, and a
separate client without auth downloads outputs: a signed CDN URL never sees our key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from providers import metrics
from providers._retry import (AttemptFailed, CallLog, Deadline, Failure, FailureKind, RetryPolicy,
                              call_with_retry, classify_status, classify_transport_error)
from node.errors import Cancelled, ProviderError

log = logging.getLogger(__name__)

MASK = "********"


class ApiKey:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey('{MASK}')"

    __str__ = __repr__

    @classmethod
    def from_secret(cls, secret) -> "ApiKey | None":
        """From a pydantic SecretStr (or None / empty: not configured)."""
        value = secret.get_secret_value() if secret is not None else ""
        return cls(value) if value else None


class HeaderAuth(httpx.Auth):
    """Adds `header: value` to every request; the value is built from ApiKeys at send time."""

    def __init__(self, header: str, value: Callable[[], str]):
        self._header, self._value = header, value

    def auth_flow(self, request: httpx.Request):
        request.headers[self._header] = self._value()
        yield request

    def __repr__(self) -> str:
        return f"HeaderAuth({self._header!r}, {MASK})"


@dataclass(frozen=True)
class ProviderLimits:
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(30.0, connect=5.0))
    #: seconds for a whole call: TTS request, or create + polling + download of a generation.
    deadline_s: float = 900.0
    retry: RetryPolicy = RetryPolicy()
    #: seconds; polling starts at base and doubles (jittered) up to cap.
    poll_base_s: float = 5.0
    poll_cap_s: float = 30.0
    #: calls in flight at once from this process (the plan's concurrency).
    concurrency: int = 2
    #: consecutive provider failures that open the circuit, and for how long (seconds).
    circuit_failures: int = 3
    circuit_cooldown_s: float = 300.0


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open for cooldown_s -> half-open: one trial call;
    success closes it, failure opens it again. Thread-safe; per process."""

    def __init__(self, name: str, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.time):
        self.name, self.threshold, self.cooldown_s, self._clock = name, failures, cooldown_s, clock
        self._failures, self._open_until, self._trial = 0, 0.0, False
        self._lock = threading.Lock()

    def open_until(self) -> float | None:
        """Wall-clock time the circuit reopens, while it is open; None when calls may go."""
        with self._lock:
            return self._open_until if self._open_until > self._clock() else None

    def allow(self) -> bool:
        with self._lock:
            if self._open_until > self._clock():
                return False
            if self._open_until and self._trial:
                return False  # half-open: one trial at a time
            self._trial = bool(self._open_until)
            return True

    def cancel_trial(self) -> None:
        """The call allowed by `allow()` never ran (no slot): let another one be the trial."""
        with self._lock:
            self._trial = False

    def record_success(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._trial = 0, 0.0, False
        metrics.CIRCUIT_OPEN.labels(self.name).set(0)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown_s
                opened = True
            else:
                opened = False
        if opened:
            metrics.CIRCUIT_OPEN.labels(self.name).set(1)
            log.warning("%s: circuit open for %gs after %d consecutive failures",
                        self.name, self.cooldown_s, self._failures)

    def reason(self) -> str | None:
        until = self.open_until()
        if until is None:
            return None
        stamp = dt.datetime.fromtimestamp(until, dt.timezone.utc).strftime("%H:%M:%SZ")
        return f"circuit open until {stamp} after {self._failures} consecutive failures"


# (the response, its parsed JSON body or None) -> (the provider's error code, a readable message)
ErrorParser = Callable[[httpx.Response, Any], "tuple[str | None, str]"]


class ProviderHttp:
    def __init__(self, name: str, base_url: str, *, auth: httpx.Auth | None, limits: ProviderLimits,
                 parse_error: ErrorParser, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.name, self.base_url, self.limits = name, base_url.rstrip("/"), limits
        self._auth, self._parse_error, self.transport, self.sleep = auth, parse_error, transport, sleep
        self.circuit = CircuitBreaker(name, limits.circuit_failures, limits.circuit_cooldown_s)
        self._slots = threading.BoundedSemaphore(limits.concurrency)
        self._client: httpx.Client | None = None
        self._plain: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProviderHttp({self.name!r}, {self.base_url!r})"

    # Clients are made on first use, so building providers (once per Renderer) costs nothing.
    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.base_url, auth=self._auth, timeout=self.limits.timeout,
                                            transport=self.transport, follow_redirects=False)
            return self._client

    @property
    def plain(self) -> httpx.Client:
        """No auth, follows redirects: for signed output URLs and presigned uploads."""
        with self._lock:
            if self._plain is None:
                self._plain = httpx.Client(timeout=self.limits.timeout, transport=self.transport,
                                           follow_redirects=True)
            return self._plain

    def close(self) -> None:
        for c in (self._client, self._plain):
            if c is not None:
                c.close()

    # --- one call: circuit, slot, metrics ---------------------------------------------------

    @contextlib.contextmanager
    def guard(self, deadline: Deadline) -> Iterator[None]:
        """Run one provider call: refused while the circuit is open, waits for a concurrency slot
        (within the deadline), and feeds the breaker and the metrics with the outcome."""
        if not self.circuit.allow():
            metrics.PROVIDER_CALLS.labels(self.name, "circuit_open").inc()
            raise ProviderError("circuit_open", self.circuit.reason() or "circuit half-open: a trial call "
                                "is in flight", provider_fault=False)
        if not self._slots.acquire(timeout=max(deadline.remaining(), 0)):  # busy slots: not the provider's fault
            self.circuit.cancel_trial()
            raise ProviderError("concurrency_limit", f"all {self.limits.concurrency} {self.name} slots stayed "
                                "busy for the whole deadline", provider_fault=False)
        try:
            yield
        except ProviderError as e:
            if e.provider_fault:
                self.circuit.record_failure()
            else:
                self.circuit.cancel_trial()
            metrics.PROVIDER_CALLS.labels(self.name, "failed").inc()
            raise
        except Cancelled:
            # our own stop (a drain, a lost lease) between polls says nothing about the provider:
            # neither a failure nor a success, and a half-open trial goes to the next call
            self.circuit.cancel_trial()
            metrics.PROVIDER_CALLS.labels(self.name, "cancelled").inc()
            raise
        except Exception:
            self.circuit.record_failure()
            metrics.PROVIDER_CALLS.labels(self.name, "failed").inc()
            raise
        else:
            self.circuit.record_success()
            metrics.PROVIDER_CALLS.labels(self.name, "succeeded").inc()
        finally:
            self._slots.release()

    # --- requests ---------------------------------------------------------------------------

    def request(self, method: str, url: str, *, what: str, deadline: Deadline, calls: CallLog,
                create: bool = False, expect_json: bool = True, client: httpx.Client | None = None,
                **kwargs) -> tuple[httpx.Response, Any]:
        """One request, retried by `_retry` rules; returns (response, parsed JSON or None).

        A 2xx whose JSON does not parse is a transient failure: retried for a GET, and for a
        create it is an unknown outcome (the provider may have made the generation)."""
        http = client or self.client

        def attempt():
            timeout = _within(self.limits.timeout, deadline)
            try:
                response = http.request(method, url, timeout=timeout, **kwargs)
            except httpx.HTTPError as e:
                raise AttemptFailed(classify_transport_error(e)) from None
            body = _json_or_none(response)
            if response.is_success:
                if expect_json and not isinstance(body, dict):
                    raise AttemptFailed(Failure(FailureKind.transient, "malformed_response",
                                                f"{what}: the response body is not a JSON object",
                                                response.status_code))
                return response, body
            code, message = self._parse_error(response, body)
            raise AttemptFailed(classify_status(response.status_code, code, message,
                                                response.headers.get("retry-after")))

        return call_with_retry(attempt, provider=self.name, what=what, policy=self.limits.retry,
                               deadline=deadline, create=create, calls=calls, sleep=self.sleep)

    def download(self, url: str, dest: Path, *, deadline: Deadline, calls: CallLog,
                 refresh: Callable[[], str | None]) -> Path:
        """Stream `url` into `dest` (atomically). On 403/404 (an expired signed URL, or one not
        ready yet) re-query the job once for a fresh URL, then fail."""
        for round_ in (1, 2):
            try:
                return self._download_once(url, dest, deadline, calls)
            except ProviderError as e:
                if e.code not in ("http_403", "http_404") or round_ == 2:
                    raise ProviderError("output_download_failed", f"{self.name} output: {e.message}") from None
                calls.add(f"output URL answered {e.code[5:]}; re-queried the job for a fresh URL")
                fresh = refresh()
                if not fresh:
                    raise ProviderError("output_download_failed", f"{self.name} output URL expired and the "
                                        "job has no fresh one") from None
                url = fresh
        raise AssertionError("unreachable")

    def _download_once(self, url: str, dest: Path, deadline: Deadline, calls: CallLog) -> Path:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")

        def attempt():
            try:
                with self.plain.stream("GET", url, timeout=_within(self.limits.timeout, deadline)) as r:
                    if not r.is_success:
                        r.read()
                        raise AttemptFailed(classify_status(r.status_code, None, "output download refused",
                                                            r.headers.get("retry-after")))
                    with open(tmp, "wb") as f:
                        for chunk in r.iter_bytes(1 << 16):
                            f.write(chunk)
            except httpx.HTTPError as e:
                raise AttemptFailed(classify_transport_error(e)) from None
            os.replace(tmp, dest)
            return dest

        try:
            return call_with_retry(attempt, provider=self.name, what="download", policy=self.limits.retry,
                                   deadline=deadline, calls=calls, sleep=self.sleep)
        finally:
            tmp.unlink(missing_ok=True)


def _within(timeout: httpx.Timeout, deadline: Deadline) -> httpx.Timeout:
    """The configured phase timeouts, none longer than what is left of the deadline."""
    left = max(deadline.remaining(), 0.05)
    cap = lambda v: left if v is None else min(v, left)  # noqa: E731
    return httpx.Timeout(connect=cap(timeout.connect), read=cap(timeout.read), write=cap(timeout.write),
                         pool=cap(timeout.pool))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError:
        return None
