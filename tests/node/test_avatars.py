from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import node.avatars as avatars
from node.avatars import BaseVideo, list_bundled_avatars, resolve_avatar
from node.media import probe
from tests.conftest import make_video


def test_bundled_demo_avatar_has_boxes_inside_the_frame(ffprobe):
    assert "demo" in list_bundled_avatars()
    src = resolve_avatar("demo")
    info = probe(src.path).video
    assert info.fps == Fraction(25) and src.face_box and src.mouth_box
    fx1, fy1, fx2, fy2 = src.face_box
    mx1, my1, mx2, my2 = src.mouth_box
    assert 0 <= fx1 < mx1 < mx2 < fx2 <= info.width and 0 <= fy1 < my1 < my2 <= fy2 <= info.height
    assert src.path.stat().st_size < 600_000  # committed binaries stay small


@pytest.mark.parametrize("n,expected", [
    (1, [0, 0, 0, 0]),
    (2, [0, 1, 0, 1]),
    (4, [0, 1, 2, 3, 2, 1, 0, 1, 2]),
])
def test_pingpong_indices(n, expected):
    fake = BaseVideo.__new__(BaseVideo)
    fake.frame_count = n
    assert fake.pingpong_indices(len(expected)).tolist() == expected
    assert fake.pingpong_indices(3, start=len(expected)).tolist() == fake.pingpong_indices(
        len(expected) + 3)[len(expected):].tolist()


def test_second_open_reuses_the_decoded_cache(tmp_path, ffprobe, monkeypatch):
    video = make_video(tmp_path / "a.mp4", seconds=0.4)
    src = resolve_avatar(str(video))
    info = probe(video).video
    first = BaseVideo.open(src, info, tmp_path / "cache")
    assert len(first) == 10 and first.take([0, 9, 3]).shape == (3, 120, 160, 3)
    with pytest.raises(IndexError):
        first.take([10])

    def no_decode(*a, **k):
        raise AssertionError("decoded twice")
    monkeypatch.setattr(avatars, "iter_video_frames", no_decode)
    second = BaseVideo.open(src, info, tmp_path / "cache")
    assert second.key == first.key
    assert np.array_equal(first.take(range(10)), second.take(range(10)))


def test_slots_opening_a_new_avatar_at_once_decode_it_once(tmp_path, ffprobe, monkeypatch):
    # Given four render slots that meet the same new avatar at the same moment
    import threading

    video = make_video(tmp_path / "same.mp4", seconds=0.4)
    src = resolve_avatar(str(video))
    info = probe(video).video
    decodes, real_decode = [], avatars._decode_into
    monkeypatch.setattr(avatars, "_decode_into", lambda *a: (decodes.append(a), real_decode(*a)))
    start, opened = threading.Barrier(4), []

    def open_it():
        start.wait()
        opened.append(BaseVideo.open(src, info, tmp_path / "cache"))

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Then one slot decodes, the others wait and read its cache, and every frame is whole
    assert len(decodes) == 1 and len(opened) == 4
    first = opened[0].take(range(len(opened[0])))
    assert all(np.array_equal(o.take(range(len(o))), first) for o in opened[1:])
