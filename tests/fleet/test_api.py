"""Clients that are not Python: the committed JSON Schema of a job, an entry written the way
`redis-cli XADD` writes it, and `lipsync-node api` over real HTTP with a real worker."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from node.api import serve_api
from node.entries import SCHEMA_PATH, job_json_schema
from node.job import Job
from node.lanes import Priority
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.conftest import REPO
from tests.fleet.conftest import free_port, job_request, wait_for, worker_env

TOKEN = "api-canary-token-4c1d"


def test_the_committed_schema_is_the_one_the_job_model_generates():
    # (regenerate: python -c "from node.entries import *; import json;
    #  SCHEMA_PATH.write_text(json.dumps(job_json_schema(), indent=2, ensure_ascii=False) + '\n')")
    assert json.loads(SCHEMA_PATH.read_text()) == job_json_schema()
    schema = job_json_schema()
    assert set(schema["properties"]) == set(Job.model_fields) and schema["required"] == ["video_id"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Priority"]["enum"] == ["rush", "normal", "bulk"]
    assert schema["properties"]["video_id"]["pattern"].startswith("^")


def test_an_entry_added_as_redis_cli_adds_it_is_rendered(queue, media, start_worker, fleet_settings):
    # Given a producer that knows only the wire format: XADD <prefix>stream:rush * payload <json>
    start_worker(renderer_render(Renderer(fleet_settings)))
    payload = json.dumps({"video_id": "from-cli", "audio": str(media["speech"]), "avatar": str(media["avatar"]),
                          "strategy": "lipsync", "engine": "mock"})
    queue.client.xadd(queue.keys.streams[Priority.rush], {"payload": payload})
    # Then a node renders it, in the rush lane
    record = wait_for(lambda: (r := queue.record("from-cli")) and r.terminal and r, 30, "the render")
    assert record.state is JobState.succeeded and record.lane == "rush"


@pytest.fixture
def api(queue, fleet_settings, start_worker):
    """The API on a free port in front of the test's queue, a real worker behind it."""
    start_worker(renderer_render(Renderer(fleet_settings)))
    server = serve_api(queue, TOKEN, 0, host="127.0.0.1")
    with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
    server.shutdown()
    server.server_close()


def test_a_job_posted_over_http_is_rendered_and_watched(api, media):
    body = job_request(media, "http-1")
    created = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-1"})
    assert created.status_code == 202, created.text
    assert created.json() == {"video_id": "http-1", "state": "queued", "created": True, "status_url": "/v1/jobs/http-1"}
    assert created.headers["Location"] == "/v1/jobs/http-1"
    done = wait_for(lambda: (r := api.get("/v1/jobs/http-1").json())["state"] == "succeeded" and r, 30, "the render")
    assert done["output"].endswith("http-1/1.mp4") and done["job"]["idempotency_key"] == "order-1"
    # The same request again is the same job (200, not created); the same key with another job is a conflict
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-1"})
    assert again.status_code == 200 and again.json()["created"] is False
    other = api.post("/v1/jobs", json=job_request(media, "http-2"), headers={"Idempotency-Key": "order-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # A key alone names the job
    keyed = api.post("/v1/jobs", json={"text": "hola", "strategy": "base_video"}, headers={"Idempotency-Key": "k-9"})
    assert keyed.status_code == 202 and keyed.json()["video_id"].startswith("idem_")


@pytest.mark.parametrize("request_args, status, code", [
    ({"json": {"text": ""}}, 400, "text_empty"),
    ({"json": {"text": "hola", "urgency": 1}}, 400, "unknown_field"),
    ({"json": {"text": "hola", "priority": "urgent"}}, 400, "invalid_priority"),
    ({"json": ["not", "an", "object"]}, 400, "invalid_job"),
    ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ({"content": b"text=hola", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415,
     "unsupported_media_type"),
    ({"json": {"text": "x" * 70_000}}, 413, "payload_too_large"),
])
def test_bad_requests_get_the_clis_codes(api, request_args, status, code):
    response = api.post("/v1/jobs", **request_args)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_no_or_a_wrong_token_is_refused_and_unknown_jobs_are_404(api):
    base = str(api.base_url).rstrip("/")
    anonymous = httpx.post(f"{base}/v1/jobs", json={"text": "hola"}, timeout=10)
    wrong = httpx.get(f"{base}/v1/jobs/x", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert anonymous.status_code == wrong.status_code == 401
    assert TOKEN not in anonymous.text + wrong.text
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # probes need no token
    missing = api.get("/v1/jobs/nobody")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"


def test_the_api_command_never_starts_without_a_token_and_serves_with_one(fleet_settings, tmp_path):
    def start(**env):
        return subprocess.Popen([sys.executable, "-m", "node.cli", "api"], cwd=REPO, env=worker_env(fleet_settings, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    refused = start(API_TOKEN="")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "api_token_missing" in err
    port = free_port()
    served = start(API_TOKEN=TOKEN, API_PORT=str(port), API_HOST="127.0.0.1")
    try:
        ok = wait_for(lambda: _post_ok(port), 30, "the API to answer")
        assert ok.status_code == 202
    finally:
        served.terminate()
        served.wait(30)
    assert served.returncode == 0 and TOKEN not in served.stderr.read()


def _post_ok(port: int):
    try:
        return httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json={"text": "hola", "strategy": "base_video"},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    except httpx.TransportError:
        return None
