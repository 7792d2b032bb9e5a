"""Webhooks against a loopback receiver (http.server on 127.0.0.1): signature, retries, throttling."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from pydantic import SecretStr

from node.records import JobState
from node.input_guard import Allowlist
from node.webhooks import EVENT_HEADER, SIGNATURE_HEADER, WebhookSender, sign, verify
from tests.fleet.conftest import job_request, wait_for

SECRET = "whsec-test-5b2f"


class Receiver:
    """Records every POST; answers with `statuses` in turn (the last one repeats)."""

    def __init__(self, statuses=(200,), delay_s: float = 0.0):
        self.requests: list[dict] = []
        self.statuses, self.delay_s = list(statuses), delay_s
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
                time.sleep(receiver.delay_s)
                status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made = []

    def make(*args, **kwargs) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


LOOPBACK = Allowlist.parse("127.0.0.1")  # the receivers of these tests listen on loopback


def test_a_webhook_to_a_private_address_is_never_posted_unless_allowed(receiver_factory):
    # Given a receiver on loopback (as an attacker's name rebound to 127.0.0.1 after the submit)
    receiver = receiver_factory()
    guarded = WebhookSender(None, base_delay_s=0.01)  # URL_ALLOWLIST empty: public addresses only
    guarded.send(receiver.url, "job.succeeded", {"video_id": "v1"})
    guarded.close(5)
    # Then nothing reaches it; with the address allowed it does, and by the URL's own Host
    assert receiver.requests == [] and guarded.dropped == 1
    allowed = WebhookSender(None, allowlist=LOOPBACK, base_delay_s=0.01)
    allowed.send(receiver.url, "job.succeeded", {"video_id": "v1"})
    allowed.close(5)
    [request] = receiver.requests
    assert request["headers"]["Host"] == receiver.url.split("/")[2]


def test_signature_is_hmac_sha256_over_the_exact_body(receiver_factory):
    # Given a receiver and a sender with a secret
    receiver = receiver_factory()
    sender = WebhookSender(SecretStr(SECRET), allowlist=LOOPBACK, base_delay_s=0.01)
    # When one event is sent
    sender.send(receiver.url, "job.succeeded", {"video_id": "v1", "state": "succeeded"})
    assert sender.close(5) == 0
    # Then the receiver can verify the signature over the raw body, and a tampered body fails
    [request] = receiver.requests
    header = request["headers"][SIGNATURE_HEADER]
    assert verify(SECRET.encode(), request["body"], header)
    assert not verify(SECRET.encode(), request["body"].replace(b"v1", b"v2"), header)
    assert not verify(b"other-secret", request["body"], header)
    assert header == sign(SECRET.encode(), request["body"]) and header.startswith("sha256=")
    body = json.loads(request["body"])
    assert body["event"] == "job.succeeded" and body["video_id"] == "v1" and "created_at" in body
    assert request["headers"][EVENT_HEADER] == "job.succeeded"
    assert SECRET not in request["body"].decode()


def test_server_errors_are_retried_with_backoff_then_delivered(receiver_factory):
    # Given a receiver that fails twice with 503 and then accepts
    receiver = receiver_factory(statuses=(503, 503, 200))
    sender = WebhookSender(SecretStr(SECRET), allowlist=LOOPBACK, base_delay_s=0.1, rand=lambda: 1.0)
    # When an event is sent
    sender.send(receiver.url, "job.failed", {"video_id": "v2"})
    wait_for(lambda: sender.delivered == 1, 10, "the delivery")
    sender.close(1)
    # Then it arrived on the third POST, same body and signature each time, after 0.1 s and 0.2 s
    bodies = {r["body"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(bodies) == 1
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps


def test_client_errors_are_not_retried_and_attempts_are_bounded(receiver_factory):
    rejecting, broken = receiver_factory(statuses=(400,)), receiver_factory(statuses=(500,))
    sender = WebhookSender(None, allowlist=LOOPBACK, base_delay_s=0.01, max_attempts=3)
    sender.send(rejecting.url, "job.succeeded", {"video_id": "v3"})
    sender.send(broken.url, "job.succeeded", {"video_id": "v3"})
    wait_for(lambda: sender.dropped == 2, 10, "both to be given up")
    sender.close(1)
    assert len(rejecting.requests) == 1 and len(broken.requests) == 3
    # without WEBHOOK_SECRET the body goes unsigned
    assert SIGNATURE_HEADER not in rejecting.requests[0]["headers"]


def test_send_never_blocks_on_a_slow_receiver(receiver_factory):
    receiver = receiver_factory(delay_s=0.5)
    sender = WebhookSender(SecretStr(SECRET), allowlist=LOOPBACK)
    started = time.perf_counter()
    for i in range(20):
        sender.send(receiver.url, "job.progress", {"video_id": f"v{i}"})
    assert time.perf_counter() - started < 0.1
    sender.close(0.2)


def test_a_job_posts_throttled_progress_and_its_final_status(queue, fleet_settings, media, start_worker,
                                                             receiver_factory):
    # Given a job with a webhook_url and a render reporting progress every 50 ms for 2.5 s
    receiver = receiver_factory()
    sender = WebhookSender(SecretStr(SECRET), allowlist=LOOPBACK, base_delay_s=0.05)

    def render(job, output, progress, should_stop):
        for done in range(1, 51):
            time.sleep(0.05)
            progress(done, 50)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"v")

        class Result:
            status, error = "succeeded", None

            def as_dict(self):
                return {"status": "succeeded"}
        return Result()

    queue.submit(job_request(media, "hooked", webhook_url=receiver.url))
    start_worker(render, webhooks=sender)
    wait_for(lambda: queue.record("hooked").state is JobState.succeeded, 15, "the job")
    sender.close(5)
    # Then progress events came at most once a second, then one final event, all signed
    events = [json.loads(r["body"]) for r in receiver.requests]
    assert [e["event"] for e in events][-1] == "job.succeeded"
    progress_at = [r["at"] for r, e in zip(receiver.requests, events) if e["event"] == "job.progress"]
    assert 2 <= len(progress_at) <= 3, progress_at
    assert all(b - a >= 0.95 for a, b in zip(progress_at, progress_at[1:]))
    assert all(verify(SECRET.encode(), r["body"], r["headers"][SIGNATURE_HEADER]) for r in receiver.requests)
    final = events[-1]
    assert final["video_id"] == "hooked" and final["result"]["output"].endswith("hooked/1.mp4")
