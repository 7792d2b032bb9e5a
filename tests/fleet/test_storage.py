"""STORAGE_TYPE=s3 against a real S3-protocol server on loopback (moto's server mode, started here):
uploads, multipart, presigned URLs, the fenced commit when a stale holder races, a store that is
down (the job retries, nothing is lost), and cleanup of orphaned objects."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import boto3
import httpx
import pytest

from node.cleanup import CleanupReport, clean_redis
from node.errors import QueueUnavailable
from node.pipeline import Renderer
from node.queue import RedisQueue
from node.records import JobState
from node.storage import S3Store, StorageUnavailable
from node.worker import Worker, renderer_render
from tests.conftest import REPO
from tests.fleet.conftest import free_port, job_request, wait_for, worker_env
from tests.fleet.test_worker import writes_output

from tests.fleet.conftest import CANARY_SECRET


def objects(settings) -> dict[str, dict]:
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    listed = client.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])
    return {o["Key"]: client.head_object(Bucket=settings.s3_bucket, Key=o["Key"]) for o in listed}


def test_a_render_is_committed_as_an_object_and_handed_out_presigned(queue, s3_settings, media, start_worker):
    # Given a worker whose outputs go to S3
    start_worker(renderer_render(Renderer(s3_settings)), s3_settings)
    queue.submit(job_request(media, "to-s3"))
    record = wait_for(lambda: (r := queue.record("to-s3")) and r.terminal and r, 30, "the render")
    # Then the record names the object of the committed token, and no local copy stays behind
    key = "outputs/to-s3/1.mp4"
    assert record.state is JobState.succeeded and record.output == f"s3://{s3_settings.s3_bucket}/{key}"
    stored = objects(s3_settings)
    assert list(stored) == [key] and stored[key]["ContentType"] == "video/mp4"
    assert not (s3_settings.output_dir / "to-s3" / "1.mp4").exists()
    assert record.result["timings_s"]["upload"] >= 0  # the upload is a stage of its own
    # and `status --json` gives a presigned HTTPS URL that serves the MP4 (never a credential)
    proc = subprocess.run([sys.executable, "-m", "node.cli", "status", "to-s3", "--json"], cwd=REPO,
                          env=worker_env(s3_settings, STORAGE_TYPE="s3", S3_BUCKET=s3_settings.s3_bucket,
                                         S3_ENDPOINT_URL=s3_settings.s3_endpoint_url, S3_PRESIGN_TTL_S="600",
                                         AWS_ACCESS_KEY_ID="canary-akid", AWS_SECRET_ACCESS_KEY=CANARY_SECRET),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert CANARY_SECRET not in proc.stdout + proc.stderr
    import json

    url = json.loads(proc.stdout)["output_url"]
    assert "X-Amz-Expires=600" in url or "Expires=" in url
    body = httpx.get(url, timeout=10).content
    assert body[4:8] == b"ftyp" and len(body) == stored[key]["ContentLength"]


def test_large_outputs_upload_in_parts(s3_settings, tmp_path):
    store = S3Store(s3_settings.model_copy(update={"s3_multipart_chunk_mb": 5}))
    big = tmp_path / "big.mp4"
    big.write_bytes(bytes(range(256)) * (11 * 4096))  # 11 MiB: three parts of at most 5 MiB
    uri = store.publish(big, "big", 3)
    head = objects(s3_settings)["outputs/big/3.mp4"]
    assert uri.endswith("/outputs/big/3.mp4") and head["ContentLength"] == 11 * (1 << 20)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert not big.exists()


def test_a_stale_holders_object_is_deleted_and_the_winners_committed(queue, s3_settings, media, start_worker):
    # Given node A, cut off from Redis, rendering slowly while node B takes the job over
    settings = s3_settings.model_copy(update={"job_lock_timeout": 0.5})
    cut_off = RedisQueue(settings)
    cut_off.heartbeat = lambda *a, **k: (_ for _ in ()).throw(QueueUnavailable("partitioned"))
    b_committed = threading.Event()

    def slow_a(job, output, progress, should_stop):
        assert b_committed.wait(15), "node B never committed"
        return writes_output(job, output, progress, should_stop)

    def b_render(job, output, progress, should_stop):
        result = writes_output(job, output, progress, should_stop)
        threading.Timer(0.3, b_committed.set).start()
        return result

    queue.submit(job_request(media, "raced"))
    a = Worker(cut_off, settings, slow_a, node_id="A", housekeeping=False).start()
    try:
        wait_for(lambda: queue.record("raced").state is JobState.running, 5, "A to claim")
        start_worker(b_render, settings, node_id="B")
        record = wait_for(lambda: (r := queue.record("raced")).state is JobState.succeeded and r, 10, "B's commit")
        wait_for(lambda: queue.refusals().get("A|commit") == 1, 10, "A's refused commit")
        # Then only B's object (token 2) is in the bucket, and it is the committed output
        wait_for(lambda: list(objects(settings)) == ["outputs/raced/2.mp4"], 10, "A's object to be deleted")
        assert record.output == f"s3://{settings.s3_bucket}/outputs/raced/2.mp4"
    finally:
        a.stop_now()
        assert a.join(10)


def test_a_store_that_is_down_makes_the_job_retry_and_nothing_is_lost(queue, s3_settings, media, start_worker):
    # Given a store that refuses connections (a closed port), then comes back
    down = s3_settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
                                          "retry_base_delay_s": 0.2, "retry_max_delay_s": 0.2})
    worker = start_worker(writes_output, down)
    queue.submit(job_request(media, "patient"))
    record = wait_for(lambda: (r := queue.record("patient")).state is JobState.retrying and r, 30, "a retry")
    assert record.error["code"] == "storage_unavailable" and record.error["retryable"]
    worker.stop_now()
    assert worker.join(10)
    start_worker(writes_output, s3_settings)
    done = wait_for(lambda: (r := queue.record("patient")).state is JobState.succeeded and r, 60, "the retry")
    assert done.output.startswith(f"s3://{s3_settings.s3_bucket}/outputs/patient/")
    with pytest.raises(StorageUnavailable):
        S3Store(down).publish(Path(__file__), "x", 1)


def test_cleanup_removes_orphaned_objects_but_never_a_committed_or_running_one(queue, s3_settings, media,
                                                                               start_worker, tmp_path):
    # Given a committed output, and objects no commit names: of a finished job and of a running one
    start_worker(writes_output, s3_settings)
    queue.submit(job_request(media, "kept"))
    wait_for(lambda: queue.record("kept").state is JobState.succeeded, 20, "the job")
    store = S3Store(s3_settings)
    stray = tmp_path / "stray.mp4"
    for token in (7, 8):
        stray.write_bytes(b"orphan")
        store.publish(stray, "kept", token)
    # When cleanup runs (objects count as old at once)
    report = CleanupReport(dry_run=False)
    clean_redis(queue, s3_settings.model_copy(update={"temp_max_age_hours": 0}), report)
    # Then the orphans are gone and the committed output stays
    assert sorted(report.orphan_outputs) == [f"s3://{s3_settings.s3_bucket}/outputs/kept/{t}.mp4" for t in (7, 8)]
    assert list(objects(s3_settings)) == ["outputs/kept/1.mp4"]
