"""Audio and avatars given as https:// or s3:// URLs: fetched with a size cap, a content-type check,
the SSRF guard and no redirects, then checked as media; a bad URL is dead at once, an origin that
fails is retried, and the worker keeps serving."""

from __future__ import annotations

import boto3
import pytest

from node.errors import InvalidInput
from node.inputs import fetch_input
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.fleet.conftest import job_request, wait_for
from tests.mocks._server import MockProvider, Reply


class Origin(MockProvider):
    """A loopback web server (the provider mocks' server): path -> Reply."""

    name = "origin"

    def __init__(self, routes: dict[str, Reply]):
        super().__init__()
        self.routes = routes

    def route(self, request) -> str:
        return request.path

    def handle(self, route: str, request) -> Reply:
        return self.routes.get(route, Reply(404, b"no", content_type="text/plain"))


@pytest.fixture
def origin(media):
    speech, avatar = media["speech"].read_bytes(), media["avatar"].read_bytes()
    with Origin({
        "/speech.wav": Reply(200, speech, content_type="audio/wav"),
        "/avatar.mp4": Reply(200, avatar, content_type="video/mp4"),
        "/page.wav": Reply(200, b"<html></html>", content_type="text/html"),
        "/noise.wav": Reply(200, b"\x00\x01" * 5000, content_type="audio/wav"),
        "/moved.wav": Reply(302, b"", {"Location": "/speech.wav"}, content_type="text/plain"),
        # 2 MiB sent chunked, with no length to check first: the cap must hold while reading
        "/huge.wav": Reply(200, b"\x00" * (2 << 20), content_type="audio/wav", chunked=True),
        # and 2 MiB with its length declared: refused before a byte is read
        "/declared.wav": Reply(200, b"\x00" * (2 << 20), content_type="audio/wav"),
        "/busy.wav": Reply(503, b"later", content_type="text/plain"),
    }) as server:
        server.base = server.url
        yield server


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
    ("/declared.wav", "input_too_large"),
    ("/noise.wav", "audio_unreadable"),  # the right type, but not audio: the media checks still run
])
def test_bad_urls_are_the_clients_input(queue, media, fleet_settings, start_worker, origin, path, code):
    settings = fleet_settings.model_copy(update={"input_max_mb": 1})
    start_worker(renderer_render(Renderer(settings)), settings)
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
