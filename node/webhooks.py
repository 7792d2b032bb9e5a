"""Job webhooks: POST the final status (and throttled progress) to a job's `webhook_url`.

The body is JSON; with WEBHOOK_SECRET set, the `X-Lipsync-Signature` header carries
`sha256=<hex HMAC-SHA256 of the exact body bytes>`, so a receiver recomputes it over what it
read before parsing. The body carries `event`, `video_id` and `created_at`, so a receiver can
drop replays. Deliveries run on one background thread: `send` never blocks the worker; 5xx,
429 and network errors are retried with `backoff_delay` (Retry-After honoured) up to
WEBHOOK_MAX_ATTEMPTS, other 4xx are dropped. Delivery is at most once per node: a node that dies
between committing a job and posting its webhook does not post it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import httpx
from pydantic import SecretStr

from node.backoff import retry_after_delay
from node.errors import InvalidInput
from node.input_guard import Allowlist, check_url, pinned, url_for_logs

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lipsync-Signature"
EVENT_HEADER = "X-Lipsync-Event"
#: seconds; progress events of one job are never closer together than this.
MIN_PROGRESS_INTERVAL_S = 1.0
#: seconds; no webhook retry waits longer.
RETRY_CAP_S = 60.0
#: deliveries waiting at most; past this new events are dropped (and logged), never blocking.
MAX_QUEUED = 10_000


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does (used by the tests): constant-time compare over the raw body."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


@dataclass
class _Delivery:
    url: str
    event: str
    body: bytes
    attempt: int = 0


class WebhookSender:
    def __init__(self, secret: SecretStr | None, *, timeout_s: float = 5.0, max_attempts: int = 5,
                 base_delay_s: float = 1.0, transport: httpx.BaseTransport | None = None,
                 rand: Callable[[], float] = random.random, allowlist: Allowlist | None = None):
        """`allowlist` (URL_ALLOWLIST): the private hosts and networks webhooks may reach."""
        self._secret = secret.get_secret_value().encode() if secret else None
        self._allowlist = allowlist or Allowlist()
        self._max_attempts, self._base_delay_s, self._rand = max_attempts, base_delay_s, rand
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport,
                                    follow_redirects=False)
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._in_flight = 0
        self.delivered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def send(self, url: str, event: str, payload: dict) -> bool:
        """Queue one event for `url`; False when it was dropped (sender closed or queue full)."""
        body = json.dumps({"event": event, **payload, "created_at": round(time.time(), 3)},
                          ensure_ascii=False, default=str).encode()
        with self._cond:
            if self._closing or len(self._heap) >= MAX_QUEUED:
                self.dropped += 1
                log.warning("webhook %s to %s dropped: sender %s", event, url_for_logs(url),
                            "closed" if self._closing else "queue full")
                return False
            heapq.heappush(self._heap, (time.monotonic(), next(self._seq), _Delivery(url, event, body)))
            self._cond.notify()
        return True

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued for up to timeout_s, then stop; returns events left undelivered."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify()
            while (self._heap or self._in_flight) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            left = len(self._heap) + self._in_flight
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        self._client.close()
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing and not self._heap:
                        return
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        _, _, delivery = heapq.heappop(self._heap)
                        self._in_flight += 1
                        break
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout=wait)
            try:
                retry_in = self._post(delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    if retry_in is not None and self._closing and retry_in > 1.0:
                        self.dropped += 1  # shutting down: no long waits for a slow receiver
                    elif retry_in is not None:
                        heapq.heappush(self._heap, (time.monotonic() + retry_in, next(self._seq), delivery))
                    self._cond.notify_all()

    def _post(self, d: _Delivery) -> float | None:
        """One POST; seconds until the retry, or None when done (delivered or given up)."""
        d.attempt += 1
        headers = {"Content-Type": "application/json", EVENT_HEADER: d.event}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, d.body)
        retry_after = None
        try:
            # Checked before every try and sent to the checked address: a name that resolves to a
            # private address now (DNS rebinding since the submit) is never posted to.
            address = check_url(d.url, self._allowlist)
        except InvalidInput as e:
            log.warning("webhook %s to %s dropped: %s", d.event, url_for_logs(d.url), e.code)
            self.dropped += 1
            return None
        url, host_headers, extensions = pinned(d.url, address)
        try:
            response = self._client.post(url, content=d.body, headers=headers | host_headers, extensions=extensions)
            if response.is_success:
                self.delivered += 1
                return None
            reason = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                log.warning("webhook %s to %s rejected: %s; not retried", d.event, url_for_logs(d.url), reason)
                self.dropped += 1
                return None
            retry_after = response.headers.get("Retry-After")
        except httpx.HTTPError as e:
            reason = type(e).__name__
        if d.attempt >= self._max_attempts:
            log.warning("webhook %s to %s failed %d times (%s); dropped", d.event, url_for_logs(d.url), d.attempt, reason)
            self.dropped += 1
            return None
        delay = retry_after_delay(retry_after, d.attempt, base_s=self._base_delay_s, cap_s=RETRY_CAP_S,
                                  rand=self._rand)
        log.info("webhook %s to %s: %s; retry %d in %.2fs", d.event, url_for_logs(d.url), reason, d.attempt, delay)
        return delay
