"""HeyGen v3 mock (PROVIDERS.md sections 3.B and 6).

    POST /v3/assets          multipart `file` (<= 32 MB); the part's Content-Type must match the
                             bytes -> {"data": {"asset_id", "url", "mime_type", "size_bytes"}}
    POST /v3/videos          {"type": "image" | "avatar", ...} with exactly one driver (script,
                             audio_url or audio_asset_id); Idempotency-Key replayed (a different
                             body under the same key -> 409 conflict)
                             -> {"data": {"video_id", "status": "waiting", "output_format"}}
    GET  /v3/videos/{id}     pending -> processing -> completed (video_url) | failed
                             (failure_code / failure_message, both null when fail_silently)

`x-api-key` is checked. Errors: {"error": {"code", "message", "param", "doc_url"}}. Over
`concurrency_limit` active videos: 429 rate_limit_exceeded with Retry-After. The asset upload
host is the same server (HEYGEN_UPLOAD_URL points here too).
"""

from __future__ import annotations

import hashlib
import itertools
import json

from tests.mocks._jobs import JobBook, MockGeneration
from tests.mocks._server import Fault, MockProvider, Reply, Request

MAX_ASSET_BYTES = 32 * 1024 * 1024
_SNIFF = [(b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "audio/wav"),
          (b"ID3", "audio/mpeg"), (b"\xff\xfb", "audio/mpeg"), (b"\xff\xf3", "audio/mpeg")]


def error(status: int, code: str, message: str, param: str | None = None, retry_after: str | None = None) -> Fault:
    body = {"error": {"code": code, "message": message, "param": param,
                      "doc_url": f"https://developers.heygen.com/docs/error-codes#{code}"}}
    return Fault(status, body, {"Retry-After": retry_after} if retry_after else {})


def rate_limited(retry_after: str | None = "1") -> Fault:
    return error(429, "rate_limit_exceeded", "Too many concurrent video jobs", retry_after=retry_after)


class HeyGenMock(MockProvider):
    name = "heygen"

    def __init__(self, api_key: str = "heygen-test-key", concurrency_limit: int = 10):
        super().__init__()
        self.api_key, self.concurrency_limit = api_key, concurrency_limit
        self.book = JobBook("vid", ["pending", "processing"], "completed", "failed")
        self.assets: dict[str, tuple[str, int]] = {}
        self.idempotency: dict[str, tuple[str, str]] = {}
        self._assets = itertools.count(1)

    def route(self, request: Request) -> str:
        if request.path == "/v3/assets":
            return "asset"
        if request.path == "/v3/videos":
            return "create"
        if request.path.startswith("/v3/videos/"):
            return "status"
        if request.path.startswith("/outputs/"):
            return "download"
        return "other"

    def handle(self, route: str, request: Request) -> Reply:
        if route == "download":
            return self.book.serve_output(request.path, request.query)
        if request.headers.get("x-api-key") != self.api_key:
            return _reply(error(401, "unauthorized", "Invalid API key"))
        if route == "asset" and request.method == "POST":
            return self._asset(request)
        if route == "create" and request.method == "POST":
            return self._create(request)
        if route == "status" and request.method == "GET":
            gen = self.book.jobs.get(request.path.rsplit("/", 1)[-1])
            if gen is None:
                return _reply(error(404, "video_not_found", "Video not found"))
            status = self.book.poll(gen)
            doc = {"data": self._video(gen, status)}
            if gen.terminal:
                event = "avatar_video.success" if status == "completed" else "avatar_video.fail"
                self.book.notify(gen, {"event_type": event, "event_data": {
                    "video_id": gen.id, "url": doc["data"]["video_url"], "callback_id": gen.request.get("callback_id")}})
            return Reply(200, doc)
        return _reply(error(404, "not_found", f"{request.method} {request.path} does not exist"))

    def _asset(self, request: Request) -> Reply:
        _, files = request.form()
        if "file" not in files:
            return _reply(error(400, "invalid_parameter", "file is required", "file"))
        _, declared, data = files["file"]
        if len(data) > MAX_ASSET_BYTES:
            return _reply(error(413, "payload_too_large", "Assets over 32 MB need a direct upload"))
        sniffed = next((m for magic, m in _SNIFF if data.startswith(magic)), "application/octet-stream")
        if declared != sniffed:
            return _reply(error(400, "invalid_parameter", f"Content type not match {sniffed} != {declared}", "file"))
        asset_id = f"asset_{next(self._assets):04d}"
        self.assets[asset_id] = (sniffed, len(data))
        return Reply(200, {"data": {"asset_id": asset_id, "url": f"{self.url}/assets/{asset_id}",
                                    "mime_type": sniffed, "size_bytes": len(data)}})

    def _create(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return _reply(error(400, "invalid_parameter", "Body is not valid JSON"))
        problem = self._validate(body if isinstance(body, dict) else {})
        if problem:
            return _reply(problem)
        key = request.headers.get("idempotency-key")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key and key in self.idempotency:
            seen, gen_id = self.idempotency[key]
            if seen != digest:
                return _reply(error(409, "conflict", "Idempotency-Key was used with a different request"))
            return Reply(200, {"data": {"video_id": gen_id, "status": "waiting", "output_format": "mp4"}})
        if self.book.active() >= self.concurrency_limit:
            return _reply(rate_limited("1"))
        gen = self.book.create(body, body.get("callback_url"))
        if key:
            self.idempotency[key] = (digest, gen.id)
        return Reply(200, {"data": {"video_id": gen.id, "status": "waiting", "output_format": "mp4"}})

    def _validate(self, body: dict) -> Fault | None:
        kind = body.get("type")
        if kind not in ("avatar", "image", "cinematic_avatar", "studio"):
            return error(400, "invalid_parameter", "type must be avatar, image, cinematic_avatar or studio", "type")
        if kind == "avatar" and not body.get("avatar_id"):
            return error(400, "invalid_parameter", "avatar_id is required for type avatar", "avatar_id")
        if kind == "image":
            image = body.get("image") or {}
            if image.get("type") == "asset_id" and image.get("asset_id") not in self.assets:
                return error(400, "invalid_parameter", "image asset not found", "image.asset_id")
            if image.get("type") not in ("asset_id", "url", "base64"):
                return error(400, "invalid_parameter", "image is required for type image", "image")
        drivers = [k for k in ("script", "audio_url", "audio_asset_id") if body.get(k)]
        if len(drivers) != 1:
            return error(400, "invalid_parameter", "give exactly one of script, audio_url or audio_asset_id", "audio")
        if body.get("audio_asset_id") and self.assets.get(body["audio_asset_id"], ("",))[0][:6] != "audio/":
            return error(400, "invalid_parameter", "audio asset not found", "audio_asset_id")
        if body.get("resolution", "1080p") not in ("4k", "1080p", "720p"):
            return error(400, "invalid_parameter", "resolution must be 4k, 1080p or 720p", "resolution")
        return None

    def _video(self, gen: MockGeneration, status: str) -> dict:
        done, failed = status == "completed", status == "failed"
        silent = self.book.outcome == "fail_silently"
        return {"id": gen.id, "status": status, "title": gen.request.get("title"),
                "video_url": self.book.output_url(self.url, gen) if done else None,
                "thumbnail_url": None, "duration": 1.0 if done else None,
                "failure_code": "avatar_not_found" if failed and not silent else None,
                "failure_message": "Could not detect a face in the image" if failed and not silent else None}


def _reply(fault: Fault) -> Reply:
    return Reply(fault.status, fault.body, fault.headers)
