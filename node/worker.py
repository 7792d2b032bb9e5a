"""The worker loop: claim -> render -> commit (ack) | retry | DLQ, and the drain.

One process keeps one renderer (models stay loaded) and runs `concurrency` slots, each a thread
that claims one job at a time. The render function is injected (`renderer_render(Renderer)` in
production; the queue benchmark injects a no-op), so the loop knows nothing of engines.

Drain: `drain()` (first SIGTERM/SIGINT) stops claiming and lets running jobs finish;
`stop_now()` (second signal, or SHUTDOWN_TIMEOUT) makes `should_stop()` true, so the render
raises Cancelled at its next batch boundary and the job is released at once: back in the queue,
the attempt not counted. Outputs are rendered to OUTPUT_DIR/{video_id}/{token}.mp4 (the encoder
writes a hidden partial file and renames it), published to the node's store (kept there, or
uploaded to S3: node/storage.py), and only a fenced commit makes one the result.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from node import fleet_stats
from node.backoff import backoff_delay
from node.config import Settings
from node.entries import decode_entry
from node.errors import BrokerError, Cancelled, InvalidInput
from node.job import Job
from node.lease import JobLease, job_lease
from node.logs import debug_enabled, job_context
from node.node_state import NodeStatus, is_device_fault
from node.queue import Claim, Entry, Fenced, RedisQueue
from node.retry import JobError, decide_retry
from node.storage import OutputStore, build_store
from node.webhooks import MIN_PROGRESS_INTERVAL_S, WebhookSender

log = logging.getLogger(__name__)

#: seconds; how often the housekeeping thread moves due retries back onto the stream.
PROMOTE_INTERVAL_S = 0.5
#: seconds; how often a node asks for the cleanup lock (the lock itself spaces runs out).
CLEANUP_CHECK_S = 60.0
#: seconds between two computations of the fleet's backlog (by whichever node takes the lock).
BACKLOG_PUBLISH_S = 10.0
#: seconds; at least this long a finished job keeps retrying its final write while Redis is away.
FINISH_RETRY_S = 30.0

Progress = Callable[[int, int], None]


class RenderOutcome(Protocol):
    status: str  # succeeded | failed
    error: dict | None

    def as_dict(self) -> dict: ...


#: (job, output path, progress(done, total), should_stop()) -> outcome; raises InvalidInput,
#: Cancelled (stopped at a batch boundary) or anything else (a transient failure).
RenderFn = Callable[[Job, Path, Progress, Callable[[], bool]], RenderOutcome]


def renderer_render(renderer) -> RenderFn:
    """The production render function: a long-lived `node.pipeline.Renderer`, behind the guard
    on what a queued job's local paths may name (node/input_guard.py)."""
    from node.input_guard import guard_queued_job

    def render(job: Job, output: Path, progress: Progress, should_stop: Callable[[], bool]) -> RenderOutcome:
        guard_queued_job(job, renderer.settings)
        return renderer.render(job, output, progress=progress, should_stop=should_stop)
    return render


class WorkerHooks:
    """Observers of the loop (metrics, benchmarks); every hook is a no-op by default, and a hook
    that raises is logged, never allowed to break the loop."""

    def claimed(self, claim: Claim) -> None: ...
    def render_started(self, claim: Claim) -> None: ...
    def render_finished(self, claim: Claim, outcome: str, result: RenderOutcome | None = None) -> None: ...
    def acked(self, claim: Claim, outcome: str, fenced: Fenced | None) -> None: ...
    def dead_lettered(self, entry: Entry, code: str) -> None: ...


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, queue: RedisQueue, settings: Settings, render: RenderFn | list[RenderFn], *,
                 concurrency: int = 1,
                 node_id: str | None = None, hooks: Iterable[WorkerHooks] = (),
                 webhooks: WebhookSender | None = None, rand: Callable[[], float] = random.random,
                 housekeeping: bool = True, models_ready: bool = True, store: OutputStore | None = None):
        # One render function for every slot, or one per slot (slot i uses renders[i % n]): a node
        # with several GPUs gives each slot a Renderer of its own device.
        self.queue, self.settings = queue, settings
        self.store = store or build_store(settings)  # where committed outputs go (STORAGE_TYPE)
        self._renders = list(render) if isinstance(render, (list, tuple)) else [render]
        self._slot = threading.local()
        self.concurrency = max(1, concurrency)
        self.node_id = node_id or settings.node_id or default_node_id()
        self.hooks, self.webhooks, self._rand = list(hooks), webhooks, rand
        self._draining = threading.Event()
        self._stopping = threading.Event()
        # What /healthz and /readyz report; `models_ready=False` (the worker command) stays
        # STARTING until its warm-up calls `status.models_loaded()`.
        self.status = NodeStatus(self.concurrency, stall_timeout_s=settings.loop_stall_timeout_s,
                                 render_stall_timeout_s=settings.render_stall_timeout_s)
        if models_ready:
            self.status.models_loaded()
        # consumer names: unique per process even when two processes are given one NODE_ID, so
        # a lease can never be mistaken for another process's
        run = secrets.token_hex(3)
        self._threads = [threading.Thread(target=self._slot_loop,
                                          args=(f"{self.node_id}/{i}#{run}", self._renders[i % len(self._renders)]),
                                          name=f"slot-{i}", daemon=True) for i in range(self.concurrency)]
        if housekeeping:
            self._threads.append(threading.Thread(target=self._housekeeping_loop, name="housekeeping",
                                                  daemon=True))

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "Worker":
        log.info("node %s: %d slot(s), lease %.1fs", self.node_id, self.concurrency, self.settings.job_lock_timeout)
        for t in self._threads:
            t.start()
        return self

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def drain(self) -> None:
        """Stop claiming; running jobs finish."""
        if not self._draining.is_set():
            log.info("draining: no new claims; running jobs finish")
        self.status.drain()
        self._draining.set()

    def stop_now(self) -> None:
        """Running jobs stop at their next batch boundary and are released to the queue."""
        if not self._stopping.is_set():
            log.info("stopping: running jobs stop at the next batch boundary and are requeued")
        self._draining.set()
        self._stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for every thread; True when all have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # --- the loop ------------------------------------------------------------------------------------

    def _slot_loop(self, owner: str, render: RenderFn) -> None:
        try:
            self._claim_loop(owner, render)
        finally:
            self.status.loop_ended(owner)

    def _claim_loop(self, owner: str, render: RenderFn) -> None:
        self._slot.render = render
        failures, next_reclaim = 0, 0.0
        reclaim_every = max(0.05, self.settings.job_lock_timeout / 4)
        while not self._draining.is_set():
            self.status.tick(owner)
            try:
                entries: list[Entry] = []
                if time.monotonic() >= next_reclaim:  # holders gone silent for a whole lease
                    entries = self.queue.reclaim(owner)
                    next_reclaim = time.monotonic() + reclaim_every
                if not entries:
                    entries = self.queue.read(owner, block_ms=self.settings.queue_block_ms)
                failures = 0
            except BrokerError as e:
                failures += 1
                delay = backoff_delay(failures, base_s=0.1, cap_s=5.0, rand=self._rand)
                log.warning("queue read failed (%s); again in %.2fs", e.message, delay)
                self._draining.wait(delay)
                continue
            for entry in entries:
                self._process(entry, owner)

    def _process(self, entry: Entry, owner: str) -> None:
        """One entry, start to end; nothing raised here may end the slot."""
        try:
            try:
                job = decode_entry(entry.fields, max_payload_bytes=self.settings.queue_max_payload_bytes,
                                   max_text_chars=self.settings.max_text_chars)
            except InvalidInput as e:
                record = self.queue.dead_letter(entry, e.code, e.message)
                log.warning("malformed entry %s dead-lettered as %s: %s", entry.entry_id, record, e)
                self._emit("dead_lettered", entry, e.code)
                return
            if self._draining.is_set():  # read while the drain began: hand it straight back
                self.queue.unread(entry, job.video_id)
                return
            outcome = self.queue.claim(entry, job, owner=owner, node_id=self.node_id)
            if outcome.kind == "conflict":
                self.queue.dead_letter(entry, "idempotency_conflict",
                                       f"job {job.video_id!r} exists with a different payload")
                self._emit("dead_lettered", entry, "idempotency_conflict")
            elif outcome.kind == "exhausted":
                log.warning("job %s failed: its holders went silent on every attempt", job.video_id)
                self._final_webhook(job, "failed")
            elif outcome.claim is not None:
                self.status.job_started(owner)
                try:
                    self._run(outcome.claim)
                finally:
                    self.status.job_ended(owner)
        except BrokerError as e:  # the entry stays pending; XAUTOCLAIM brings it back
            log.warning("entry %s left pending: %s", entry.entry_id, e.message)
            self._draining.wait(backoff_delay(1, base_s=0.2, cap_s=1.0, rand=self._rand))
        except Exception as e:  # a bug here must not take the node down
            log.error("entry %s: unexpected %s: %s", entry.entry_id, type(e).__name__, e, exc_info=debug_enabled())

    def _run(self, claim: Claim) -> None:
        s = self.settings
        self._emit("claimed", claim)
        output = s.output_dir / claim.video_id / f"{claim.token}.mp4"
        with job_context(claim.video_id), job_lease(self.queue, claim) as lease:
            log.info("claimed (token %d, attempt %d)", claim.token, claim.attempts)
            should_stop = lambda: self._stopping.is_set() or lease.lost  # noqa: E731
            error, cancelled, result, record = None, False, None, None
            self._emit("render_started", claim)
            try:
                result = self._slot.render(claim.job, output, _ProgressReporter(self, claim, lease), should_stop)
                if result.status != "succeeded":
                    err = result.error or {}
                    error = JobError(err.get("code", "render_failed"), err.get("message", "render failed"), True)
            except Cancelled:
                cancelled = True
            except Exception as e:
                error = JobError.of(e)
                if not isinstance(e, InvalidInput):
                    log.warning("render raised %s", type(e).__name__, exc_info=debug_enabled())
                if is_device_fault(e):  # the GPU context is gone: no job can render here again
                    log.error("DEFUNCT: %s: %s; draining, the job goes to another node", type(e).__name__, e)
                    self.status.mark_defunct(f"{type(e).__name__}: {e}"[:300])
                    self.drain()
            published = None
            if not cancelled and error is None:
                try:  # the output where the fleet will find it (node/storage.py), before the commit
                    t0 = time.perf_counter()
                    published = self.store.publish(output, claim.video_id, claim.token)
                    if isinstance(getattr(result, "timings_s", None), dict):
                        result.timings_s["upload"] = round(time.perf_counter() - t0, 3)
                except Exception as e:
                    error = JobError.of(e)
                    log.warning("output not stored: %s", e)
            outcome = "released" if cancelled else "succeeded" if error is None else "failed"
            self._emit("render_finished", claim, outcome, result)

            if cancelled:
                why = lease.lost_reason or "the node is shutting down"
                fenced = self._write(claim, "released", error={"code": "lease_lost" if lease.lost else "cancelled",
                                                               "message": why, "retryable": True})
                log.info("released at a batch boundary: %s", why)
            elif error is None:
                record = result.as_dict() | {"output": published, "token": claim.token, "node": self.node_id}
                fenced = self._write(claim, "succeeded", result=record,
                                     summary=fleet_stats.result_summary(self.node_id, result))
                if fenced is Fenced.refused:  # another node holds the job: this output is nobody's
                    self._discard(published)
                    log.warning("commit refused: token %d was superseded; output discarded", claim.token)
                elif fenced is not None:
                    log.info("committed %s", published)
            else:
                decision = decide_retry(error, claim.attempts, s.max_job_attempts, base_s=s.retry_base_delay_s,
                                        cap_s=s.retry_max_delay_s, rand=self._rand)
                outcome = decision.outcome
                fenced = self._write(claim, outcome, error=error.as_dict(), delay_s=decision.delay_s,
                                     summary=fleet_stats.result_summary(self.node_id, result))
                log.warning("attempt %d failed: %s: %s -> %s%s", claim.attempts, error.code, error.message, outcome,
                            f" in {decision.delay_s:.2f}s" if outcome == "retry" else "")
        self._emit("acked", claim, outcome, fenced)
        if fenced in (Fenced.written, Fenced.replayed) and outcome in ("succeeded", "failed", "dead"):
            self._final_webhook(claim.job, outcome, result=record,
                                error=None if error is None else error.as_dict())

    def _discard(self, output: str) -> None:
        try:
            self.store.discard(output)
        except Exception as e:  # cleanup removes it later
            log.warning("refused output %s not removed: %s", output, e)

    def _write(self, claim: Claim, outcome: str, **kwargs: Any) -> Fenced | None:
        """finish.lua, sent again while Redis is unreachable (it is idempotent per token);
        None when its outcome is still unknown at the deadline (the lease then expires and
        another node redoes the job, whose commit fences ours off)."""
        deadline = time.monotonic() + max(FINISH_RETRY_S, 2 * self.settings.job_lock_timeout)
        failures = 0
        while True:
            try:
                return self.queue.finish(claim, outcome, **kwargs)
            except BrokerError as e:
                failures += 1
                if time.monotonic() >= deadline:
                    log.error("%s of token %d not written: %s", outcome, claim.token, e.message)
                    return None
                time.sleep(backoff_delay(failures, base_s=0.05, cap_s=2.0, rand=self._rand))

    # --- housekeeping ------------------------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        """Due retries back to their lanes; this node's slots counted live; the fleet's backlog
        published (by one node at a time); cleanup when this node wins its lock."""
        from node.cleanup import run_scheduled_cleanup

        next_cleanup = time.monotonic() + min(CLEANUP_CHECK_S, self.settings.job_lock_timeout)
        next_renew = 0.0
        while not self._draining.wait(PROMOTE_INTERVAL_S):
            self.status.tick("housekeeping")
            try:
                self.queue.promote_due()
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + fleet_stats.NODE_TTL_S / 3
                    fleet_stats.renew_node(self.queue, self.node_id, self.concurrency)
                    if self.queue.try_lock("backlog", self.node_id, BACKLOG_PUBLISH_S):
                        fleet_stats.backlog(self.queue)
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + CLEANUP_CHECK_S
                    run_scheduled_cleanup(self.queue, self.settings, self.node_id)
            except BrokerError as e:
                log.warning("housekeeping: %s", e.message)
            except Exception as e:
                log.error("housekeeping: unexpected %s: %s", type(e).__name__, e, exc_info=debug_enabled())
        try:  # a drained node's slots stop counting at once
            fleet_stats.forget_node(self.queue, self.node_id)
        except BrokerError:
            pass
        self.status.loop_ended("housekeeping")

    # --- observers -----------------------------------------------------------------------------------

    def _emit(self, hook: str, *args: Any) -> None:
        for h in self.hooks:
            try:
                getattr(h, hook)(*args)
            except Exception as e:
                log.error("hook %s.%s failed: %s", type(h).__name__, hook, e, exc_info=debug_enabled())

    def _final_webhook(self, job: Job, state: str, *, result: dict | None = None, error: dict | None = None) -> None:
        if self.webhooks is None or not job.webhook_url:
            return
        payload = {"video_id": job.video_id, "state": state}
        if result is not None:
            payload["result"] = result
        if error is not None:
            payload["error"] = error
        self.webhooks.send(job.webhook_url, f"job.{state}", payload)


class _ProgressReporter:
    """The render's progress callback: fenced progress writes (frames, fps, ETA) every
    PROGRESS_INTERVAL_S, progress webhooks at most once a second. A refused write means the
    lease is lost, so the render stops at this very batch boundary."""

    def __init__(self, worker: Worker, claim: Claim, lease: JobLease):
        self.worker, self.claim, self.lease = worker, claim, lease
        self.started = time.monotonic()
        self.last_write = self.last_hook = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        self.worker.status.tick(self.claim.owner)  # a rendering slot is alive batch by batch
        now = time.monotonic()
        interval = self.worker.settings.progress_interval_s
        if now - self.last_write < interval and done < total:
            return
        self.last_write = now
        fps = done / max(now - self.started, 1e-6)
        progress = {"done": done, "total": total, "fps": round(fps, 2),
                    "eta_s": round((total - done) / fps, 2) if fps > 0 else None}
        try:
            if self.worker.queue.heartbeat(self.claim, extend=False, progress=progress) is Fenced.refused:
                self.lease.mark_lost(f"progress write refused: token {self.claim.token} was superseded")
                return
        except BrokerError:
            return  # progress is best effort; the lease deadline covers an absent Redis
        url = self.claim.job.webhook_url
        if url and self.worker.webhooks and now - self.last_hook >= max(MIN_PROGRESS_INTERVAL_S, interval):
            self.last_hook = now
            self.worker.webhooks.send(url, "job.progress", {"video_id": self.claim.video_id, "state": "running",
                                                            "progress": progress})
