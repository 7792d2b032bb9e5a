"""Sync lip-sync client against the loopback mock: the request it sends, resume semantics."""

from __future__ import annotations

import json

import httpx
import pytest

from providers._retry import CreateOutcomeUnknown
from providers.base import FileGenerationStore, ProviderError, idempotency_key
from providers.synclabs import SyncLabsLipSync
from tests.conftest import ffprobe_json, stream
from tests.mocks import Fault
from tests.providers.conftest import fast_limits, key


def client(mock, sleep, store, **limits) -> SyncLabsLipSync:
    return SyncLabsLipSync(key(mock.api_key), base_url=mock.url, limits=fast_limits(**limits), store=store,
                           sleep=sleep)


def test_generation_end_to_end(sync_mock, sleep, store, avatar, speech, tmp_path):
    # When a lip-sync runs against the mock
    result = client(sync_mock, sleep, store).lipsync(avatar, speech, tmp_path / "out.mp4", video_id="job-1")
    # Then it sent one multipart create with both files, the model, bounce mode and the job's key
    create = next(r for r in sync_mock.requests if r.path == "/v2/generate")
    fields, files = create.form()
    assert set(files) == {"video", "audio"} and files["video"][1] == "video/mp4" and files["audio"][1] == "audio/wav"
    assert fields["model"] == "lipsync-2" and json.loads(fields["options"]) == {"sync_mode": "bounce"}
    assert create.headers["idempotency-key"] == idempotency_key("job-1", "synclabs")
    assert create.headers["x-api-key"] == sync_mock.api_key
    # And it polled to COMPLETED, downloaded the signed output into our storage, and it is a video
    assert sync_mock.counts == {"create": 1, "status": 3, "download": 1}
    assert result.generation_id == "gen_0001" and store.get("job-1", "synclabs") == "gen_0001"
    assert stream(ffprobe_json(result.path), "video")["codec_name"] == "h264"


def test_download_does_not_send_our_key(sync_mock, sleep, store, avatar, speech, tmp_path):
    client(sync_mock, sleep, store).lipsync(avatar, speech, tmp_path / "out.mp4", video_id="job-1")
    download = next(r for r in sync_mock.requests if r.path.startswith("/outputs/"))
    assert "x-api-key" not in download.headers  # signed URLs go to CDNs: never hand them our key


def test_a_retried_job_resumes_its_stored_generation(sync_mock, sleep, tmp_path, avatar, speech):
    # Given a first attempt whose polling ran out of time (the generation was stuck)
    store = FileGenerationStore(tmp_path / "generations")
    sync_mock.book.outcome = "stuck"
    with pytest.raises(ProviderError) as e:
        client(sync_mock, sleep, store, deadline_s=0.5).lipsync(avatar, speech, tmp_path / "o.mp4", video_id="job-7")
    assert e.value.code == "generation_timeout"
    # When the job is retried later, by a new process (a new client), and the provider finished
    sync_mock.book.outcome = "complete"
    result = client(sync_mock, sleep, FileGenerationStore(tmp_path / "generations")).lipsync(
        avatar, speech, tmp_path / "o.mp4", video_id="job-7")
    # Then no second create was sent: it resumed polling the same generation
    assert sync_mock.counts["create"] == 1 and sync_mock.book.created == 1
    assert result.generation_id == "gen_0001" and "resumed generation gen_0001" in result.note


def test_a_lost_create_response_is_resolved_by_the_idempotency_key(sync_mock, sleep, store, avatar, speech,
                                                                   tmp_path):
    # Given a create whose response never arrives (the mock made the generation anyway)
    sync_mock.inject("create", Fault(delay_s=1.0, passthrough=True))
    slow = client(sync_mock, sleep, store, timeout=httpx.Timeout(0.4, connect=0.4))
    with pytest.raises(CreateOutcomeUnknown):
        slow.lipsync(avatar, speech, tmp_path / "o.mp4", video_id="job-9")
    assert store.get("job-9", "synclabs") is None  # nothing known yet
    # When the job is retried: the create is sent again with the same key
    result = client(sync_mock, sleep, store).lipsync(avatar, speech, tmp_path / "o.mp4", video_id="job-9")
    # Then Sync answered with the generation it already had: one generation, paid once
    assert sync_mock.book.created == 1 and result.generation_id == "gen_0001"
    assert sync_mock.counts["create"] == 2


def test_failed_generations_are_not_paid_for_twice(sync_mock, sleep, store, avatar, speech, tmp_path):
    sync_mock.book.outcome = "fail"
    for _ in range(2):  # the job and its retry
        with pytest.raises(ProviderError) as e:
            client(sync_mock, sleep, store).lipsync(avatar, speech, tmp_path / "o.mp4", video_id="job-3")
        assert e.value.code == "face_not_detected" and "Face not detected" in e.value.message
    assert sync_mock.counts["create"] == 1


def test_bad_key_is_permanent(sync_mock, sleep, store, avatar, speech, tmp_path):
    bad = SyncLabsLipSync(key("nope"), base_url=sync_mock.url, limits=fast_limits(), store=store, sleep=sleep)
    with pytest.raises(ProviderError) as e:
        bad.lipsync(avatar, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "unauthorized" and not e.value.retryable and sync_mock.counts["create"] == 1


def test_oversized_input_is_refused_before_any_request(sync_mock, sleep, store, speech, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (20 * 1024 * 1024 + 1))
    with pytest.raises(ProviderError) as e:
        client(sync_mock, sleep, store).lipsync(big, speech, tmp_path / "o.mp4", video_id="j")
    assert e.value.code == "input_too_large" and sync_mock.counts == {}


def test_unconfigured_and_circuit_reasons(sync_mock, sleep, store, avatar, speech, tmp_path):
    assert SyncLabsLipSync(None).unavailable_reason() == "not configured: SYNCLABS_API_KEY not set"
    # Given a provider that fails every call (stuck), with a circuit of 2 failures
    sync_mock.book.outcome = "stuck"
    c = client(sync_mock, sleep, store, deadline_s=0.2, circuit_failures=2)
    for i in range(2):
        with pytest.raises(ProviderError):
            c.lipsync(avatar, speech, tmp_path / "o.mp4", video_id=f"j{i}")
    # Then the circuit is open: the chain skips it without a request
    assert c.unavailable_reason().startswith("circuit open until ")
    before = sum(sync_mock.counts.values())
    with pytest.raises(ProviderError) as e:
        c.lipsync(avatar, speech, tmp_path / "o.mp4", video_id="j9")
    assert e.value.code == "circuit_open" and sum(sync_mock.counts.values()) == before


def test_a_drain_stops_polling_and_the_next_run_resumes(sync_mock, sleep, tmp_path, avatar, speech):
    # Given a stuck generation and a node that is asked to stop while it polls
    from node.errors import Cancelled

    store = FileGenerationStore(tmp_path / "generations")
    sync_mock.book.outcome = "stuck"
    stop = {"now": False}

    def counting_sleep(seconds):
        sleep(seconds)
        stop["now"] = sync_mock.counts.get("status", 0) >= 2  # the drain arrives after 2 polls

    with pytest.raises(Cancelled):
        client(sync_mock, counting_sleep, store, deadline_s=600).lipsync(
            avatar, speech, tmp_path / "o.mp4", video_id="job-d", should_stop=lambda: stop["now"])
    # Then it stopped between polls, long before the deadline, with the generation id kept
    assert sync_mock.counts["status"] == 2 and store.get("job-d", "synclabs") == "gen_0001"
    # And the requeued job (a new node) resumes that generation: still one create
    sync_mock.book.outcome = "complete"
    result = client(sync_mock, sleep, FileGenerationStore(tmp_path / "generations")).lipsync(
        avatar, speech, tmp_path / "o.mp4", video_id="job-d")
    assert sync_mock.book.created == 1 and result.generation_id == "gen_0001"


def test_drains_never_open_a_healthy_providers_circuit(sync_mock, sleep, tmp_path, avatar, speech):
    # Given one client (one process's circuit of 3 failures) and three jobs drained while polling
    from node.errors import Cancelled

    sync_mock.book.outcome = "stuck"
    c = client(sync_mock, sleep, FileGenerationStore(tmp_path / "generations"), deadline_s=600, circuit_failures=3)
    for i in range(3):
        with pytest.raises(Cancelled):
            c.lipsync(avatar, speech, tmp_path / "o.mp4", video_id=f"drained-{i}",
                      should_stop=lambda: sync_mock.counts.get("status", 0) >= 1)
        sync_mock.counts["status"] = 0
    # Then our own stops did not count against the provider: the circuit stays closed
    assert c.unavailable_reason() is None
    # and the next job runs against it as usual
    sync_mock.book.outcome = "complete"
    result = c.lipsync(avatar, speech, tmp_path / "o.mp4", video_id="next-job")
    assert result.generation_id and (tmp_path / "o.mp4").stat().st_size > 0
