"""Cleanup selection: old temp files and orphaned outputs go; a running job's files never do."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.cleanup import CleanupReport, clean_files, clean_redis, run_cleanup, run_scheduled_cleanup
from node.entries import decode_entry
from node.queue import RedisQueue
from node.records import JobState
from tests.fleet.conftest import job_request

DAY_S = 86400


def aged(path: Path, age_s: float, content: bytes = b"x") -> Path:
    """A file last modified age_s ago (its folder too, when the folder is new)."""
    fresh_folder = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    then = time.time() - age_s
    os.utime(path, (then, then))
    if fresh_folder:
        os.utime(path.parent, (then, then))
    return path


def claim_next(queue: RedisQueue, owner: str):
    [entry] = queue.read(owner, block_ms=100)
    job = decode_entry(entry.fields, max_payload_bytes=65536, max_text_chars=100)
    return queue.claim(entry, job, owner=owner, node_id=owner).claim


def test_old_files_go_but_a_running_jobs_stay(queue, fleet_settings, media):
    # Given TEMP_MAX_AGE_HOURS=24, a running job, and a job that succeeded with token 2
    s = fleet_settings
    queue.submit(job_request(media, "running-job"))
    queue.submit(job_request(media, "done-job"))
    claim_next(queue, "A/0")  # running-job: running
    done = claim_next(queue, "A/1")
    queue.finish(done, "released")  # token 1 gave up; token 2 commits
    done = claim_next(queue, "A/1")
    queue.finish(done, "succeeded", result={"output": str(s.output_dir / "done-job" / "2.mp4")})
    assert done.token == 2 and queue.record("running-job").state is JobState.running
    two_days = 2 * DAY_S
    keep = [aged(s.temp_dir / "running-job-0a1b2c3d" / "speech.wav", two_days),  # a running job's workdir
            aged(s.temp_dir / "fresh-9f8e7d6c" / "f.wav", 60),  # young
            aged(s.output_dir / "done-job" / "2.mp4", two_days),  # the committed output
            aged(s.output_dir / "running-job" / "1.mp4", two_days),  # a running job's output
            aged(s.output_dir / "running-job" / ".1.mp4.77.part", two_days),
            aged(s.output_dir / "no-record" / "1.mp4", two_days),  # record gone: the user's now
            aged(s.output_dir / "done-job" / "notes.txt", two_days),  # not a token file
            aged(s.output_dir / "done-job" / "3.mp4", 60)]  # young orphan
    mixed = s.temp_dir / "mixed-11112222"
    keep.append(aged(mixed / "new.wav", 60))
    aged(mixed / "old.wav", two_days)
    gone = [aged(s.temp_dir / "done-job-55556666" / "speech.wav", two_days).parent,
            aged(s.temp_dir / "stray.tmp", two_days),
            aged(s.output_dir / "done-job" / "1.mp4", two_days),  # a released attempt
            aged(s.output_dir / "done-job" / ".3.mp4.4242.part", two_days)]  # a killed encoder
    # When cleanup runs as a dry run, then for real
    dry = CleanupReport(dry_run=True)
    clean_files(queue, s, dry)
    report = CleanupReport(dry_run=False)
    clean_files(queue, s, report)
    # Then it chose exactly the old files of jobs not running, and the dry run deleted nothing
    assert sorted(dry.temp_paths + dry.orphan_outputs) == sorted(map(str, gone))
    assert sorted(report.temp_paths + report.orphan_outputs) == sorted(map(str, gone))
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)


def test_old_succeeded_records_are_deleted_dlq_and_running_ones_kept(queue, fleet_settings, media):
    # Given a succeeded job with an idempotency key, a dead job and a running job
    queue.submit(job_request(media, "old-ok", idempotency_key="key-old"))
    queue.submit(job_request(media, "old-dead"))
    queue.submit(job_request(media, "busy"))
    queue.finish(claim_next(queue, "A/0"), "succeeded", result={"output": "o"})
    queue.finish(claim_next(queue, "A/0"), "dead", error={"code": "avatar_not_found", "message": "m",
                                                          "retryable": False})
    claim_next(queue, "A/1")
    # When cleanup runs as if JOBS_MAX_AGE_HOURS (+1 h) had passed
    later_ms = queue.server_time_ms() + int((fleet_settings.jobs_max_age_hours + 1) * 3600 * 1000)
    dry = CleanupReport(dry_run=True)
    clean_redis(queue, fleet_settings, dry, now_ms=later_ms)
    assert dry.job_records == ["old-ok"] and queue.record("old-ok") is not None
    report = CleanupReport(dry_run=False)
    clean_redis(queue, fleet_settings, report, now_ms=later_ms)
    # Then only the succeeded record (and its idempotency key) is gone
    assert report.job_records == ["old-ok"] and queue.record("old-ok") is None
    assert queue.client.exists(queue.keys.idem("key-old")) == 0
    assert queue.record("old-dead").state is JobState.dead and queue.record("busy").state is JobState.running
    # and the stream keeps the running job's pending entry
    assert queue.pending_count() == 1 and queue.client.xlen(queue.keys.stream) == 1
    # while nothing is old enough today
    assert run_cleanup(queue, fleet_settings).job_records == []


def test_scheduled_cleanup_runs_on_one_node_per_interval(queue, fleet_settings):
    # Given two nodes asking for the cleanup lock in the same interval
    first = run_scheduled_cleanup(queue, fleet_settings, "node-a")
    second = run_scheduled_cleanup(RedisQueue(fleet_settings), fleet_settings, "node-b")
    # Then only the first one ran it
    assert isinstance(first, CleanupReport) and second is None
