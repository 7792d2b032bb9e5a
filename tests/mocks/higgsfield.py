"""Higgsfield mock: the model_id queue API with Speak (PROVIDERS.md sections 4 and 6).

    POST /files/generate-upload-url     {"content_type"} -> {public_url, upload_url}
    PUT  /uploads/{token}               raw bytes, no credentials (a presigned URL)
    GET  /files/{token}                 the uploaded bytes (the public URL)
    POST /higgsfield-ai/speak           flat body, ?hf_webhook= -> {status: queued, request_id,
                                        status_url, cancel_url} pointing back at this server
    GET  /requests/{id}/status          queued -> in_progress -> completed (video.url) | failed
                                        (error) | nsfw
    POST /requests/{id}/cancel          202 while queued, else 400
    POST /{anything else}               404 {"detail": "model_not_found"}

`Authorization: Key id:secret` is checked. Validation answers 422 {"detail": [...]}, including
"Input should be 5, 10 or 15" for duration; audio that is not WAV is 400 invalid_audio_format.
Unknown body fields are ignored, as the real API does.
"""

from __future__ import annotations

import itertools

from tests.mocks._jobs import JobBook, MockGeneration
from tests.mocks._server import Fault, MockProvider, Reply, Request

SPEAK_PATH = "/higgsfield-ai/speak"


def error(status: int, detail, retry_after: str | None = None) -> Fault:
    return Fault(status, {"detail": detail}, {"Retry-After": retry_after} if retry_after else {})


class HiggsfieldMock(MockProvider):
    name = "higgsfield"

    def __init__(self, key_id: str = "hf-id", key_secret: str = "hf-secret"):
        super().__init__()
        self.auth = f"Key {key_id}:{key_secret}"
        self.book = JobBook("req-", ["queued", "in_progress"], "completed", "failed")
        self.uploads: dict[str, tuple[str, bytes | None]] = {}  # token -> (content type, bytes)
        self._tokens = itertools.count(1)

    def route(self, request: Request) -> str:
        p = request.path
        if p == SPEAK_PATH:
            return "create"
        if p.startswith("/requests/") and p.endswith("/status"):
            return "status"
        if p.startswith("/requests/") and p.endswith("/cancel"):
            return "cancel"
        if p == "/files/generate-upload-url":
            return "upload_url"
        if p.startswith("/uploads/"):
            return "upload"
        if p.startswith("/files/"):
            return "file"
        if p.startswith("/outputs/"):
            return "download"
        return "other"

    def handle(self, route: str, request: Request) -> Reply:
        if route == "download":
            return self.book.serve_output(request.path, request.query)
        if route == "upload" and request.method == "PUT":  # presigned: no credentials expected
            token = request.path.rsplit("/", 1)[-1]
            if token not in self.uploads:
                return Reply(403, b"<Error><Code>AccessDenied</Code></Error>", content_type="application/xml")
            self.uploads[token] = (self.uploads[token][0], request.body)
            return Reply(200, b"")
        if route == "file":
            stored = self.uploads.get(request.path.rsplit("/", 1)[-1])
            return Reply(200, stored[1], content_type=stored[0]) if stored and stored[1] else Reply(404, b"")
        if request.headers.get("authorization") != self.auth:
            return _reply(error(401, "Unauthorized"))
        if route == "upload_url" and request.method == "POST":
            token = f"up{next(self._tokens):04d}"
            ctype = (request.json() or {}).get("content_type") or "application/octet-stream"
            self.uploads[token] = (ctype, None)
            return Reply(200, {"public_url": f"{self.url}/files/{token}", "upload_url": f"{self.url}/uploads/{token}"})
        if route == "create" and request.method == "POST":
            return self._submit(request)
        gen = self.book.jobs.get(request.path.split("/")[2]) if request.path.startswith("/requests/") else None
        if route == "status" and gen:
            status = self.book.poll(gen)
            doc = self._status(gen, status)
            if gen.terminal:
                self.book.notify(gen, doc)
            return Reply(200, doc)
        if route == "cancel" and gen:
            if gen.polls == 0 and not gen.terminal:
                gen.terminal = "canceled"
                return Reply(202, {"status": "canceled", "request_id": gen.id})
            return _reply(error(400, "Request can no longer be canceled"))
        if request.method == "POST" and route == "other":
            return _reply(error(404, "model_not_found"))
        return _reply(error(404, "Not Found"))

    def _submit(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            return _reply(error(422, [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]))
        body = body if isinstance(body, dict) else {}
        problems = [{"loc": ["body", f], "msg": "Field required", "type": "missing"}
                    for f in ("image_url", "audio_url", "prompt") if not body.get(f)]
        if body.get("duration", 5) not in (5, 10, 15):
            problems.append({"loc": ["body", "duration"], "msg": "Input should be 5, 10 or 15", "type": "literal_error"})
        if body.get("quality", "high") not in ("high", "mid"):
            problems.append({"loc": ["body", "quality"], "msg": "Input should be 'high' or 'mid'", "type": "literal_error"})
        if problems:
            return _reply(error(422, problems))
        audio = self._uploaded(body["audio_url"])
        if audio is None or audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
            return _reply(error(400, "invalid_audio_format"))
        if self._uploaded(body["image_url"]) is None:
            return _reply(error(400, "image_url is not reachable"))
        gen = self.book.create(body, request.query.get("hf_webhook"))
        return Reply(200, self._status(gen, "queued"))

    def _uploaded(self, url: str) -> bytes | None:
        if not url.startswith(f"{self.url}/files/"):
            return None
        stored = self.uploads.get(url.rsplit("/", 1)[-1])
        return stored[1] if stored else None

    def _status(self, gen: MockGeneration, status: str) -> dict:
        doc = {"status": status, "request_id": gen.id, "status_url": f"{self.url}/requests/{gen.id}/status",
               "cancel_url": f"{self.url}/requests/{gen.id}/cancel"}
        if status == "completed":
            doc["video"] = {"url": self.book.output_url(self.url, gen)}
        elif status == "failed" and self.book.outcome != "fail_silently":
            doc["error"] = "Generation failed: no face found in the input image"
        return doc


def _reply(fault: Fault) -> Reply:
    return Reply(fault.status, fault.body, fault.headers)
