"""Unusable media is rejected with a code before any work starts."""

from __future__ import annotations

import subprocess

import pytest

from node.errors import InvalidInput
from node.job import parse_job
from node.pipeline import Renderer
from tests.conftest import make_speech, make_video


def render_error(settings, tmp_path, **fields) -> InvalidInput:
    job = parse_job({"video_id": "v", **fields})
    with pytest.raises(InvalidInput) as e:
        Renderer(settings).render(job, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
    return e.value


@pytest.fixture
def speech(tmp_path):
    return str(make_speech(tmp_path / "s.wav", 1.0))


@pytest.fixture
def avatar(tmp_path, ffmpeg):
    return str(make_video(tmp_path / "a.mp4", seconds=0.4))


def test_missing_avatar(settings, tmp_path, speech):
    assert render_error(settings, tmp_path, audio=speech, avatar="nobody").code == "avatar_not_found"
    assert render_error(settings, tmp_path, audio=speech, avatar="/no/such.mp4").code == "avatar_not_found"


def test_garbage_avatar(settings, tmp_path, speech, ffprobe):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    assert render_error(settings, tmp_path, audio=speech, avatar=str(bad)).code == "avatar_unreadable"


def test_avatar_without_video_stream(settings, tmp_path, speech, ffprobe):
    audio_only = tmp_path / "voice.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", speech, "-c:a", "aac", str(audio_only)], check=True)
    assert render_error(settings, tmp_path, audio=speech, avatar=str(audio_only)).code == "avatar_no_video_stream"


def test_avatar_too_large(settings, tmp_path, speech, ffprobe):
    wide = make_video(tmp_path / "wide.mp4", 4112, 32, seconds=0.2)
    assert render_error(settings, tmp_path, audio=speech, avatar=str(wide)).code == "avatar_too_large"


@pytest.mark.parametrize("fps", ["5", "120"])
def test_avatar_fps_out_of_range(settings, tmp_path, speech, ffprobe, fps):
    video = make_video(tmp_path / "f.mp4", fps=fps, seconds=0.5)
    assert render_error(settings, tmp_path, audio=speech, avatar=str(video)).code == "avatar_fps_out_of_range"


def test_unreadable_audio(settings, tmp_path, avatar, ffprobe):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    assert render_error(settings, tmp_path, audio=str(bad), avatar=avatar).code == "audio_unreadable"
    assert render_error(settings, tmp_path, audio=str(tmp_path / "none.wav"), avatar=avatar).code == "audio_unreadable"
    # a video file with no audio stream is not speech either
    assert render_error(settings, tmp_path, audio=avatar, avatar=avatar).code == "audio_unreadable"


def test_audio_too_long(settings, tmp_path, avatar, ffprobe):
    long = make_speech(tmp_path / "long.wav", 3.0)
    s = settings.model_copy(update={"max_audio_seconds": 2.0})
    err = render_error(s, tmp_path, audio=str(long), avatar=avatar)
    assert err.code == "audio_too_long" and "MAX_AUDIO_SECONDS" in err.message


def test_silent_audio(settings, tmp_path, avatar, ffprobe):
    silent = make_speech(tmp_path / "silent.wav", 1.0, bursts=[(0, 0)])
    (tmp_path / "zero.wav").write_bytes(silent.read_bytes()[:44] + bytes(32000))
    assert render_error(settings, tmp_path, audio=str(tmp_path / "zero.wav"), avatar=avatar).code == "audio_empty"


def test_unknown_persona(settings, tmp_path, speech, avatar):
    err = render_error(settings, tmp_path, audio=speech, avatar=avatar, persona="krampus")
    assert err.code == "unknown_persona" and "papa_noel" in err.message


def test_still_image_avatar_renders(settings, tmp_path, speech, ffprobe):
    # An image is a valid avatar: it becomes a 25 fps still video
    png = tmp_path / "face.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=97x61", "-frames:v", "1",
                    str(png)], check=True)
    job = parse_job({"video_id": "img", "audio": speech, "avatar": str(png), "strategy": "base_video"})
    result = Renderer(settings).render(job, tmp_path / "o.mp4")
    assert result.status == "succeeded"
    from tests.conftest import ffprobe_json, stream
    video = stream(ffprobe_json(tmp_path / "o.mp4"), "video")
    assert (video["width"], video["height"]) == (96, 60)  # odd sizes made even


def test_output_that_cannot_be_written(settings, tmp_path, speech, avatar):
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "adir.mp4", tmp_path / "file" / "o.mp4"):
        job = parse_job({"video_id": "w", "audio": speech, "avatar": avatar})
        with pytest.raises(InvalidInput) as e:
            Renderer(settings).render(job, bad)
        assert e.value.code == "output_not_writable"


def test_probe_without_ffprobe_parses_ffmpeg(tmp_path, monkeypatch, ffprobe):
    # Given a machine with only the ffmpeg binary (the imageio-ffmpeg fallback)
    import node.media as media
    video = make_video(tmp_path / "v.mp4", 160, 120, fps="30000/1001", seconds=1.0)
    speech = make_speech(tmp_path / "s.wav", 1.5)
    expected_video, expected_audio = media.probe(video), media.probe(speech)
    monkeypatch.setattr(media, "ffprobe_binary", lambda: None)
    # Then probing gives the same fields from `ffmpeg -i`
    got = media.probe(video)
    assert (got.video.width, got.video.height) == (160, 120)
    assert got.video.fps == expected_video.video.fps
    assert got.audio_duration_s is None
    assert abs(got.duration_s - expected_video.duration_s) < 0.02
    audio = media.probe(speech)
    assert audio.video is None and abs(audio.audio_duration_s - expected_audio.audio_duration_s) < 0.02
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope" * 100)
    with pytest.raises(Exception) as e:
        media.probe(bad)
    assert getattr(e.value, "code", None) == "unreadable"
