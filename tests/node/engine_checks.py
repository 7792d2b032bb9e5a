"""What every local lip-sync engine's tests share: opening a base video and speech the way the
pipeline does, and the behaviour checks that hold for any engine."""

from __future__ import annotations

import numpy as np

from node.avatars import BaseVideo, resolve_avatar
from node.engines.base import Speech
from node.media import decode_audio, probe
from tests.conftest import make_speech


def open_base(path, settings) -> BaseVideo:
    return BaseVideo.open(resolve_avatar(str(path)), probe(path).video, settings.avatar_cache_dir)


def speech_of(path) -> Speech:
    samples = decode_audio(path)
    return Speech(path, samples, len(samples) / 16000, "upload")


def assert_pauses_keep_the_source_mouth(engine, base: BaseVideo, tmp_path) -> None:
    """Speech with a 0.6 s pause (0.4-1.0 s), longer than the 0.2 s threshold: the middle of the
    pause shows the source frames, the speech is generated, and the pause edges fade."""
    speech = speech_of(make_speech(tmp_path / "s.wav", 1.4, bursts=[(0.0, 0.4), (1.0, 1.4)]))
    report = {}
    out = np.concatenate(list(engine.frames(base, speech, 35, 8, report)))
    src = base.take(base.pingpong_indices(35))
    same = [np.array_equal(out[k], src[k]) for k in range(35)]
    assert all(same[14:21]) and not any(same[:8]) and not any(same[27:])
    assert report["source_mouth_s"] >= 0.2
