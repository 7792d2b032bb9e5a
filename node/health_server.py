"""The worker's HTTP endpoints on one port: `/healthz`, `/readyz` and `/metrics`.

    GET /healthz   200 unless DEFUNCT (503): the process and its loops are alive; a Kubernetes
                   liveness probe or Docker HEALTHCHECK restarts a DEFUNCT node
    GET /readyz    200 only when READY (models loaded, a slot free, not draining) and Redis
                   answers and TEMP_DIR, OUTPUT_DIR and AVATAR_CACHE_DIR have MIN_FREE_DISK_MB free;
                   `/readyz?busy=ok` also accepts BUSY (the image's HEALTHCHECK: busy is healthy)
    GET /metrics   Prometheus text (node/metrics.py), the node's state among it

Bodies are JSON with the state and, when not ready, the reasons. The server runs on daemon threads
(the standard library's ThreadingHTTPServer: three routes need no framework), so a slow probe never
holds up a render and the process exits without waiting for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from node.config import Settings
from node.node_state import NodeState, NodeStatus

log = logging.getLogger(__name__)

#: seconds a Redis answer is reused: probes every few seconds from several sources must not each
#: cost a round trip, and a Redis that just went away is noticed within this long.
REDIS_CHECK_TTL_S = 2.0


class ReadinessChecks:
    """Whether this node's dependencies answer: Redis (`ping`, raising when down) and free disk."""

    def __init__(self, settings: Settings, ping: Callable[[], object], clock: Callable[[], float] = time.monotonic):
        self.min_free_mb = settings.min_free_disk_mb
        self.dirs = watched_dirs(settings)
        self._ping, self._clock = ping, clock
        self._redis: tuple[float, str | None] = (float("-inf"), None)

    def failures(self) -> dict[str, str]:
        """{check: why it fails}; empty when every dependency is fine."""
        out = {}
        redis_problem = self._redis_problem()
        if redis_problem:
            out["redis"] = redis_problem
        for name, folder in self.dirs.items():
            free_mb = free_disk_mb(Path(folder))
            if free_mb < self.min_free_mb:
                out[f"disk:{name}"] = f"{free_mb:.0f} MiB free in {folder}; at least {self.min_free_mb} needed"
        return out

    def _redis_problem(self) -> str | None:
        checked_at, problem = self._redis
        if self._clock() - checked_at < REDIS_CHECK_TTL_S:
            return problem
        try:
            self._ping()
            problem = None
        except Exception as e:  # noqa: BLE001 - any failure to answer is "not reachable"
            problem = f"Redis unreachable: {type(e).__name__}"
        self._redis = (self._clock(), problem)
        return problem


def watched_dirs(settings: Settings) -> dict[str, Path]:
    """The folders a node writes to, whose free space MIN_FREE_DISK_MB bounds (readiness, health)."""
    return {"temp": settings.temp_dir, "output": settings.output_dir, "avatar_cache": settings.avatar_cache_dir}


def free_disk_mb(folder: Path) -> float:
    """Free MiB on the filesystem that holds `folder` (or its nearest existing parent)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free / (1 << 20)


def serve_health(status: NodeStatus, checks: ReadinessChecks, port: int, host: str = "0.0.0.0",
                 queue=None) -> ThreadingHTTPServer:
    """Start the endpoints on `host:port` (port 0 picks a free one: `server.server_port`); with
    `queue`, /metrics also reports the fleet's queue depth."""
    from node.metrics import render_metrics

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                body = status.as_dict()
                self._json(HTTPStatus.SERVICE_UNAVAILABLE if body["state"] == NodeState.defunct.value
                           else HTTPStatus.OK, body)
            elif path == "/readyz":
                body = status.as_dict()
                reasons = checks.failures()
                # `?busy=ok`: a container health check of a pull worker, for which a node whose
                # slots are all rendering is healthy (a Kubernetes readiness probe omits it).
                accepted = {NodeState.ready.value} | ({NodeState.busy.value} if "busy=ok" in self.path else set())
                if body["state"] not in accepted:
                    reasons = {"state": f"node is {body['state']}"} | reasons
                self._json(HTTPStatus.SERVICE_UNAVAILABLE if reasons else HTTPStatus.OK,
                           body | {"ready": not reasons, "reasons": reasons})
            elif path == "/metrics":
                payload, content_type = render_metrics(status, queue)
                self._send(HTTPStatus.OK, payload, content_type)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not_found", "routes": ["/healthz", "/readyz", "/metrics"]})

        def _json(self, code: HTTPStatus, body: dict) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: HTTPStatus, payload: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args) -> None:  # probes every few seconds: not worth a log line
            log.debug("health %s", fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    log.info("health endpoints on %s:%d (/healthz, /readyz, /metrics)", host, server.server_port)
    return server
