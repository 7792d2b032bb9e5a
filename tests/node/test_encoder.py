"""Encoder selection, output sizing and failure handling."""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from node.encoder import (LEVEL_40_MAX_FRAME_MBS, LEVEL_40_MAX_MBS_PER_S, VideoEncoder, choose_encoder,
                          codec_options, output_size, probe_nvenc)
from node.errors import MediaError
from tests.conftest import ffprobe_json, make_speech, stream


def test_auto_falls_back_to_libx264_when_nvenc_probe_fails(caplog):
    choice = choose_encoder("auto", nvenc_probe=lambda: False)
    assert choice.codec == "libx264" and "NVENC probe failed" in choice.reason


def test_auto_picks_nvenc_only_when_the_probe_proves_it():
    assert choose_encoder("auto", nvenc_probe=lambda: True).codec == "h264_nvenc"


def test_forced_nvenc_that_fails_warns_and_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="node.encoder"):
        assert choose_encoder("h264_nvenc", nvenc_probe=lambda: False).codec == "libx264"
    assert "VIDEO_ENCODER=h264_nvenc" in caplog.text


def test_libx264_setting_never_probes():
    def probe():
        raise AssertionError("must not probe")
    assert choose_encoder("libx264", nvenc_probe=probe).codec == "libx264"


def _fake_ffmpeg(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_nvenc_probe_believes_only_a_real_encode(tmp_path):
    # An ffmpeg whose NVENC encode exits 0 proves NVENC; a failing, hanging or missing one does not
    ok = _fake_ffmpeg(tmp_path / "ok", 'case "$*" in *"-c:v h264_nvenc"*) exit 0;; esac; exit 9')
    assert probe_nvenc(ok) is True
    assert probe_nvenc(_fake_ffmpeg(tmp_path / "no", "echo 'Cannot load libcuda.so.1' >&2; exit 1")) is False
    assert probe_nvenc(_fake_ffmpeg(tmp_path / "hang", "sleep 5"), timeout_s=0.5) is False
    assert probe_nvenc(str(tmp_path / "absent")) is False


@pytest.mark.requires_nvenc
def test_real_nvenc_encodes_a_conforming_file(tmp_path, ffprobe):
    # On a machine with NVENC the probe says so, and the node's NVENC options give High@4.0 yuv420p
    assert probe_nvenc() is True
    assert choose_encoder("auto").codec == "h264_nvenc"
    speech = make_speech(tmp_path / "s.wav", 0.4)
    frames = np.zeros((10, 128, 160, 3), np.uint8)
    with VideoEncoder(tmp_path / "n.mp4", 160, 128, Fraction(25), speech, 0.4, codec="h264_nvenc",
                      crf=23, preset="medium") as encoder:
        encoder.write(frames)
        encoder.close()
    video = stream(ffprobe_json(tmp_path / "n.mp4"), "video")
    assert (video["codec_name"], video["profile"], video["level"], video["pix_fmt"]) == ("h264", "High", 40,
                                                                                        "yuv420p")


def test_nvenc_options_keep_the_contract():
    opts = codec_options("h264_nvenc", 23, "medium")
    assert opts["vcodec"] == "h264_nvenc" and opts["cq:v"] == 23 and opts["b:v"] == 0
    assert opts["profile:v"] == "high" and opts["level:v"] == "4.0" and opts["pix_fmt"] == "yuv420p"
    assert codec_options("libx264", 23, "medium")["crf"] == 23


@pytest.mark.parametrize("w,h,fps,expected", [
    (384, 384, 25, (384, 384)),
    (1920, 1080, 30, (1920, 1080)),
    (3840, 2160, 25, (1920, 1080)),
    (4096, 1024, 25, (1920, 480)),
    (1081, 1921, 25, (606, 1080)),  # portrait: height bound, even sizes
    (97, 61, 25, (96, 60)),
])
def test_output_size_fits_1080p_even_and_keeps_aspect(w, h, fps, expected):
    assert output_size(w, h, fps) == expected


def test_output_size_respects_level_40_throughput_at_60_fps():
    w, h = output_size(1920, 1080, 60)
    mbs = math.ceil(w / 16) * math.ceil(h / 16)
    assert mbs <= LEVEL_40_MAX_FRAME_MBS and mbs * 60 <= LEVEL_40_MAX_MBS_PER_S
    assert w % 2 == h % 2 == 0 and abs(w / h - 16 / 9) < 0.02 and w >= 1200


def test_large_frames_are_scaled_with_lanczos(tmp_path, ffprobe):
    audio = make_speech(tmp_path / "s.wav", 0.5)
    enc = VideoEncoder(tmp_path / "o.mp4", 2000, 1200, Fraction(25), audio, 0.5, preset="ultrafast")
    enc.write(np.full((13, 1200, 2000, 3), 128, np.uint8))
    enc.close()
    assert "flags=lanczos" in " ".join(enc.args)
    video = stream(ffprobe_json(tmp_path / "o.mp4"), "video")
    assert (video["width"], video["height"]) == (1800, 1080)


def test_wrong_frame_shape_is_a_clear_error(tmp_path, ffmpeg):
    enc = VideoEncoder(tmp_path / "o.mp4", 64, 48, Fraction(25), make_speech(tmp_path / "s.wav", 0.2), 0.2)
    with pytest.raises(ValueError, match=r"expected uint8 \(B, 48, 64, 3\)"):
        enc.write(np.zeros((2, 48, 65, 3), np.uint8))
    enc.abort()
    assert not any(tmp_path.glob("*o.mp4*"))


def test_ffmpeg_failure_is_a_media_error_without_partial_file(tmp_path, ffmpeg):
    # Given an audio input that does not exist, ffmpeg fails
    enc = VideoEncoder(tmp_path / "o.mp4", 64, 48, Fraction(25), tmp_path / "missing.wav", 0.2)
    with pytest.raises(MediaError) as e:
        for _ in range(50):  # keeps writing after ffmpeg died: must raise, never hang
            enc.write(np.zeros((5, 48, 64, 3), np.uint8))
        enc.close()
    assert e.value.code == "encode_failed" and "missing.wav" in e.value.message
    enc.abort()
    assert not any(tmp_path.glob("*o.mp4*"))
