"""The mocks themselves behave as PROVIDERS.md section 6 says (they are only as useful as they
are faithful): envelopes, validation, idempotency, cancel, timestamps, webhooks."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.mocks import ElevenLabsMock, HeyGenMock, HiggsfieldMock, SyncMock


def test_elevenlabs_timestamps_have_equal_length_arrays_and_stream_ndjson(el_mock):
    headers = {"xi-api-key": el_mock.api_key}
    doc = httpx.post(f"{el_mock.url}/v1/text-to-speech/v/with-timestamps", json={"text": "hola"},
                     headers=headers).json()
    a = doc["alignment"]
    assert len(a["characters"]) == len(a["character_start_times_seconds"]) == len(a["character_end_times_seconds"]) == 4
    assert base64.b64decode(doc["audio_base64"])[:3] == b"ID3"
    r = httpx.post(f"{el_mock.url}/v1/text-to-speech/v/stream/with-timestamps", json={"text": "hola"}, headers=headers)
    assert r.headers["transfer-encoding"] == "chunked" and json.loads(r.text.splitlines()[0])["alignment"]
    assert {"request-id", "character-cost", "current-concurrent-requests"} <= set(r.headers)
    assert httpx.post(f"{el_mock.url}/v1/text-to-speech/v", json={"text": "x"}).json() == {
        "detail": {"status": "invalid_api_key", "message": "Invalid API key"}}


def test_sync_idempotency_rules(sync_mock):
    h = {"x-api-key": sync_mock.api_key}
    body = {"model": "lipsync-2", "input": [{"type": "video", "url": "v"}, {"type": "audio", "url": "a"}]}
    first = httpx.post(f"{sync_mock.url}/v2/generate", json=body, headers=h | {"Idempotency-Key": "k-1"})
    again = httpx.post(f"{sync_mock.url}/v2/generate", json=body, headers=h | {"Idempotency-Key": "k-1"})
    other = httpx.post(f"{sync_mock.url}/v2/generate", json=body | {"model": "react-1"},
                       headers=h | {"Idempotency-Key": "k-1"})
    bad = httpx.post(f"{sync_mock.url}/v2/generate", json=body, headers=h | {"Idempotency-Key": "bad key!"})
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert bad.status_code == 400 and bad.json()["errorCode"] == "INVALID_IDEMPOTENCY_KEY"
    invalid = httpx.post(f"{sync_mock.url}/v2/generate", json={"model": "nope", "input": []}, headers=h).json()
    assert invalid["statusCode"] == 400 and len(invalid["message"]) == 3 and invalid["error"] == "Bad Request"


def test_sync_concurrency_limit_answers_429_active_job_limit():
    with SyncMock(concurrency_limit=1) as mock:
        h = {"x-api-key": mock.api_key}
        body = {"model": "lipsync-2", "input": [{"type": "video", "url": "v"}, {"type": "audio", "url": "a"}]}
        assert httpx.post(f"{mock.url}/v2/generate", json=body, headers=h).status_code == 201
        second = httpx.post(f"{mock.url}/v2/generate", json=body, headers=h)
        assert second.status_code == 429 and second.json()["message"] == "Active job limit reached"


def test_higgsfield_validation_unknown_model_and_cancel(hf_mock):
    h = {"authorization": hf_mock.auth}
    r = httpx.post(f"{hf_mock.url}/higgsfield-ai/speak", json={"duration": 7}, headers=h)
    assert r.status_code == 422
    assert {d["msg"] for d in r.json()["detail"]} == {"Field required", "Input should be 5, 10 or 15"}
    assert httpx.post(f"{hf_mock.url}/higgsfield-ai/speak/standard", json={}, headers=h).json() == {
        "detail": "model_not_found"}
    assert httpx.post(f"{hf_mock.url}/higgsfield-ai/speak", json={}).status_code == 401
    # A queued request can be canceled (202), a running one not (400)
    slots = [httpx.post(f"{hf_mock.url}/files/generate-upload-url", json={"content_type": c}, headers=h).json()
             for c in ("image/png", "audio/wav")]
    httpx.put(slots[0]["upload_url"], content=b"\x89PNG....")
    httpx.put(slots[1]["upload_url"], content=b"MP3 bytes, not a wav")
    wrong = httpx.post(f"{hf_mock.url}/higgsfield-ai/speak", headers=h, json={
        "image_url": slots[0]["public_url"], "audio_url": slots[1]["public_url"], "prompt": "p"})
    assert wrong.status_code == 400 and wrong.json() == {"detail": "invalid_audio_format"}
    httpx.put(slots[1]["upload_url"], content=b"RIFF\0\0\0\0WAVEfmt ")
    sent = httpx.post(f"{hf_mock.url}/higgsfield-ai/speak", headers=h, json={
        "image_url": slots[0]["public_url"], "audio_url": slots[1]["public_url"], "prompt": "p", "typo_field": 1}).json()
    assert sent["status"] == "queued" and sent["status_url"].startswith(hf_mock.url)
    assert httpx.post(sent["cancel_url"], headers=h).status_code == 202
    sent2 = httpx.post(f"{hf_mock.url}/higgsfield-ai/speak", headers=h, json={
        "image_url": slots[0]["public_url"], "audio_url": slots[1]["public_url"], "prompt": "p"}).json()
    httpx.get(sent2["status_url"], headers=h)
    assert httpx.post(sent2["cancel_url"], headers=h).status_code == 400


def test_heygen_checks_content_type_against_the_bytes(heygen_mock):
    h = {"x-api-key": heygen_mock.api_key}
    r = httpx.post(f"{heygen_mock.url}/v3/assets", headers=h, files={"file": ("a.png", b"\x89PNG....", "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    assert "image/png != image/jpeg" in r.json()["error"]["message"]
    both = httpx.post(f"{heygen_mock.url}/v3/videos", headers=h, json={
        "type": "avatar", "avatar_id": "a", "script": "hola", "audio_url": "u"})
    assert both.status_code == 400 and both.json()["error"]["param"] == "audio"


class _Sink:
    """A webhook receiver counting deliveries."""

    def __init__(self):
        self.bodies, sink = [], self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                sink.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.mark.parametrize("mode,expected", [("once", 1), ("duplicate", 2), ("none", 0)])
def test_sync_webhooks_once_duplicated_or_missing(sync_mock, mode, expected):
    sink = _Sink()
    try:
        sync_mock.book.webhook = mode
        h = {"x-api-key": sync_mock.api_key}
        gen = httpx.post(f"{sync_mock.url}/v2/generate", headers=h, json={
            "model": "lipsync-2", "webhookUrl": sink.url,
            "input": [{"type": "video", "url": "v"}, {"type": "audio", "url": "a"}]}).json()
        statuses = [httpx.get(f"{sync_mock.url}/v2/generate/{gen['id']}", headers=h).json()["status"] for _ in range(4)]
        assert statuses == ["PENDING", "PROCESSING", "COMPLETED", "COMPLETED"]
        time.sleep(0.3)
        assert len(sink.bodies) == expected
        assert all(b["id"] == gen["id"] and b["status"] == "COMPLETED" for b in sink.bodies)
    finally:
        sink.server.shutdown()


def test_mocks_start_on_free_loopback_ports():
    mocks = [ElevenLabsMock().start(), SyncMock().start(), HiggsfieldMock().start(), HeyGenMock().start()]
    try:
        urls = [m.url for m in mocks]
        assert len(set(urls)) == 4 and all(u.startswith("http://127.0.0.1:") for u in urls)
    finally:
        for m in mocks:
            m.stop()
