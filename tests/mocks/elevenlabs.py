"""ElevenLabs text-to-speech mock (PROVIDERS.md sections 1 and 6).

    POST /v1/text-to-speech/{voice_id}                       audio bytes (audio/mpeg for mp3)
    POST /v1/text-to-speech/{voice_id}/stream                same, chunked
    POST /v1/text-to-speech/{voice_id}/with-timestamps       {audio_base64, alignment, normalized_alignment}
    POST /v1/text-to-speech/{voice_id}/stream/with-timestamps   NDJSON, one chunk per line

`xi-api-key` is checked (401 invalid_api_key), `text` is required (422 FastAPI list), the
per-model character limit is enforced (400 max_character_limit_exceeded), and every reply has
request-id, character-cost and the concurrency headers. `concurrency_limit` makes requests over
that many in flight answer 429 too_many_concurrent_requests. Fault helpers build each 429
variant (legacy `status` and new `code`) with or without Retry-After.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time

from tests.mocks import media
from tests.mocks._server import Fault, MockProvider, Reply, Request

#: characters per request, by model (models.mdx, 2025-08).
CHARACTER_LIMITS = {"eleven_v3": 3000, "eleven_flash_v2_5": 40000, "eleven_turbo_v2_5": 40000,
                    "eleven_flash_v2": 30000, "eleven_turbo_v2": 30000, "eleven_multilingual_v2": 10000,
                    "eleven_multilingual_v1": 10000, "eleven_monolingual_v1": 10000}


def error(status: int, code: str, message: str, *, legacy: bool = False, retry_after: str | None = None) -> Fault:
    """An ElevenLabs error reply: the new {type, code, message, status, request_id} shape, or the
    legacy {status, message} one."""
    detail = ({"status": code, "message": message} if legacy else
              {"type": "rate_limit_error" if status == 429 else "error", "code": code, "message": message,
               "status": code, "request_id": "req_mock"})
    return Fault(status, {"detail": detail}, {"Retry-After": retry_after} if retry_after else {})


def too_many_concurrent(retry_after: str | None = None) -> Fault:
    return error(429, "too_many_concurrent_requests", "Too many concurrent requests", legacy=True,
                 retry_after=retry_after)


def concurrent_limit_exceeded(retry_after: str | None = None) -> Fault:
    return error(429, "concurrent_limit_exceeded", "Concurrent request limit exceeded", retry_after=retry_after)


def system_busy(retry_after: str | None = None) -> Fault:
    return error(429, "system_busy", "The system is experiencing heavy traffic, please try again", legacy=True,
                 retry_after=retry_after)


def rate_limited(retry_after: str | None = None) -> Fault:
    return error(429, "rate_limit_exceeded", "Rate limit exceeded", retry_after=retry_after)


class ElevenLabsMock(MockProvider):
    name = "elevenlabs"

    def __init__(self, api_key: str = "el-test-key", concurrency_limit: int | None = None):
        super().__init__()
        self.api_key, self.concurrency_limit = api_key, concurrency_limit
        self.in_flight = 0
        self.bodies: list[dict] = []
        self._ids = itertools.count(1)
        self._flight_lock = threading.Lock()
        self.hold_s = 0.0  # seconds each accepted request takes (to make concurrency observable)

    def route(self, request: Request) -> str:
        return "tts" if request.path.startswith("/v1/text-to-speech/") else "other"

    def handle(self, route: str, request: Request) -> Reply:
        if route != "tts" or request.method != "POST":
            return Reply(404, {"detail": "Not Found"})
        if request.headers.get("xi-api-key") != self.api_key:
            return Reply(401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})
        try:
            body = request.json()
        except ValueError:
            return Reply(422, {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]})
        if not isinstance(body, dict) or not body.get("text"):
            return Reply(422, {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]})
        model = body.get("model_id") or "eleven_multilingual_v2"
        limit = CHARACTER_LIMITS.get(model, 10000)
        if len(body["text"]) > limit:
            return Reply(400, {"detail": {"status": "max_character_limit_exceeded",
                                          "message": f"Text is {len(body['text'])} characters; {model} takes {limit}"}})
        with self._flight_lock:
            if self.concurrency_limit is not None and self.in_flight >= self.concurrency_limit:
                return too_many_concurrent_reply()
            self.in_flight += 1
            current = self.in_flight
        try:
            if self.hold_s:
                time.sleep(self.hold_s)
            self.bodies.append(body)
            return self._audio(request, body, current)
        finally:
            with self._flight_lock:
                self.in_flight -= 1

    def _audio(self, request: Request, body: dict, current: int) -> Reply:
        fmt = request.query.get("output_format", "mp3_44100_128")
        headers = {"request-id": f"req_{next(self._ids):05d}", "character-cost": str(len(body["text"])),
                   "current-concurrent-requests": str(current),
                   "maximum-concurrent-requests": str(self.concurrency_limit or 10)}
        try:
            audio, ctype = media.audio_for(fmt)
        except ValueError as e:
            return Reply(400, {"detail": {"status": "invalid_output_format", "message": str(e)}})
        path = request.path.removeprefix("/v1/text-to-speech/")
        if path.endswith("/with-timestamps"):
            alignment = _alignment(body["text"])
            doc = {"audio_base64": base64.b64encode(audio).decode(), "alignment": alignment,
                   "normalized_alignment": alignment}
            if path.endswith("/stream/with-timestamps"):
                return Reply(200, (json.dumps(doc) + "\n").encode(), headers, "application/x-ndjson", chunked=True)
            return Reply(200, doc, headers)
        return Reply(200, audio, headers, ctype, chunked=path.endswith("/stream"))


def too_many_concurrent_reply() -> Reply:
    fault = too_many_concurrent()
    return Reply(fault.status, fault.body, fault.headers)


def _alignment(text: str) -> dict:
    step = media.SPEECH_S / max(len(text), 1)
    return {"characters": list(text),
            "character_start_times_seconds": [round(i * step, 3) for i in range(len(text))],
            "character_end_times_seconds": [round((i + 1) * step, 3) for i in range(len(text))]}
