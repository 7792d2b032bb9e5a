"""Cleanup: old temp files, orphaned outputs, old job records, the acked part of the stream.

Scheduled every CLEANUP_INTERVAL_HOURS on whichever node wins a lock: one lock for the fleet's
Redis part, one per host for its local files (nodes on one host share TEMP_DIR and OUTPUT_DIR).
`lipsync-node cleanup [--dry-run]` runs both parts now, without the locks.

What it deletes, and what it never touches:
- TEMP_DIR entries whose newest file is older than TEMP_MAX_AGE_HOURS, except a running job's
  work directory (the renderer names it `{video_id}-{hex}`).
- In OUTPUT_DIR/{video_id}/ (and with STORAGE_TYPE=s3 in the bucket, fleet-wide), token files (`{token}.mp4`, and the encoder's hidden `.part` files)
  older than TEMP_MAX_AGE_HOURS that are not the job's committed output: attempts that crashed,
  were refused, or were released. Never a running job's folder; never a folder whose job record
  is gone (its committed output belongs to the user now).
- Records of jobs that succeeded more than JOBS_MAX_AGE_HOURS ago (DLQ records stay until
  `dlq purge`).
- Stream entries every group has acked (trim_stream.lua keeps pending and undelivered ones), and
  consumers silent for an hour with nothing pending (dead processes).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from node.config import Settings
from node.job import VIDEO_ID_RE
from node.queue import RedisQueue
from node.records import JobState

log = logging.getLogger(__name__)

#: Token outputs and the encoder's partial files inside OUTPUT_DIR/{video_id}/.
TOKEN_FILE_RE = re.compile(r"^(?P<token>\d+)\.mp4$|^\.(?P<partial>\d+)\.mp4\..+\.part$")
#: ms; a consumer silent this long with nothing pending is a process that is gone.
DEAD_CONSUMER_IDLE_MS = 3600 * 1000


@dataclass
class CleanupReport:
    dry_run: bool
    temp_paths: list[str] = field(default_factory=list)
    orphan_outputs: list[str] = field(default_factory=list)
    job_records: list[str] = field(default_factory=list)
    stream_entries: int = 0
    consumers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def select_temp_paths(temp_dir: Path, cutoff_s: float, running: set[str]) -> list[Path]:
    """Entries of temp_dir with nothing modified after cutoff_s (epoch seconds), minus running jobs'."""
    if not temp_dir.is_dir():
        return []
    chosen = []
    for entry in sorted(temp_dir.iterdir()):
        if entry.name.rsplit("-", 1)[0] in running:
            continue
        if _newest_mtime(entry) < cutoff_s:
            chosen.append(entry)
    return chosen


def select_orphan_outputs(output_dir: Path, cutoff_s: float, queue: RedisQueue) -> list[Path]:
    """Token files in OUTPUT_DIR/{video_id}/ older than cutoff_s that no commit names."""
    if not output_dir.is_dir():
        return []
    chosen = []
    for folder in sorted(output_dir.iterdir()):
        if not folder.is_dir() or not VIDEO_ID_RE.match(folder.name):
            continue
        record = queue.record(folder.name)
        if record is None or record.state is JobState.running:
            continue
        for path in sorted(folder.iterdir()):
            m = TOKEN_FILE_RE.match(path.name)
            if not m or not path.is_file():
                continue
            if m["token"] and record.committed_token == int(m["token"]):
                continue
            if path.stat().st_mtime < cutoff_s:
                chosen.append(path)
    return chosen


def select_orphan_objects(store, queue: RedisQueue, min_age_s: float) -> list:
    """Outputs in the fleet's store (S3) older than min_age_s that no commit names: the same rule as
    for OUTPUT_DIR's token files (never a running job's, never one whose record is gone)."""
    chosen = []
    for stored in store.outputs():
        if stored.age_s < min_age_s:
            continue
        record = queue.record(stored.video_id)
        if record is None or record.state is JobState.running or record.committed_token == stored.token:
            continue
        chosen.append(stored)
    return chosen


def clean_files(queue: RedisQueue, settings: Settings, report: CleanupReport, *, now_s: float | None = None) -> None:
    now_s = time.time() if now_s is None else now_s
    cutoff = now_s - settings.temp_max_age_hours * 3600
    running = {vid for vid, _ in queue.index("running")}
    for path in select_temp_paths(settings.temp_dir, cutoff, running):
        report.temp_paths.append(str(path))
        if not report.dry_run:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for path in select_orphan_outputs(settings.output_dir, cutoff, queue):
        report.orphan_outputs.append(str(path))
        if not report.dry_run:
            path.unlink(missing_ok=True)


def clean_redis(queue: RedisQueue, settings: Settings, report: CleanupReport, *, now_ms: int | None = None) -> None:
    now_ms = queue.server_time_ms() if now_ms is None else now_ms
    cutoff_ms = now_ms - int(settings.jobs_max_age_hours * 3600 * 1000)
    for vid, _ in queue.index("finished", max_ms=cutoff_ms):
        if report.dry_run or queue.delete_job(vid, index="finished", cutoff_ms=cutoff_ms, states=("succeeded",)):
            report.job_records.append(vid)
    report.stream_entries, _ = queue.trim_stream(dry_run=report.dry_run)
    from node.storage import build_store

    store = build_store(settings)
    for stored in select_orphan_objects(store, queue, settings.temp_max_age_hours * 3600):
        report.orphan_outputs.append(stored.uri)
        if not report.dry_run:
            store.discard(stored.uri)
    # a live node polls the stream every QUEUE_BLOCK_MS, so an hour of silence means it is gone;
    # with nothing pending, deleting it drops no entry
    idle_ms = max(DEAD_CONSUMER_IDLE_MS, int(settings.job_lock_timeout * 10_000))
    for name in queue.idle_consumers(idle_ms):
        report.consumers.append(name)
        if not report.dry_run:
            queue.delete_consumer(name)


def run_cleanup(queue: RedisQueue, settings: Settings, *, dry_run: bool = False) -> CleanupReport:
    """Both parts now, without the schedule locks (the `cleanup` command)."""
    report = CleanupReport(dry_run)
    clean_redis(queue, settings, report)
    clean_files(queue, settings, report)
    return report


def run_scheduled_cleanup(queue: RedisQueue, settings: Settings, node_id: str) -> CleanupReport | None:
    """Each part runs only where its lock is won; a lock lasts one interval, so it runs once per
    CLEANUP_INTERVAL_HOURS across the fleet (the Redis part) and per host (the files)."""
    interval_s = settings.cleanup_interval_hours * 3600
    report, ran = CleanupReport(dry_run=False), False
    if queue.try_lock("cleanup:redis", node_id, interval_s):
        clean_redis(queue, settings, report)
        ran = True
    if queue.try_lock(f"cleanup:files:{socket.gethostname()}", node_id, interval_s):
        clean_files(queue, settings, report)
        ran = True
    if ran:
        log.info("cleanup: %d temp, %d orphan outputs, %d job records, %d stream entries, %d consumers",
                 len(report.temp_paths), len(report.orphan_outputs), len(report.job_records),
                 report.stream_entries, len(report.consumers))
    return report if ran else None


def _newest_mtime(path: Path) -> float:
    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for child in path.rglob("*"):
                newest = max(newest, child.lstat().st_mtime)
        return newest
    except FileNotFoundError:  # removed meanwhile (a job finishing): nothing to clean
        return float("inf")
