"""Audio and avatars given as https:// or s3:// URLs: fetched with a size cap, a content-type check,
the SSRF guard and no redirects, then checked as media; a bad URL is dead at once, an origin that
fails is retried, and the worker keeps serving."""

from __future__ import annotations

import http.server
import threading

import boto3
import pytest

from node.errors import InvalidInput
from node.inputs import fetch_input
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.fleet.conftest import job_request, wait_for


class Origin:
    """A loopback web server: path -> (status, content type, body, extra headers)."""

    def __init__(self, routes: dict):
        self.routes = routes
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, ctype, body, extra = origin.routes.get(self.path, (404, "text/plain", b"no", {}))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in extra.items():
                    self.send_header(k, v)
                if "Content-Length" not in extra:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin(media):
    speech, avatar = media["speech"].read_bytes(), media["avatar"].read_bytes()
    server = Origin({
        "/speech.wav": (200, "audio/wav", speech, {}),
        "/avatar.mp4": (200, "video/mp4", avatar, {}),
        "/page.wav": (200, "text/html", b"<html></html>", {}),
        "/noise.wav": (200, "audio/wav", b"\x00\x01" * 5000, {}),
        "/moved.wav": (302, "text/plain", b"", {"Location": "/speech.wav"}),
        "/huge.wav": (200, "audio/wav", b"", {"Content-Length": str(600 << 20)}),
        "/busy.wav": (503, "text/plain", b"later", {}),
    })
    yield server
    server.close()


def test_a_job_whose_audio_and_avatar_are_urls_renders(queue, media, fleet_settings, start_worker, origin):
    start_worker(renderer_render(Renderer(fleet_settings)))
    queue.submit(job_request(media, "by-url") | {"audio": f"{origin.base}/speech.wav",
                                                 "avatar": f"{origin.base}/avatar.mp4"})
    record = wait_for(lambda: (r := queue.record("by-url")) and r.terminal and r, 30, "the render")
    assert record.state is JobState.succeeded, record.error
    assert record.result["duration_s"] == pytest.approx(0.3, abs=0.05)


@pytest.mark.parametrize("path, code", [
    ("/page.wav", "input_wrong_type"),
    ("/moved.wav", "input_redirect"),
    ("/missing.wav", "input_not_found"),
    ("/huge.wav", "input_too_large"),
    ("/noise.wav", "audio_unreadable"),  # the right type, but not audio: the media checks still run
])
def test_bad_urls_are_the_clients_input(queue, media, fleet_settings, start_worker, origin, path, code):
    start_worker(renderer_render(Renderer(fleet_settings)))
    queue.submit(job_request(media, "bad-url") | {"audio": f"{origin.base}{path}"})
    queue.submit(job_request(media, "after"))
    record = wait_for(lambda: (r := queue.record("bad-url")) and r.terminal and r, 30, "the bad job")
    assert (record.state, record.error["code"], record.attempts) == (JobState.dead, code, 1)
    assert wait_for(lambda: queue.record("after").state is JobState.succeeded, 30, "the next job")


def test_an_origin_that_fails_is_retried_and_a_private_one_refused(fleet_settings, origin, tmp_path):
    from node.inputs import InputUnavailable

    with pytest.raises(InputUnavailable):  # 5xx: transient, the job will retry
        fetch_input(f"{origin.base}/busy.wav", tmp_path, "audio", fleet_settings)
    strict = fleet_settings.model_copy(update={"url_allowlist": ""})
    with pytest.raises(InvalidInput) as e:  # loopback without URL_ALLOWLIST: never fetched
        fetch_input(f"{origin.base}/speech.wav", tmp_path, "audio", strict)
    assert e.value.code == "url_not_allowed"


def test_inputs_from_s3_urls(s3_settings, media, tmp_path):
    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url)
    client.put_object(Bucket=s3_settings.s3_bucket, Key="in/speech.wav", Body=media["speech"].read_bytes(),
                      ContentType="audio/wav")
    client.put_object(Bucket=s3_settings.s3_bucket, Key="in/page.wav", Body=b"<html>", ContentType="text/html")
    got = fetch_input(f"s3://{s3_settings.s3_bucket}/in/speech.wav", tmp_path, "audio", s3_settings)
    assert got.read_bytes() == media["speech"].read_bytes() and got.suffix == ".wav"
    for key, code in (("in/page.wav", "input_wrong_type"), ("in/absent.wav", "input_not_found")):
        with pytest.raises(InvalidInput) as e:
            fetch_input(f"s3://{s3_settings.s3_bucket}/{key}", tmp_path, "audio", s3_settings)
        assert e.value.code == code
    small = s3_settings.model_copy(update={"input_max_mb": 1})
    client.put_object(Bucket=s3_settings.s3_bucket, Key="in/big.wav", Body=b"\0" * (2 << 20), ContentType="audio/wav")
    with pytest.raises(InvalidInput) as e:
        fetch_input(f"s3://{s3_settings.s3_bucket}/in/big.wav", tmp_path, "audio", small)
    assert e.value.code == "input_too_large"
