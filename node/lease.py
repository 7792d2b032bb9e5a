"""The job lease: a heartbeat thread keeps a claimed job's lease alive while it renders.

    with job_lease(queue, claim, timeout_s) as lease:
        renderer.render(job, out, should_stop=lambda: lease.lost)

The lease lives in the job record (owner, expiry, fencing token). The heartbeat renews it every
third of JOB_LOCK_TIMEOUT. `lease.lost` turns true when Redis refuses a renewal (another node
took the job over: our token is stale) or when no renewal has been confirmed for a whole lease
by this process's own clock (Redis unreachable, or this process was paused): from then on
another node may hold the job, so the render stops at the next batch boundary and its work is
discarded. Losing the lease locally is advisory; the fenced Lua writes are what make it safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator

from node.errors import BrokerError
from node.queue import Claim, Fenced, RedisQueue

log = logging.getLogger(__name__)

#: Renewals per lease: the heartbeat has two more chances if one renewal is slow or fails.
RENEWALS_PER_LEASE = 3


class JobLease:
    def __init__(self, queue: RedisQueue, claim: Claim, timeout_s: float, *,
                 clock: Callable[[], float] = time.monotonic):
        self.queue, self.claim, self.timeout_s, self._clock = queue, claim, timeout_s, clock
        # seconds (monotonic): the lease is known to be ours until then; it ran from the claim
        self._valid_until = claim.claimed_at + timeout_s
        self._lost_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{claim.video_id}", daemon=True)

    @property
    def lost(self) -> bool:
        if self._lost_reason is None and self._clock() > self._valid_until:
            self.mark_lost("no renewal confirmed within the lease (Redis unreachable or process paused)")
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason if self.lost else None

    def mark_lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            log.warning("lease of %s (token %d) lost: %s", self.claim.video_id, self.claim.token, reason)

    def renew(self) -> bool:
        """One renewal now; False when the lease is lost."""
        sent = self._clock()
        try:
            fenced = self.queue.heartbeat(self.claim, extend=True)
        except BrokerError as e:  # unknown outcome: the local deadline decides
            log.warning("lease renewal of %s failed: %s", self.claim.video_id, e.message)
            return not self.lost
        if fenced is Fenced.replayed:  # raced our own final write: the job is done, stop renewing
            self._stop.set()
            return True
        if fenced is Fenced.refused:
            self.mark_lost(f"token {self.claim.token} was superseded by another claim")
            return False
        self._valid_until = max(self._valid_until, sent + self.timeout_s)
        return not self.lost

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self.queue.settings.redis_socket_timeout_s + 1)

    def _beat(self) -> None:
        interval = self.timeout_s / RENEWALS_PER_LEASE
        while not self._stop.wait(interval):
            if not self.renew():
                return


@contextlib.contextmanager
def job_lease(queue: RedisQueue, claim: Claim, timeout_s: float | None = None) -> Iterator[JobLease]:
    """Keep `claim`'s lease alive (renewed by a heartbeat thread) for the duration of the block."""
    lease = JobLease(queue, claim, timeout_s if timeout_s is not None else queue.settings.job_lock_timeout)
    lease.start()
    try:
        yield lease
    finally:
        lease.stop()
