"""Prometheus metrics of a worker: its hooks observe each job, and each scrape reads the node's
state, the queue's depth and GPU memory (served on HEALTH_PORT or METRICS_PORT).

Labels are stage, strategy, provider, outcome, lane and state names only, never a job id, a URL or
a message: cardinality stays bounded and no secret can reach the output. Durations are seconds.
"""

from __future__ import annotations

import logging
import sys
import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from node.node_state import NodeState, NodeStatus
from node.queue import Claim, Entry, Fenced
from node.worker import WorkerHooks

log = logging.getLogger(__name__)

JOBS = Counter("lipsync_jobs_total", "Attempts ended, by outcome (succeeded, retry, failed, dead, released).",
               ["outcome"])
JOBS_BY_STRATEGY = Counter("lipsync_job_results_total", "Renders ended, by outcome, strategy and provider "
                           "(the lip-sync engine, or the remote provider that made the video).",
                           ["outcome", "strategy", "provider"])
REFUSED = Counter("lipsync_fenced_writes_refused_total",
                  "Final writes refused because another claim superseded this node's token.")
DEAD_LETTERED = Counter("lipsync_malformed_entries_total", "Malformed queue entries dead-lettered, by code.",
                        ["code"])
RENDER_SECONDS = Histogram("lipsync_render_seconds", "Render time per attempt (s).",
                           buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
STAGE_SECONDS = Histogram("lipsync_stage_seconds", "Time per render stage (s): tts, avatar_prep, lipsync (local "
                          "engine or remote generation), encode (time spent waiting on the encoder), sync, "
                          "upload.",
                          ["stage", "strategy", "provider"],
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
FRAMES = Counter("lipsync_frames_rendered_total", "Video frames of succeeded renders, by strategy.", ["strategy"])
SPEECH_SECONDS = Counter("lipsync_speech_seconds_total", "Seconds of video rendered (succeeded), by strategy.",
                         ["strategy"])
CLAIM_TO_START_SECONDS = Histogram("lipsync_claim_to_start_seconds", "Claim reply to render start (s).",
                                   buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
NODE_STATE = Gauge("lipsync_node_state", "1 for the node's current state (STARTING, READY, BUSY, DRAINING, "
                   "DEFUNCT), 0 for the others.", ["state"])
SLOTS = Gauge("lipsync_node_slots", "Render slots of this worker, by use (total, busy).", ["use"])
QUEUE_DEPTH = Gauge("lipsync_queue_jobs", "Jobs in the fleet's queue by where they are: queued (per lane), "
                    "delayed (waiting for a retry), running, dlq.", ["where", "lane"])
BACKLOG_SECONDS = Gauge("lipsync_backlog_seconds", "Seconds the fleet's live slots need to render the queued "
                        "speech (queued speech seconds / (live slots x one slot's speech seconds per second)); "
                        "what an autoscaler scales on.")
BACKLOG_SPEECH_SECONDS = Gauge("lipsync_backlog_speech_seconds", "Estimated speech seconds of the queued jobs.")
FLEET_SLOTS = Gauge("lipsync_fleet_live_slots", "Render slots of the fleet's live nodes.")
GPU_MEMORY = Gauge("lipsync_gpu_memory_bytes", "CUDA memory of this process, by device and kind "
                   "(allocated, reserved, total).", ["device", "kind"])

#: Stages of RenderResult.timings_s exported as STAGE_SECONDS ("total" is RENDER_SECONDS):
#: avatar_prep is the engine preparing (or reading) the avatar; upload the output to the store.
STAGES = ("tts", "avatar_prep", "lipsync", "encode", "sync", "upload")


class PrometheusHooks(WorkerHooks):
    def __init__(self):
        self._started: dict[tuple[str, int], float] = {}

    def render_started(self, claim: Claim) -> None:
        now = time.monotonic()
        self._started[(claim.video_id, claim.token)] = now
        CLAIM_TO_START_SECONDS.observe(now - claim.claimed_at)

    def render_finished(self, claim: Claim, outcome: str, result=None) -> None:
        started = self._started.pop((claim.video_id, claim.token), None)
        if started is not None:
            RENDER_SECONDS.observe(time.monotonic() - started)
        if result is not None and hasattr(result, "timings_s"):
            observe_result(result)

    def acked(self, claim: Claim, outcome: str, fenced: Fenced | None) -> None:
        if fenced is Fenced.refused:
            REFUSED.inc()
        else:
            JOBS.labels(outcome).inc()

    def dead_lettered(self, entry: Entry, code: str) -> None:
        DEAD_LETTERED.labels(code).inc()


def observe_result(result) -> None:
    """One node.pipeline.RenderResult into the per-stage, per-strategy metrics."""
    strategy = result.strategy or "none"
    providers = result.providers or {}
    made_by = providers.get("lipsync") or providers.get("video") or "none"
    JOBS_BY_STRATEGY.labels(result.status, strategy, made_by).inc()
    for stage in STAGES:
        seconds = (result.timings_s or {}).get(stage)
        if seconds is not None:
            provider = providers.get("tts", "none") if stage == "tts" else made_by
            STAGE_SECONDS.labels(stage, strategy, provider).observe(seconds)
    if result.status == "succeeded" and result.duration_s:
        SPEECH_SECONDS.labels(strategy).inc(result.duration_s)
        FRAMES.labels(strategy).inc((result.extra or {}).get("frames", 0))


def render_metrics(status: NodeStatus | None = None, queue=None) -> tuple[bytes, str]:
    """The Prometheus text of this process, the gauges read at this moment."""
    if status is not None:
        current = status.state()
        for state in NodeState:
            NODE_STATE.labels(state.value).set(1 if state is current else 0)
        SLOTS.labels("total").set(status.slots)
        SLOTS.labels("busy").set(status.busy)
    if queue is not None:
        from node.fleet_stats import published_backlog

        try:
            for (where, lane), n in queue.depths().items():
                QUEUE_DEPTH.labels(where, lane).set(n)
            backlog = published_backlog(queue)  # computed by one node every few seconds, not per scrape
            if backlog:
                BACKLOG_SECONDS.set(backlog["backlog_seconds"])
                BACKLOG_SPEECH_SECONDS.set(backlog["queued_speech_s"])
                FLEET_SLOTS.set(backlog["live_slots"])
        except Exception as e:  # noqa: BLE001 - a scrape reports what it can; readiness reports Redis
            log.debug("queue depth not read: %s", e)
    _gpu_memory()
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _gpu_memory() -> None:
    torch = sys.modules.get("torch")  # only where the models loaded it: a scrape never imports torch
    if torch is None or not torch.cuda.is_available():
        return
    for i in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(f"cuda:{i}", "allocated").set(torch.cuda.memory_allocated(i))
        GPU_MEMORY.labels(f"cuda:{i}", "reserved").set(torch.cuda.memory_reserved(i))
        GPU_MEMORY.labels(f"cuda:{i}", "total").set(torch.cuda.get_device_properties(i).total_memory)
