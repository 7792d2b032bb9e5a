"""The worker loop in this process on a real Redis: retries, backoff, the DLQ, malformed entries,
fencing of a partitioned node. Render functions are injected; one test uses the real Renderer."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.errors import InvalidInput, RenderFailed
from node.pipeline import Renderer
from node.errors import QueueUnavailable
from node.queue import RedisQueue
from node.records import JobState
from node.worker import Worker, renderer_render
from tests.conftest import ffprobe_json
from tests.fleet.conftest import job_request, wait_for


@dataclass
class FakeResult:
    status: str = "succeeded"
    error: dict | None = None

    def as_dict(self) -> dict:
        return {"status": self.status}


def writes_output(job, output: Path, progress, should_stop) -> FakeResult:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(b"video")
    return FakeResult()


def failing_first(n: int, exc: Exception):
    """A render that raises `exc` on its first n calls per job, then succeeds."""
    calls: dict[str, int] = {}

    def render(job, output, progress, should_stop):
        calls[job.video_id] = calls.get(job.video_id, 0) + 1
        if calls[job.video_id] <= n:
            raise exc
        return writes_output(job, output, progress, should_stop)

    render.calls = calls
    return render


def finished(queue: RedisQueue, video_id: str, timeout_s: float = 15.0):
    return wait_for(lambda: (r := queue.record(video_id)) is not None and r.terminal and r, timeout_s,
                    f"{video_id} to finish")


def test_transient_failures_are_retried_with_backoff_until_success(queue, fleet_settings, media, start_worker):
    # Given a render that fails twice, and retries of 0.2 s then 0.4 s (no jitter)
    settings = fleet_settings.model_copy(update={"retry_base_delay_s": 0.2, "retry_max_delay_s": 5.0})
    queue.submit(job_request(media, "flaky"))
    start_worker(failing_first(2, RenderFailed("engine hiccup")), settings, rand=lambda: 1.0)
    # When the worker runs it
    record = finished(queue, "flaky")
    # Then it succeeded on the third attempt, every attempt recorded
    assert record.state is JobState.succeeded and record.attempts == 3
    assert [(a.outcome, a.error_code) for a in record.history] == [
        ("failed", "render_failed"), ("failed", "render_failed"), ("succeeded", None)]
    # and each retry waited its backoff (ms between one attempt's end and the next's start)
    gaps = [b.started_ms - a.ended_ms for a, b in zip(record.history, record.history[1:])]
    assert gaps[0] >= 200 and gaps[1] >= 400, gaps
    assert Path(record.output).read_bytes() == b"video"


def test_a_waiting_retry_does_not_hold_the_worker(queue, fleet_settings, media, start_worker):
    # Given one slot, a job whose first attempt fails with a 2 s backoff, and a second job
    settings = fleet_settings.model_copy(update={"retry_base_delay_s": 2.0, "retry_max_delay_s": 2.0})
    queue.submit(job_request(media, "slow-retry"))
    flaky = failing_first(1, RenderFailed("hiccup"))
    start_worker(lambda job, *a: (flaky if job.video_id == "slow-retry" else writes_output)(job, *a),
                 settings, rand=lambda: 1.0)
    wait_for(lambda: queue.record("slow-retry").state is JobState.retrying, 10, "the first failure")
    queue.submit(job_request(media, "meanwhile"))
    # When both finish
    other, retried = finished(queue, "meanwhile"), finished(queue, "slow-retry")
    # Then the second job ran while the first one waited in the delayed set
    assert other.state is retried.state is JobState.succeeded
    assert other.finished_ms < retried.history[-1].started_ms


def test_exhausted_attempts_fail_into_the_dlq_and_dlq_retry_resets_them(queue, media, start_worker):
    # Given a render that fails 3 times (MAX_JOB_ATTEMPTS=3) and then would succeed
    queue.submit(job_request(media, "doomed"))
    start_worker(failing_first(3, RenderFailed("always broken", code="engine_crashed")))
    # When the worker has used every attempt
    record = finished(queue, "doomed")
    # Then the job failed into the DLQ with its whole history
    assert record.state is JobState.failed and record.attempts == 3
    assert record.error == {"code": "engine_crashed", "message": "always broken", "retryable": True}
    assert [a.error_code for a in record.history] == ["engine_crashed"] * 3
    assert [vid for vid, _ in queue.index("dlq")] == ["doomed"]
    # When it is retried from the DLQ
    queue.dlq_retry("doomed")
    # Then it runs again with a fresh attempt count, and the old history stays
    record = finished(queue, "doomed")
    assert record.state is JobState.succeeded and record.attempts == 1 and len(record.history) == 4
    assert queue.index("dlq") == []


def test_invalid_input_is_dead_at_once(queue, media, fleet_settings, start_worker):
    # Given a job whose avatar does not exist, run by the real renderer
    queue.submit({**job_request(media, "no-avatar"), "avatar": str(media["avatar"].parent / "missing.mp4")})
    start_worker(renderer_render(Renderer(fleet_settings)))
    # Then it is dead after one attempt, with the renderer's code
    record = finished(queue, "no-avatar")
    assert record.state is JobState.dead and record.attempts == 1
    assert record.error["code"] == "avatar_not_found" and record.error["retryable"] is False
    assert [vid for vid, _ in queue.index("dlq")] == ["no-avatar"]


def test_a_real_render_commits_a_valid_token_output(queue, media, fleet_settings, start_worker, ffprobe):
    queue.submit(job_request(media, "real"))
    start_worker(renderer_render(Renderer(fleet_settings)))
    record = finished(queue, "real")
    assert record.state is JobState.succeeded
    assert record.output == str(fleet_settings.output_dir / "real" / "1.mp4")
    assert float(ffprobe_json(Path(record.output))["format"]["duration"]) == pytest.approx(0.3, abs=0.05)
    assert record.result["strategy"] == "lipsync" and record.progress["done"] == record.progress["total"]


@pytest.mark.parametrize("fields,code", [
    ({"payload": "not json"}, "invalid_json"),
    ({"payload": b"\xff\xfe{"}, "invalid_json"),
    ({"payload": "[1, 2]"}, "invalid_job"),
    ({"payload": json.dumps({"video_id": 5, "text": "hola"})}, "invalid_video_id"),
    ({"payload": json.dumps({"video_id": "m", "text": ["hola"]})}, "invalid_text"),
    ({"payload": json.dumps({"video_id": "m", "text": "hola", "colour": "red"})}, "unknown_field"),
    ({"payload": json.dumps({"text": "hola"})}, "missing_field"),
    ({"payload": "x" * 70_000}, "payload_too_large"),
    ({"job": "{}"}, "malformed_entry"),
    ({"payload": "{}", "extra": "1"}, "malformed_entry"),
])
def test_malformed_entries_go_to_the_dlq_and_the_worker_keeps_going(queue, media, start_worker, fields, code):
    # Given a malformed entry written straight to the stream, then a good job
    queue.ensure_group()
    entry_id = queue.client.xadd(queue.keys.stream, fields).decode()
    queue.submit(job_request(media, "after-bad"))
    start_worker(writes_output)
    # Then the good job still succeeds
    assert finished(queue, "after-bad").state is JobState.succeeded
    # and the bad entry is dead-lettered under its own record with its code, and acked
    dead = queue.record(f"entry:{entry_id}")
    assert dead.state is JobState.dead and dead.error["code"] == code
    assert dead.entry_raw and len(dead.entry_raw) <= 4096
    assert [vid for vid, _ in queue.index("dlq")] == [f"entry:{entry_id}"]
    assert queue.pending_count() == 0
    with pytest.raises(InvalidInput, match="malformed queue entry"):
        queue.dlq_retry(f"entry:{entry_id}")


def test_an_entry_reusing_a_jobs_id_with_another_payload_leaves_the_job_alone(queue, media, start_worker):
    # Given a finished job, and a foreign entry with its id but another payload
    queue.submit(job_request(media, "owned"))
    start_worker(writes_output)
    first = finished(queue, "owned")
    entry_id = queue.client.xadd(queue.keys.stream, {"payload": json.dumps(
        {**job_request(media, "owned"), "strategy": "base_video", "engine": None})}).decode()
    # Then the entry is dead-lettered as a conflict and the job keeps its result
    dead = wait_for(lambda: queue.record(f"entry:{entry_id}"), 10, "the conflicting entry")
    assert dead.error["code"] == "idempotency_conflict"
    assert queue.record("owned").output == first.output


def test_a_partitioned_node_loses_its_commit_and_its_file(queue, fleet_settings, media, start_worker, tmp_path):
    # Given node A, whose heartbeats cannot reach Redis (a partition), rendering slowly
    settings = fleet_settings.model_copy(update={"job_lock_timeout": 0.5})
    cut_off = RedisQueue(settings)
    cut_off.heartbeat = lambda *a, **k: (_ for _ in ()).throw(QueueUnavailable("partitioned"))
    b_committed = threading.Event()
    a_files: list[Path] = []

    def slow_a(job, output, progress, should_stop):
        assert b_committed.wait(15), "node B never committed"
        a_files.append(output)
        return writes_output(job, output, progress, should_stop)  # ignores should_stop: a batch in flight

    queue.submit(job_request(media, "split"))
    a = Worker(cut_off, settings, slow_a, node_id="A", housekeeping=False).start()
    try:
        wait_for(lambda: queue.record("split").state is JobState.running, 5, "A to claim")

        def b_render(job, output, progress, should_stop):
            result = writes_output(job, output, progress, should_stop)
            threading.Timer(0.3, b_committed.set).start()  # A finishes after B's commit
            return result

        # When node B takes the job over after A's lease expires, and commits
        start_worker(b_render, settings, node_id="B")
        record = wait_for(lambda: (r := queue.record("split")).state is JobState.succeeded and r, 10, "B's commit")
        # Then A's commit is refused and its file deleted; B's result stands
        wait_for(lambda: queue.refusals().get("A|commit") == 1, 10, "A's refused commit")
        wait_for(lambda: a_files and not a_files[0].exists(), 5, "A's file to be deleted")
        assert record.output == str(settings.output_dir / "split" / "2.mp4") and Path(record.output).exists()
        assert [(h.node, h.outcome) for h in queue.record("split").history] == [("A", "lease_expired"),
                                                                                 ("B", "succeeded")]
    finally:
        a.stop_now()
        assert a.join(10)


def test_prometheus_hooks_count_outcomes(queue, media, start_worker):
    from node.metrics import JOBS, PrometheusHooks

    before = JOBS.labels("succeeded")._value.get()
    queue.submit(job_request(media, "counted"))
    start_worker(writes_output, hooks=[PrometheusHooks()])
    finished(queue, "counted")
    wait_for(lambda: JOBS.labels("succeeded")._value.get() == before + 1, 5, "the counter")


def test_each_slot_renders_with_its_own_render_function(queue, media, start_worker):
    # Given two slots, each with its own renderer (as one GPU each), and jobs that take a while
    used: dict[str, set] = {"a": set(), "b": set()}

    def renderer(name):
        def render(job, output, progress, should_stop):
            used[name].add(threading.current_thread().name)
            threading.Event().wait(0.2)
            return writes_output(job, output, progress, should_stop)
        return render

    for i in range(6):
        queue.submit(job_request(media, f"slot{i}"))
    start_worker([renderer("a"), renderer("b")], concurrency=2)
    for i in range(6):
        assert finished(queue, f"slot{i}").state is JobState.succeeded
    # Then each renderer served exactly one slot thread, and both did work
    assert used["a"] == {"slot-0"} and used["b"] == {"slot-1"}
