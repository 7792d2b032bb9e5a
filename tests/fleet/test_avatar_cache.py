"""The avatar cache across the fleet (published to and fetched from a real S3-protocol server) and
its bound on each node (least recently used avatars evicted whole, never one in use)."""

from __future__ import annotations

import io
import os
import tarfile

import boto3
import numpy as np
import pytest

from node.avatar_cache import AvatarCacheKeeper, AvatarCacheSync, evict
from node.engines.wav2lip import Wav2LipEngine
from node.job import parse_job
from node.pipeline import Renderer
from tests.checkpoints import random_state_dict, save, training_container
from tests.conftest import make_speech, make_video

KEY = "0123456789abcdef0123456789abcdef"


def fill(folder, name: str, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(os.urandom(size))


def test_least_recently_used_avatars_go_first_and_never_one_in_use(tmp_path):
    for k, age in enumerate((300, 200, 100)):  # a is the oldest
        folder = tmp_path / "abc"[k]
        fill(folder, "frames.u8", 1000)
        os.utime(folder, (1e9 - age, 1e9 - age))
    assert evict(tmp_path, 2500, keep={"a"}) == ["b"]  # a is in use: b goes in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]
    assert evict(tmp_path, 2500) == []  # fits now
    assert evict(tmp_path, 999) == ["a", "c"]


def test_a_prepared_avatar_travels_whole_through_the_store_and_frames_stay_local(s3_settings, tmp_path):
    a = s3_settings.model_copy(update={"avatar_cache_dir": tmp_path / "a"})
    b = s3_settings.model_copy(update={"avatar_cache_dir": tmp_path / "b"})
    folder = a.avatar_cache_dir / KEY
    fill(folder, "frames.u8", 5000)
    fill(folder, "face-track-1234.npz", 3000)
    fill(folder / "musetalk-abcd", "latents.npy", 4000)
    fill(folder, ".face-track-1234.npz.77.tmp.npz", 10)  # a write in progress is never published
    assert sorted(AvatarCacheSync(a).publish(KEY)) == ["face-track-1234.npz", "musetalk-abcd.tar"]
    assert AvatarCacheSync(a).publish(KEY) == []  # the fleet has it now
    got = AvatarCacheSync(b).fetch(KEY)
    assert sorted(got) == ["face-track-1234.npz", "musetalk-abcd.tar"]
    fetched = b.avatar_cache_dir / KEY
    assert (fetched / "face-track-1234.npz").read_bytes() == (folder / "face-track-1234.npz").read_bytes()
    assert (fetched / "musetalk-abcd" / "latents.npy").read_bytes() == (folder / "musetalk-abcd" / "latents.npy").read_bytes()
    assert not (fetched / "frames.u8").exists()  # every node decodes its own frames
    assert sorted(p.name for p in fetched.iterdir()) == ["face-track-1234.npz", "musetalk-abcd"]


def test_a_tar_that_points_outside_its_folder_is_never_extracted_there(s3_settings, tmp_path):
    settings = s3_settings.model_copy(update={"avatar_cache_dir": tmp_path / "cache"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    boto3.client("s3", endpoint_url=settings.s3_endpoint_url).put_object(
        Bucket=settings.s3_bucket, Key=f"avatars/{KEY}/musetalk-evil.tar", Body=buffer.getvalue())
    with pytest.raises(Exception):
        AvatarCacheSync(settings).fetch(KEY)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache" / "escaped.txt").exists()


class CountingDetector:
    """The face box on every frame, counting calls: a node that fetched the track never calls it."""

    def __init__(self, box):
        self.box, self.calls = box, 0

    def __call__(self, frames):
        self.calls += 1
        return [list(self.box)] * len(frames)


def test_a_second_node_renders_a_new_avatar_without_detecting_faces(s3_settings, tmp_path):
    # Given two nodes sharing one S3 store, each with its own avatar cache and the Wav2Lip engine
    weights = tmp_path / "weights"
    weights.mkdir()
    save(training_container(random_state_dict("wav2lip_generator", seed=1)), weights / "wav2lip_gan.pth")
    save(random_state_dict("s3fd", seed=2), weights / "s3fd.pth")
    avatar = make_video(tmp_path / "santa.mp4", 160, 120, seconds=0.4)
    speech = make_speech(tmp_path / "s.wav", 0.6, bursts=[(0.05, 0.55)])
    nodes = []
    for name in ("a", "b"):
        settings = s3_settings.model_copy(update={"avatar_cache_dir": tmp_path / name / "cache",
                                                  "temp_dir": tmp_path / name / "tmp", "weights_dir": weights,
                                                  "sync_scoring": False, "lipsync_engine_order": "wav2lip"})
        detector = CountingDetector((40, 30, 120, 100))
        engine = Wav2LipEngine(settings, detector=detector, detector_id="fixed-box")
        nodes.append((Renderer(settings, engines={"wav2lip": engine}), detector))
    job = {"audio": str(speech), "avatar": str(avatar), "engine": "wav2lip", "strategy": "lipsync"}
    # When node A renders the avatar first, then node B
    first = nodes[0][0].render(parse_job({"video_id": "first", **job}), tmp_path / "a.mp4")
    second = nodes[1][0].render(parse_job({"video_id": "second", **job}), tmp_path / "b.mp4")
    # Then A detected faces and published the track; B fetched it and detected nothing
    assert first.status == second.status == "succeeded"
    assert nodes[0][1].calls > 0 and nodes[1][1].calls == 0
    assert first.extra["lipsync_report"]["avatar_cache"] == "miss"
    assert second.extra["lipsync_report"]["avatar_cache"] == "hit"
    assert np.isclose(second.duration_s, first.duration_s)


def test_the_keeper_bounds_the_local_cache_after_each_job(settings, tmp_path):
    small = settings.model_copy(update={"avatar_cache_max_size_mb": 1})
    keeper = AvatarCacheKeeper(small)
    for name in ("old", "new"):
        fill(small.avatar_cache_dir / name, "frames.u8", 700_000)
    os.utime(small.avatar_cache_dir / "old", (1e9, 1e9))
    keeper.opened("new")
    keeper.finished("new", True)
    assert sorted(p.name for p in small.avatar_cache_dir.iterdir()) == ["new"]
