"""`lipsync-node api`: a small HTTP front on the queue, for clients that cannot reach Redis.

    POST /v1/jobs        a job (node/assets/job.schema.json; video_id may be left out), bearer
                         token; `Idempotency-Key` header = the job's idempotency_key.
                         202 {video_id, state, created, status_url} for a new job, 200 for the
                         same job submitted again; Location: the status URL
    GET  /v1/jobs/{id}   the job's record, as `lipsync-node status --json` prints it (with
                         `output_url`, presigned, when outputs are on S3 and S3_PRESIGN_TTL_S is set)
    GET  /healthz        200 while the server runs (no token)

Errors are {"error": {"code", "message"}} with the codes the CLI uses: 400 invalid input (the job
model's codes), 401 no or a wrong token, 404 job_not_found, 409 idempotency_conflict, 411/413
length, 415 not JSON, 503 Redis unreachable. No API_TOKEN, no start: the server never runs open.
Built on the standard library's threading HTTP server (as the health endpoints are): two routes
behind a reverse proxy need no framework, and every request is one queue call.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from node.errors import InvalidInput, JobConflict, JobNotFound, LipsyncError, QueueUnavailable
from node.queue import RedisQueue
from node.storage import build_store, with_output_url

log = logging.getLogger(__name__)

JOB_PATH_RE = re.compile(r"^/v1/jobs/(?P<video_id>[^/?]+)$")
#: bytes of request body accepted beyond the queue's payload limit (the JSON's own whitespace).
BODY_SLACK_BYTES = 1024


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: Our errors as HTTP statuses, most specific first (JobConflict and JobNotFound are InvalidInput).
ERROR_STATUS = ((JobConflict, HTTPStatus.CONFLICT), (JobNotFound, HTTPStatus.NOT_FOUND),
                (InvalidInput, HTTPStatus.BAD_REQUEST), (QueueUnavailable, HTTPStatus.SERVICE_UNAVAILABLE),
                (LipsyncError, HTTPStatus.INTERNAL_SERVER_ERROR))


def _status_of(error: Exception) -> HTTPStatus:
    if isinstance(error, ApiError):
        return error.status
    return next(status for kind, status in ERROR_STATUS if isinstance(error, kind))


def serve_api(queue: RedisQueue, token: str, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the API on `host:port` (0 picks a free port: `server.server_port`); returns the server."""
    if not token:
        raise InvalidInput("api_token_missing", "API_TOKEN is not set: the API never runs without a token")
    max_body = queue.settings.queue_max_payload_bytes + BODY_SLACK_BYTES
    store = build_store(queue.settings)
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self._handle(self._post)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                return self._reply(HTTPStatus.OK, {"ok": True})
            self._handle(self._get)

        def _handle(self, route) -> None:
            try:
                self._authorise()
                route()
            except (ApiError, LipsyncError) as e:
                self._reply(_status_of(e), {"error": {"code": e.code, "message": e.message}})

        def _authorise(self) -> None:
            given = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, expected):  # constant time: no timing oracle on the token
                raise ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", "a valid 'Authorization: Bearer <API_TOKEN>' "
                               "header is required")

        def _post(self) -> None:
            if self.path != "/v1/jobs":
                raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no route POST {self.path}")
            request = self._json_body()
            key = self.headers.get("Idempotency-Key")
            if key is not None:
                if request.get("idempotency_key") not in (None, key):
                    raise ApiError(HTTPStatus.BAD_REQUEST, "idempotency_key_mismatch",
                                   "the Idempotency-Key header and the body's idempotency_key differ")
                request["idempotency_key"] = key
            submitted = queue.submit(request)
            url = f"/v1/jobs/{submitted.video_id}"
            self._reply(HTTPStatus.ACCEPTED if submitted.created else HTTPStatus.OK,
                        {"video_id": submitted.video_id, "state": submitted.state, "created": submitted.created,
                         "status_url": url}, location=url)

        def _get(self) -> None:
            match = JOB_PATH_RE.match(self.path)
            if not match:
                raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no route GET {self.path}")
            record = queue.record(match["video_id"])
            if record is None:
                raise JobNotFound(match["video_id"])
            self._reply(HTTPStatus.OK, with_output_url(record.as_dict(), store))

        def _json_body(self) -> dict:
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "send the job as Content-Type: application/json")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required", "a Content-Length header is required")
            if int(length) > max_body:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
                               f"the body is {length} bytes; the limit is {max_body}")
            try:
                body = json.loads(self.rfile.read(int(length)).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ApiError(HTTPStatus.BAD_REQUEST, "invalid_json", f"the body is not UTF-8 JSON: {e}"[:200]) from None
            if not isinstance(body, dict):
                raise ApiError(HTTPStatus.BAD_REQUEST, "invalid_job", "a job must be a JSON object")
            return body

        def _reply(self, status: HTTPStatus, body: dict, location: str | None = None) -> None:
            payload = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args) -> None:  # one line per request, never the headers
            log.info("api %s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="api-http", daemon=True).start()
    log.info("api on %s:%d (POST /v1/jobs, GET /v1/jobs/{id})", host, server.server_port)
    return server
