"""The loopback HTTP server the provider mocks share, and their fault switches.

Each mock is a real `ThreadingHTTPServer` on 127.0.0.1 (a free port) in a daemon thread. A test
scripts faults per route with `mock.inject(route, Fault(...), ...)`: the next requests on that
route get them in order, before the mock's own logic runs (a `passthrough` fault runs the logic
after its delay: a slow response whose work still happens, i.e. a lost response).

    Fault(status=429, body={...}, headers={"Retry-After": "1"})   a canned error
    Fault(delay_s=2.0, passthrough=True)                           slow, but the work is done
    Fault(raw=b'{"id": "gen_', status=200)                         malformed JSON
    Fault(drop=True)                                               connection closed, no reply

`counts[route]` counts every request per route (scripted ones too), so tests can assert that no
create was sent twice.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> tuple[dict[str, str], dict[str, tuple[str, str, bytes]]]:
        """multipart/form-data -> (fields, files: name -> (filename, content type, bytes))."""
        head = f"Content-Type: {self.headers.get('content-type', '')}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        fields, files = {}, {}
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                files[name] = (part.get_filename(), part.get_content_type(), payload)
            else:
                fields[name] = payload.decode()
        return fields, files


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    chunked: bool = False


@dataclass
class Fault:
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    delay_s: float = 0.0
    passthrough: bool = False
    drop: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One buffered write per reply and no Nagle: headers and body in separate small packets
    # would meet the client's delayed ACK and cost 40 ms per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet: tests read counts, not logs
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, url.path, {k: v[-1] for k, v in parse_qs(url.query).items()},
                          {k.lower(): v for k, v in self.headers.items()}, body)
        reply = self.server.mock.dispatch(request)
        if reply is None:  # a dropped connection
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        if isinstance(reply.body, (bytes, bytearray)):
            data, ctype = bytes(reply.body), reply.content_type or "application/octet-stream"
        elif reply.body is None:
            data, ctype = b"", reply.content_type or "application/json"
        else:
            data, ctype = json.dumps(reply.body).encode(), reply.content_type or "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", ctype)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 4096):
                chunk = data[i:i + 4096]
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mock: "MockProvider"):
        self.mock = mock
        super().__init__(("127.0.0.1", 0), _Handler)


class MockProvider:
    """Subclasses implement `route(request) -> str` and `handle(route, request) -> Reply`."""

    name = "mock"

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[Request] = []
        self._script: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        self.lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "MockProvider":
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=f"mock-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- faults ----------------------------------------------------------------------------

    def inject(self, route: str, *faults: Fault) -> None:
        with self.lock:
            self._script[route].extend(faults)

    def dispatch(self, request: Request) -> Reply | None:
        route = self.route(request)
        with self.lock:
            self.counts[route] += 1
            self.requests.append(request)
            fault = self._script[route].popleft() if self._script[route] else None
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.drop:
                return None
            if not fault.passthrough:
                if fault.raw is not None:
                    return Reply(fault.status, fault.raw, fault.headers, "application/json")
                return Reply(fault.status, fault.body, fault.headers)
        return self.handle(route, request)

    def route(self, request: Request) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def handle(self, route: str, request: Request) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError


def deliver_webhook(url: str, payload: dict, mode: str) -> None:
    """POST `payload` to `url` in the background: mode once | duplicate | none."""
    if not url or mode == "none":
        return
    times = 2 if mode == "duplicate" else 1

    def send() -> None:
        for _ in range(times):
            req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=2).read()
            except OSError:
                pass  # a real provider retries; the node must not depend on webhooks anyway

    threading.Thread(target=send, daemon=True).start()
