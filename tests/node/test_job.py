"""Every rejection of a job field has its own stable code."""

from __future__ import annotations

import pytest

from node.errors import InvalidInput
from node.job import Engine, Strategy, parse_job

OK = {"video_id": "abc", "text": "hola"}


@pytest.mark.parametrize("patch,code", [
    ({"video_id": "-starts-with-dash"}, "invalid_video_id"),
    ({"video_id": "a" * 65}, "invalid_video_id"),
    ({"video_id": "has space"}, "invalid_video_id"),
    ({"video_id": "ünïcode"}, "invalid_video_id"),
    ({"text": "x" * 11}, "text_too_long"),
    ({"text": "   "}, "text_empty"),
    ({"text": 42}, "invalid_text"),
    ({"text": None}, "text_or_audio_required"),
    ({"audio": "/tmp/a.wav"}, "text_and_audio_exclusive"),
    ({"strategy": "fastest"}, "invalid_strategy"),
    ({"engine": "sadtalker"}, "invalid_engine"),
    ({"strategy": "base_video", "engine": "mock"}, "engine_needs_lipsync"),
    ({"webhook_url": "ftp://example.com/x"}, "invalid_webhook_url"),
    ({"webhook_url": "not a url"}, "invalid_webhook_url"),
    ({"idempotency_key": "k" * 129}, "invalid_idempotency_key"),
    ({"idempotency_key": "bad\nkey"}, "invalid_idempotency_key"),
    ({"urgency": 1}, "unknown_field"),
    ({"priority": "urgent"}, "invalid_priority"),
])
def test_each_bad_field_has_its_code(patch, code):
    with pytest.raises(InvalidInput) as e:
        parse_job({**OK, **patch}, max_text_chars=10)  # a None field counts as absent
    assert e.value.code == code
    assert e.value.message and "\n" not in e.value.message
    assert not e.value.retryable


def test_not_an_object_is_rejected():
    with pytest.raises(InvalidInput) as e:
        parse_job(["text", "hola"])
    assert e.value.code == "invalid_job"


def test_valid_job_gets_defaults_and_a_generated_id():
    job = parse_job({"text": "  hola  ", "engine": "mock"})
    assert job.video_id.startswith("vid_") and len(job.video_id) <= 64
    assert job.text == "hola"  # whitespace stripped
    assert job.persona == "papa_noel"
    assert job.strategy is Strategy.auto and job.engine is Engine.mock
    assert parse_job({"text": "a"}).video_id != job.video_id


def test_limit_comes_from_settings_not_a_constant():
    assert parse_job({"text": "x" * 500}, max_text_chars=500).text == "x" * 500
    with pytest.raises(InvalidInput):
        parse_job({"text": "x" * 501}, max_text_chars=500)
