"""Drain: SIGTERM during a render on real worker processes. The node claims nothing more, the job
completes (or is released at a batch boundary and succeeds on another node), and it exits 0."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.queue import RedisQueue
from node.records import JobState
from tests.conftest import REPO, ffprobe_json
from tests.fleet.conftest import free_port, job_request, kill_all, spawn_worker, wait_for, worker_env
from tests.fleet.test_health import get

SECONDS_PER_BATCH = 0.03  # 150 one-frame batches: a render of about 5 s


@pytest.fixture
def drain_settings(fleet_settings):
    return fleet_settings.model_copy(update={"job_lock_timeout": 3.0, "lipsync_batch_size": 1})


def spawn_slow_worker(settings, node_id: str, log: Path, **env) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.fleet.slow_worker", str(SECONDS_PER_BATCH), node_id],
                                cwd=REPO, env=worker_env(settings, LIPSYNC_BATCH_SIZE="1", **env),
                                stdout=out, stderr=out)


def rendering(queue: RedisQueue, video_id: str, frames: int = 5) -> bool:
    record = queue.record(video_id)
    return record.state is JobState.running and (record.progress or {}).get("done", 0) >= frames


def test_sigterm_lets_the_running_job_finish_and_claims_nothing_more(drain_settings, media, tmp_path, ffprobe):
    queue = RedisQueue(drain_settings)
    procs = []
    try:
        # Given a node in the middle of a long render, and a second job waiting
        port = free_port()
        procs.append(spawn_slow_worker(drain_settings, "drainer", tmp_path / "a.log", SHUTDOWN_TIMEOUT="60",
                                       HEALTH_PORT=str(port)))
        queue.submit(job_request(media, "long", speech="long_speech"))
        wait_for(lambda: rendering(queue, "long"), 30, "the render to be under way")
        assert get(port, "/readyz")[1]["state"] == "BUSY"
        queue.submit(job_request(media, "waiting"))
        # When it gets SIGTERM
        procs[0].send_signal(signal.SIGTERM)
        # Then it reports DRAINING (alive, not ready) while it finishes the running job, and exits 0
        code, body = wait_for(lambda: (r := get(port, "/readyz"))[1]["state"] == "DRAINING" and r, 10, "DRAINING")
        assert code == 503 and get(port, "/healthz")[0] == 200
        assert procs[0].wait(30) == 0, (tmp_path / "a.log").read_text()[-3000:]
        record = queue.record("long")
        assert record.state is JobState.succeeded and record.history[-1].node == "drainer"
        assert float(ffprobe_json(Path(record.output))["format"]["duration"]) == pytest.approx(6.0, abs=0.1)
        # and never claimed the waiting job (nor holds its entry)
        waiting = queue.record("waiting")
        assert waiting.state is JobState.queued and waiting.token == 0 and queue.pending_count() == 0
    finally:
        kill_all(procs)


@pytest.mark.parametrize("stop", ["second_signal", "shutdown_timeout"])
def test_a_forced_stop_releases_the_job_at_a_batch_boundary(drain_settings, media, tmp_path, ffprobe, stop):
    queue = RedisQueue(drain_settings)
    procs = []
    try:
        # Given a node in the middle of a long render (SHUTDOWN_TIMEOUT 0.5 s in one variant)
        timeout = "0.5" if stop == "shutdown_timeout" else "60"
        procs.append(spawn_slow_worker(drain_settings, "leaver", tmp_path / "a.log", SHUTDOWN_TIMEOUT=timeout))
        queue.submit(job_request(media, "cut", speech="long_speech"))
        wait_for(lambda: rendering(queue, "cut"), 30, "the render to be under way")
        # When it is told to stop: a second signal, or the shutdown timeout running out
        procs[0].send_signal(signal.SIGTERM)
        if stop == "second_signal":
            procs[0].send_signal(signal.SIGINT)
        # Then it stops at a batch boundary, releases the job at once, and exits 0
        assert procs[0].wait(30) == 0, (tmp_path / "a.log").read_text()[-3000:]
        record = queue.record("cut")
        assert record.state is JobState.queued and record.attempts == 0  # the attempt did not count
        assert [(a.node, a.outcome, a.error_code) for a in record.history] == [("leaver", "released", "cancelled")]
        assert record.progress["done"] < record.progress["total"]
        assert not any((drain_settings.output_dir / "cut").glob("*")), "no output, not even a partial one"
        # When another node starts
        procs.append(spawn_worker(drain_settings, "taker", tmp_path / "b.log"))
        # Then the released job succeeds there, with one counted attempt
        wait_for(lambda: queue.record("cut").state is JobState.succeeded, 60, "the job on the second node")
        record = queue.record("cut")
        assert [(a.node, a.outcome) for a in record.history] == [("leaver", "released"), ("taker", "succeeded")]
        assert record.attempts == 1 and record.output.endswith("cut/2.mp4")
        assert float(ffprobe_json(Path(record.output))["format"]["duration"]) == pytest.approx(6.0, abs=0.1)
        # and the worker said once, at start, how often it checks for a drain
        started = [ln for ln in (tmp_path / "b.log").read_text().splitlines() if "batches:" in ln]
        assert len(started) == 1 and re.search(r"mock \d+ frames \(LIPSYNC_BATCH_SIZE\)", started[0]), started
    finally:
        kill_all(procs)
