"""The node's states and its HTTP endpoints (/healthz, /readyz, /metrics) on a real Redis, over
real HTTP: every transition, a GPU fault that makes the node DEFUNCT, a wedged loop, Redis or disk
trouble, and the Prometheus text parsed as a scraper parses it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.errors import RenderFailed
from node.health_server import ReadinessChecks, serve_health
from node.node_state import NodeState, NodeStatus, is_device_fault
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.fleet.conftest import free_port, job_request, spawn_worker, wait_for
from tests.fleet.test_worker import writes_output

CANARY = "sk-canary-health-7f3a9c"


def get(port: int, path: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read().decode()
            code = r.status
    except urllib.error.HTTPError as e:
        body, code = e.read().decode(), e.code
    return code, (json.loads(body) if body.startswith("{") else body)


@pytest.fixture
def endpoints(fleet_settings, queue):
    """serve_health(worker.status) on a free port; closed at the end."""
    servers = []

    def serve(worker, settings=None, ping=None):
        checks = ReadinessChecks(settings or fleet_settings, ping or queue.client.ping)
        server = serve_health(worker.status, checks, 0, host="127.0.0.1", queue=queue)
        servers.append(server)
        return server.server_port

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def test_states_follow_loading_slots_draining_and_faults():
    now = [0.0]
    status = NodeStatus(2, stall_timeout_s=10, render_stall_timeout_s=60, clock=lambda: now[0])
    assert status.state() is NodeState.starting
    status.models_loaded()
    assert status.state() is NodeState.ready
    status.job_started("slot-0")
    assert status.state() is NodeState.ready  # one of two slots free
    status.job_started("slot-1")
    assert status.state() is NodeState.busy
    now[0] = 11.0  # rendering slots may be silent longer (a new avatar, the speech): not wedged yet
    assert status.state() is NodeState.busy
    status.job_ended("slot-1")
    now[0] = 22.0  # the idle slot-1 went silent past LOOP_STALL_TIMEOUT_S: wedged
    assert status.state() is NodeState.defunct and "slot-1" in status.defunct_reason()
    status.tick("slot-1")
    assert status.state() is NodeState.ready
    now[0] = 72.0  # and a rendering slot silent past RENDER_STALL_TIMEOUT_S is wedged too
    status.tick("slot-1")
    assert status.state() is NodeState.defunct and status.defunct_reason().startswith("loop(s) slot-0 ")
    status.job_ended("slot-0")
    status.tick("slot-0")
    assert status.state() is NodeState.ready
    status.drain()
    assert status.state() is NodeState.draining
    status.mark_defunct("CUDA error: an illegal memory access was encountered")
    assert status.as_dict() == {"state": "DEFUNCT", "slots": 2, "busy": 0,
                                "defunct_reason": "CUDA error: an illegal memory access was encountered"}


def test_only_errors_that_leave_the_gpu_unusable_make_a_node_defunct():
    assert is_device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_fault(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"))
    assert not is_device_fault(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_device_fault(RenderFailed("ffmpeg exited with 1"))


def test_a_node_goes_starting_ready_busy_ready_over_http(endpoints, start_worker, queue, media):
    # Given a worker whose models are still loading, and a render that waits for the test
    release, started = threading.Event(), threading.Event()

    def render(job, output, progress, should_stop):
        started.set()
        release.wait(10)
        return writes_output(job, output, progress, should_stop)

    worker = start_worker(render, models_ready=False)
    port = endpoints(worker)
    # Then it is alive but not ready while STARTING
    assert get(port, "/healthz") == (200, {"state": "STARTING", "slots": 1, "busy": 0, "defunct_reason": None})
    code, body = get(port, "/readyz")
    assert code == 503 and body["reasons"] == {"state": "node is STARTING"}
    # When the models are loaded it is ready
    worker.status.models_loaded()
    code, body = get(port, "/readyz")
    assert (code, body["state"], body["ready"]) == (200, "READY", True)
    # While its only slot renders it is BUSY (alive, not ready), then READY again
    queue.submit(job_request(media, "busy-1"))
    assert started.wait(10)
    assert get(port, "/readyz")[1]["reasons"] == {"state": "node is BUSY"}
    assert get(port, "/readyz?busy=ok")[0] == 200  # the container health check: busy is healthy
    assert get(port, "/healthz")[0] == 200
    release.set()
    wait_for(lambda: queue.record("busy-1").state is JobState.succeeded, 10, "the job to finish")
    wait_for(lambda: get(port, "/readyz")[0] == 200, 5, "READY again")


def test_a_gpu_fault_makes_the_node_defunct_and_its_job_goes_elsewhere(endpoints, start_worker, queue, media):
    # Given a node whose engine hits a CUDA error on its first job
    def render(job, output, progress, should_stop):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    worker = start_worker(render)
    port = endpoints(worker)
    queue.submit(job_request(media, "faulted"))
    queue.submit(job_request(media, "after-fault"))
    # Then the node is DEFUNCT: liveness fails (restart me), readiness fails, no new claims
    wait_for(lambda: get(port, "/healthz")[0] == 503, 10, "liveness to fail")
    code, body = get(port, "/readyz")
    assert code == 503 and body["state"] == "DEFUNCT" and "CUDA error" in body["defunct_reason"]
    # and the job is not lost: it waits for a retry on a healthy node
    record = wait_for(lambda: (r := queue.record("faulted")).state is not JobState.running and r, 10, "the attempt")
    assert record.state is JobState.retrying and record.error["code"] == "internal_error"
    assert worker.draining and worker.join(5)  # it stopped claiming: the next job waits for another node
    assert queue.record("after-fault").state is JobState.queued and queue.record("after-fault").token == 0


def test_readiness_names_redis_and_disk_trouble(endpoints, start_worker, fleet_settings):
    worker = start_worker(writes_output)

    def redis_down():
        raise ConnectionError("refused")

    port = endpoints(worker, fleet_settings.model_copy(update={"min_free_disk_mb": 1 << 40}), ping=redis_down)
    code, body = get(port, "/readyz")
    assert code == 503 and body["state"] == "READY"
    assert body["reasons"]["redis"] == "Redis unreachable: ConnectionError"
    assert {"disk:temp", "disk:output", "disk:avatar_cache"} <= set(body["reasons"])
    assert get(port, "/healthz")[0] == 200  # a dependency's trouble is not a reason to restart
    assert get(port, "/nope")[0] == 404


def test_metrics_are_prometheus_text_with_units_and_bounded_labels(endpoints, start_worker, queue, media,
                                                                   fleet_settings, monkeypatch):
    # Given a node that rendered a real job (mock engine) and a queue with work in two lanes
    monkeypatch.setenv("ELEVENLABS_API_KEY", CANARY)
    from pydantic import SecretStr

    settings = fleet_settings.model_copy(update={"elevenlabs_api_key": SecretStr(CANARY)})
    from node.metrics import PrometheusHooks

    worker = start_worker(renderer_render(Renderer(settings)), settings, hooks=[PrometheusHooks()])
    port = endpoints(worker)
    queue.submit(job_request(media, "metered"))
    wait_for(lambda: queue.record("metered").state is JobState.succeeded, 30, "the render")
    from node.fleet_stats import published_backlog

    wait_for(lambda: published_backlog(queue), 10, "the housekeeping to publish the backlog")
    worker.drain()
    assert worker.join(5)  # its slots have stopped reading
    queue.submit(job_request(media, "waiting-rush", priority="rush"))
    queue.submit(job_request(media, "waiting-bulk", priority="bulk"))
    # When Prometheus scrapes it
    code, text = get(port, "/metrics")
    assert code == 200 and CANARY not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    # Then the state, the queue's depth per lane and the per-stage durations are there, in seconds
    assert samples[("lipsync_node_state", (("state", "DRAINING"),))] == 1
    assert samples[("lipsync_node_state", (("state", "READY"),))] == 0
    assert samples[("lipsync_queue_jobs", (("lane", "rush"), ("where", "queued")))] == 1
    assert samples[("lipsync_queue_jobs", (("lane", "bulk"), ("where", "queued")))] == 1
    assert samples[("lipsync_queue_jobs", (("lane", "all"), ("where", "running")))] == 0
    assert samples[("lipsync_backlog_seconds", ())] >= 0  # published by the worker's housekeeping
    stage = families["lipsync_stage_seconds"]
    assert stage.unit in ("", "seconds") and stage.type == "histogram"
    stages = {(s.labels["stage"], s.labels["strategy"], s.labels["provider"]) for s in stage.samples
              if s.name.endswith("_count") and s.value > 0}
    assert {("tts", "lipsync", "upload"), ("lipsync", "lipsync", "mock"), ("encode", "lipsync", "mock")} <= stages
    assert samples[("lipsync_frames_rendered_total", (("strategy", "lipsync"),))] >= 8
    assert samples[("lipsync_job_results_total", (("outcome", "succeeded"), ("provider", "mock"),
                                                  ("strategy", "lipsync")))] >= 1
    # no label carries a job id, a path or a URL
    for f in families.values():
        for s in f.samples:
            assert not any(v in ("metered", "waiting-rush") or "/" in v for v in s.labels.values()), s


def test_the_worker_command_reports_starting_then_ready_on_its_health_port(fleet_settings, tmp_path):
    port = free_port()
    proc = spawn_worker(fleet_settings, "probed", tmp_path / "w.log", HEALTH_PORT=str(port))
    try:
        body = wait_for(lambda: _state(port) in ("READY",) and _state(port), 60, "the worker to be ready")
        assert body == "READY"
        assert get(port, "/readyz")[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "w.log").read_text()[-2000:]


def _state(port: int) -> str | None:
    try:
        return get(port, "/healthz")[1]["state"]
    except OSError:
        return None


def test_the_health_command_checks_redis_disk_and_weights(fleet_settings, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.fleet.conftest import worker_env

    def health(*args: str, **env: str) -> tuple[int, dict]:
        proc = subprocess.run([sys.executable, "-m", "node.cli", "health", "--json", *args], cwd=REPO,
                              env=worker_env(fleet_settings, **env), capture_output=True, text=True, timeout=120)
        return proc.returncode, json.loads(proc.stdout)

    def rows(report: dict, kind: str) -> dict:
        return {c["name"]: c for c in report["components"] if c["kind"] == kind}

    # Given a fleet node with its Redis up and disk to spare: it can render (exit 0)
    weights = fleet_settings.weights_dir / "sd-vae"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "config.json").write_text("{}")  # 2 bytes where the manifest says 547
    code, report = health()
    assert code == 0 and report["ready"] and rows(report, "fleet")["redis"]["ready"]
    assert set(rows(report, "disk")) == {"temp", "output", "avatar_cache"}
    # and a weight file of the wrong size is named (sizes are always compared)
    assert "2 bytes, the manifest says 547" in rows(report, "weights")["sd-vae/config.json"]["reason"]
    # With the right size but other bytes, only --verify (sha256) finds it
    (weights / "config.json").write_bytes(b"\0" * 547)
    assert rows(health()[1], "weights")["sd-vae/config.json"]["ready"]
    verified = rows(health("--verify")[1], "weights")["sd-vae/config.json"]
    assert not verified["ready"] and "sha256" in verified["reason"]
    # Redis down or too little disk: the node cannot render as a fleet node (exit 1)
    code, report = health(REDIS_URL="redis://127.0.0.1:9/0")
    assert code == 1 and not rows(report, "fleet")["redis"]["ready"]
    code, report = health(MIN_FREE_DISK_MB=str(1 << 40))
    assert code == 1 and not rows(report, "disk")["temp"]["ready"]
