"""Prometheus metrics of a worker, observed through its hooks (served when METRICS_PORT is set)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram, start_http_server

from node.queue import Claim, Entry, Fenced
from node.worker import WorkerHooks

JOBS = Counter("lipsync_jobs_total", "Attempts ended, by outcome (succeeded, retry, failed, dead, released).",
               ["outcome"])
REFUSED = Counter("lipsync_fenced_writes_refused_total",
                  "Final writes refused because another claim superseded this node's token.")
DEAD_LETTERED = Counter("lipsync_malformed_entries_total", "Malformed queue entries dead-lettered, by code.",
                        ["code"])
RENDER_SECONDS = Histogram("lipsync_render_seconds", "Render time per attempt (s).",
                           buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
CLAIM_TO_START_SECONDS = Histogram("lipsync_claim_to_start_seconds", "Claim reply to render start (s).",
                                   buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))


class PrometheusHooks(WorkerHooks):
    def __init__(self):
        self._started: dict[tuple[str, int], float] = {}

    def render_started(self, claim: Claim) -> None:
        now = time.monotonic()
        self._started[(claim.video_id, claim.token)] = now
        CLAIM_TO_START_SECONDS.observe(now - claim.claimed_at)

    def render_finished(self, claim: Claim, outcome: str) -> None:
        started = self._started.pop((claim.video_id, claim.token), None)
        if started is not None:
            RENDER_SECONDS.observe(time.monotonic() - started)

    def acked(self, claim: Claim, outcome: str, fenced: Fenced | None) -> None:
        if fenced is Fenced.refused:
            REFUSED.inc()
        else:
            JOBS.labels(outcome).inc()

    def dead_lettered(self, entry: Entry, code: str) -> None:
        DEAD_LETTERED.labels(code).inc()


def serve(port: int) -> None:
    start_http_server(port)
