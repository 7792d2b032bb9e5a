"""Fleet-wide figures kept in Redis: every finished render, live slots, and the backlog in seconds.

    {p}results     stream  one entry per finished render: node, outcome, strategy, provider, speech
                           seconds, stage timings; written by finish.lua in the step that ends
                           the attempt (capped at queue.RESULTS_MAXLEN, ~ one busy day)
    {p}nodes       zset    node_id -> ms until which its slots count as live (renewed by each
                           worker's housekeeping every NODE_TTL_S / 3)
    {p}node_slots  hash    node_id -> render slots
    {p}backlog     string  the last backlog computed by any node (JSON), for readers without
                           Prometheus

**Backlog seconds**, what an autoscaler scales on: the speech seconds queued (text jobs estimated
at CHARS_PER_SPEECH_SECOND, audio jobs at the fleet's recent mean), divided by the fleet's render
rate: live slots x the recent mean of speech seconds per render second of one slot. "How long the
fleet as it is would take to clear the queue"; with no live slot it is what one slot would take,
so a scaler at zero still sees the work.

The node registry and the published backlog are best effort (a lost write skews a statistic for
a few seconds, never a job).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from node.lanes import LANES
from node.queue import RedisQueue
from node.redis_conn import redis_errors

#: Spanish TTS at a normal rate: about 150 words a minute of about 6 characters with the space.
CHARS_PER_SPEECH_SECOND = 15.0
#: seconds of speech assumed for an audio job while the fleet has no recent figures.
DEFAULT_AUDIO_JOB_S = 20.0
#: One slot's speech seconds per render second assumed before any render finished (a warm
#: Wav2Lip render on a CPU node is about 1; GPU nodes are faster, and the figure is then measured).
DEFAULT_SLOT_SPEED = 1.0
#: seconds a node's slots count as live after its last renewal.
NODE_TTL_S = 30.0
#: seconds of recent results the render rate is measured over.
RATE_WINDOW_S = 3600.0
#: queued entries read to estimate the queued speech; past this the rest are extrapolated.
BACKLOG_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class Backlog:
    queued_jobs: int
    queued_speech_s: float
    live_slots: int
    slot_speed: float  # speech seconds per render second, one slot
    seconds: float

    def as_dict(self) -> dict:
        return {"queued_jobs": self.queued_jobs, "queued_speech_s": round(self.queued_speech_s, 1),
                "live_slots": self.live_slots, "slot_speed": round(self.slot_speed, 4),
                "backlog_seconds": round(self.seconds, 1)}


def result_summary(node_id: str, result) -> dict:
    """A finished render's line in {p}results (finish.lua writes it with the job's outcome);
    `result` is a node.pipeline.RenderResult, or None when the render raised."""
    return {"node": node_id, "strategy": getattr(result, "strategy", None) or "none", "provider": _made_by(result),
            "speech_s": getattr(result, "duration_s", None) or 0,
            "timings": json.dumps(getattr(result, "timings_s", None) or {})}


def renew_node(queue: RedisQueue, node_id: str, slots: int) -> None:
    """Count this node's slots as live for NODE_TTL_S more (housekeeping calls it)."""
    keys, now_ms = queue.keys, queue.server_time_ms()
    with redis_errors():
        pipe = queue.client.pipeline(transaction=False)
        pipe.zadd(keys.nodes, {node_id: now_ms + int(NODE_TTL_S * 1000)})
        pipe.hset(keys.node_slots, node_id, slots)
        pipe.zremrangebyscore(keys.nodes, "-inf", now_ms)
        pipe.execute()


def forget_node(queue: RedisQueue, node_id: str) -> None:
    """A node that stopped: its slots stop counting at once."""
    with redis_errors():
        queue.client.zrem(queue.keys.nodes, node_id)
        queue.client.hdel(queue.keys.node_slots, node_id)


def live_slots(queue: RedisQueue) -> int:
    with redis_errors():
        live = queue.client.zrangebyscore(queue.keys.nodes, queue.server_time_ms(), "+inf")
        counts = queue.client.hmget(queue.keys.node_slots, live) if live else []
    return sum(int(c or 0) for c in counts)


def recent_results(queue: RedisQueue, window_s: float) -> list[dict]:
    """Finished renders of the last `window_s` seconds, oldest first, as dicts."""
    since_ms = queue.server_time_ms() - int(window_s * 1000)
    with redis_errors():
        rows = queue.client.xrange(queue.keys.results, min=f"{since_ms}-0", max="+")
    out = []
    for entry_id, fields in rows:
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["at_ms"] = int(entry_id.decode().split("-")[0])
        row["speech_s"] = float(row.get("speech_s") or 0)
        row["timings"] = json.loads(row.get("timings") or "{}")
        out.append(row)
    return out


def backlog(queue: RedisQueue) -> Backlog:
    """The fleet's backlog now (see the module docstring); also stored in {p}backlog."""
    recent = [r for r in recent_results(queue, RATE_WINDOW_S) if r["outcome"] == "succeeded"]
    speech = sum(r["speech_s"] for r in recent)
    render = sum(float(r["timings"].get("total") or 0) for r in recent)
    slot_speed = speech / render if speech > 0 and render > 0 else DEFAULT_SLOT_SPEED
    audio_job_s = speech / len(recent) if recent else DEFAULT_AUDIO_JOB_S
    jobs, queued_s = _queued_speech(queue, audio_job_s)
    slots = live_slots(queue)
    seconds = queued_s / (slot_speed * max(1, slots))
    result = Backlog(jobs, queued_s, slots, slot_speed, seconds)
    with redis_errors():
        queue.client.set(queue.keys.backlog, json.dumps(result.as_dict() | {"at_ms": queue.server_time_ms()}))
    return result


def _queued_speech(queue: RedisQueue, audio_job_s: float) -> tuple[int, float]:
    """(jobs, estimated speech seconds) of the entries no slot has read yet, every lane."""
    jobs, seconds, scanned = 0, 0.0, 0
    with redis_errors():
        for lane in LANES:
            lane_jobs, rows = queue.undelivered(lane, max(0, BACKLOG_SCAN_LIMIT - scanned))
            lane_seconds = sum(estimate_speech_s(fields.get(b"payload", b""), audio_job_s) for _, fields in rows)
            if rows and lane_jobs > len(rows):  # past the scan limit: extrapolate the mean
                lane_seconds *= lane_jobs / len(rows)
            jobs, seconds, scanned = jobs + lane_jobs, seconds + lane_seconds, scanned + len(rows)
    return jobs, seconds


def estimate_speech_s(payload: bytes, audio_job_s: float) -> float:
    """Seconds of speech a queued job will have: its text at CHARS_PER_SPEECH_SECOND, or for an
    audio file the fleet's recent mean (the file is on some node's disk, not here)."""
    try:
        job = json.loads(payload)
    except ValueError:
        return 0.0  # a malformed entry renders nothing
    text = job.get("text") if isinstance(job, dict) else None
    if isinstance(text, str):
        return max(1.0, len(text) / CHARS_PER_SPEECH_SECOND)
    return audio_job_s


def published_backlog(queue: RedisQueue) -> dict | None:
    """The backlog a node last stored in {p}backlog (what scrapes and other readers use)."""
    with redis_errors():
        raw = queue.client.get(queue.keys.backlog)
    return json.loads(raw) if raw else None


def summary(queue: RedisQueue, window_s: float) -> dict:
    """`lipsync-node metrics`: the fleet over the last `window_s` seconds, from Redis alone."""
    rows = recent_results(queue, window_s)
    by_outcome = _count(r["outcome"] for r in rows)
    done = [r for r in rows if r["outcome"] == "succeeded"]
    stages = sorted({stage for r in done for stage in r["timings"]})
    return {
        "window_s": window_s,
        "renders": len(rows),
        "outcomes": by_outcome,
        "success_rate": round(by_outcome.get("succeeded", 0) / len(rows), 4) if rows else None,
        "strategies": _count(r["strategy"] for r in done),
        "providers": _count(r["provider"] for r in done),
        "per_node": _count(r["node"] for r in rows),
        "speech_s": round(sum(r["speech_s"] for r in done), 1),
        "stage_s": {stage: _percentiles([r["timings"][stage] for r in done if stage in r["timings"]])
                    for stage in stages},
        "queue": {f"{where}:{lane}": n for (where, lane), n in queue.depths().items()},
        "backlog": backlog(queue).as_dict(),
    }


def _made_by(result) -> str:
    providers = getattr(result, "providers", None) or {}
    return providers.get("lipsync") or providers.get("video") or "none"


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:  # nearest rank
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)
    return {"p50": at(0.5), "p95": at(0.95), "n": len(ordered)}
