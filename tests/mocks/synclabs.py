"""Sync (sync.so) lip-sync mock (PROVIDERS.md sections 2 and 6).

    POST /v2/generate        JSON (input URLs) or multipart (video, audio files + model, options);
                             Idempotency-Key: same key + same payload -> the same generation,
                             a different payload -> 409, a malformed key -> 400
                             INVALID_IDEMPOTENCY_KEY; over `concurrency_limit` active
                             generations -> 429 "Active job limit reached"
    GET  /v2/generate/{id}   PENDING -> PROCESSING -> COMPLETED | FAILED | REJECTED
    GET  /outputs/{id}.mp4   the signed output (see _jobs.JobBook for expiry)

Errors use Sync's NestJS envelope {"statusCode", "errorCode", "message", "error"}; `x-api-key`
is checked; a webhookUrl gets the Generation object when it is terminal.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone

from tests.mocks._jobs import JobBook, MockGeneration
from tests.mocks._server import Fault, MockProvider, Reply, Request

MODELS = {"lipsync-2", "lipsync-2-pro", "lipsync-1.9.0-beta", "react-1", "sync-3"}
_KEY_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_REASONS = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 409: "Conflict",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def error(status: int, code: str, message, retry_after: str | None = None) -> Fault:
    body = {"statusCode": status, "errorCode": code, "message": message, "error": _REASONS.get(status, "Error")}
    return Fault(status, body, {"Retry-After": retry_after} if retry_after else {})


def rate_limited(retry_after: str | None = None) -> Fault:
    return error(429, "rate_limit_exceeded", "Rate limit exceeded. Please try again later.", retry_after)


def active_job_limit(retry_after: str | None = None) -> Fault:
    return error(429, "concurrency_limit_exceeded", "Active job limit reached", retry_after)


class SyncMock(MockProvider):
    name = "synclabs"

    def __init__(self, api_key: str = "sync-test-key", concurrency_limit: int = 15):
        super().__init__()
        self.api_key, self.concurrency_limit = api_key, concurrency_limit
        self.book = JobBook("gen_", ["PENDING", "PROCESSING"], "COMPLETED", "FAILED")
        self.idempotency: dict[str, tuple[str, str]] = {}  # key -> (payload digest, generation id)

    def route(self, request: Request) -> str:
        if request.path == "/v2/generate":
            return "create"
        if request.path.startswith("/v2/generate/"):
            return "status"
        if request.path.startswith("/outputs/"):
            return "download"
        return "other"

    def handle(self, route: str, request: Request) -> Reply:
        if route == "download":
            return self.book.serve_output(request.path, request.query)
        if request.headers.get("x-api-key") != self.api_key:
            return _reply(error(401, "unauthorized", "Invalid or missing API key"))
        if route == "create" and request.method == "POST":
            return self._create(request)
        if route == "status" and request.method == "GET":
            gen = self.book.jobs.get(request.path.rsplit("/", 1)[-1])
            if gen is None:
                return _reply(error(404, "not_found", "Generation not found"))
            status = self.book.poll(gen)
            doc = self._generation(gen, status)
            if gen.terminal:
                self.book.notify(gen, doc)
            return Reply(200, doc)
        return _reply(error(404, "not_found", f"Cannot {request.method} {request.path}"))

    def _create(self, request: Request) -> Reply:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            fields, files = request.form()
            payload = {"model": fields.get("model"), "options": json.loads(fields.get("options") or "{}"),
                       "webhookUrl": fields.get("webhookUrl"),
                       "files": {k: hashlib.sha256(v[2]).hexdigest() for k, v in files.items()}}
            has_video, has_audio = "video" in files, "audio" in files
        else:
            try:
                payload = request.json()
            except ValueError:
                return _reply(error(400, "invalid_json", "Body is not valid JSON"))
            kinds = {i.get("type") for i in payload.get("input") or [] if isinstance(i, dict)}
            has_video, has_audio = bool(kinds & {"video", "image"}), bool(kinds & {"audio", "text"})
        problems = ([] if payload.get("model") in MODELS else [f"model must be one of {sorted(MODELS)}"])
        problems += [] if has_video else ["input must contain one video"]
        problems += [] if has_audio else ["input must contain at least one audio"]
        if problems:
            return _reply(error(400, "validation_error", problems))
        key = request.headers.get("idempotency-key")
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        if key is not None:
            if not _KEY_RE.match(key):
                return _reply(error(400, "INVALID_IDEMPOTENCY_KEY", "Idempotency-Key must be 1-128 of [A-Za-z0-9._~-]"))
            if key in self.idempotency:
                seen_digest, gen_id = self.idempotency[key]
                if seen_digest != digest:
                    return _reply(error(409, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key reused with another payload"))
                return Reply(200, self._generation(self.book.jobs[gen_id], "PENDING"))
        if self.book.active() >= self.concurrency_limit:
            return _reply(active_job_limit())
        gen = self.book.create(payload, payload.get("webhookUrl"))
        gen.extra["created_at"] = datetime.now(timezone.utc).isoformat()
        if key is not None:
            self.idempotency[key] = (digest, gen.id)
        return Reply(201, self._generation(gen, "PENDING"))

    def _generation(self, gen: MockGeneration, status: str) -> dict:
        done = status == "COMPLETED"
        failed = status in ("FAILED", "REJECTED")
        silent = self.book.outcome == "fail_silently"
        return {"id": gen.id, "createdAt": gen.extra.get("created_at"), "status": status,
                "model": gen.request.get("model"), "input": gen.request.get("input", []),
                "options": gen.request.get("options") or {}, "webhookUrl": gen.webhook_url,
                "outputUrl": self.book.output_url(self.url, gen) if done else None,
                "outputDuration": 1.0 if done else None, "segmentOutputUrl": None,
                "error": "Face not detected in the input video" if failed and not silent else None,
                "error_code": "face_not_detected" if failed and not silent else None}


def _reply(fault: Fault) -> Reply:
    return Reply(fault.status, fault.body, fault.headers)
