"""Avatars: the base video (or still image) a persona is lip-synced onto.

`--avatar NAME_OR_PATH` is a bundled name (node/assets/avatars/NAME.mp4), a name in AVATARS_DIR,
or a path to a video or image file. A sidecar NAME.json may carry the face and mouth boxes.

`BaseVideo` decodes the file once into a content-keyed frame cache (a raw uint8 file read back
frame by frame), so looping, ping-pong and random access never hold the whole video in RAM and a
second job on the same avatar skips decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from node.avatar_cache import touch
from node.errors import InvalidInput, MediaError
from node.media import IMAGE_SUFFIXES, VideoInfo, iter_video_frames
from node.once import one_at_a_time

BUNDLED_DIR = Path(__file__).parent / "assets" / "avatars"
AVATAR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
#: Bumped when the cache layout or decode parameters change, so stale caches are ignored.
FRAME_CACHE_VERSION = 1


@dataclass(frozen=True)
class AvatarSource:
    name: str
    path: Path
    face_box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 in source pixels, when known
    mouth_box: tuple[int, int, int, int] | None


def resolve_avatar(name_or_path: str, avatars_dir: Path | None = None) -> AvatarSource:
    """Find the avatar file; raises InvalidInput(avatar_not_found)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES or os.sep in name_or_path:
        if candidate.is_file():
            return _with_sidecar(candidate.stem, candidate)
        raise InvalidInput("avatar_not_found", f"avatar file {name_or_path} does not exist")
    for folder in ([avatars_dir] if avatars_dir else []) + [BUNDLED_DIR]:
        for suffix in sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES):
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return _with_sidecar(name_or_path, path)
    raise InvalidInput("avatar_not_found",
                       f"avatar {name_or_path!r} is neither a bundled avatar, in AVATARS_DIR, nor a file")


def list_bundled_avatars() -> list[str]:
    return [name for name, _ in list_avatars(None)]


def list_avatars(avatars_dir: Path | None) -> list[tuple[str, Path]]:
    """(name, file) of every avatar, AVATARS_DIR first where a name exists in both."""
    found: dict[str, Path] = {}
    for folder in [BUNDLED_DIR] + ([Path(avatars_dir)] if avatars_dir and Path(avatars_dir).is_dir() else []):
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES and not p.name.startswith("."):
                found[p.stem] = p
    return sorted(found.items())


def _with_sidecar(name: str, path: Path) -> AvatarSource:
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    box = lambda key: tuple(int(v) for v in meta[key]) if meta.get(key) else None  # noqa: E731
    return AvatarSource(name=name, path=path, face_box=box("face_box"), mouth_box=box("mouth_box"))


def validate_video(info: VideoInfo | None, name: str, max_side_px: int,
                   min_fps: float, max_fps: float) -> VideoInfo:
    """The base video limits; each rejection has its own error code."""
    if info is None:
        raise InvalidInput("avatar_no_video_stream", f"avatar {name} has no video stream")
    if max(info.width, info.height) > max_side_px:
        raise InvalidInput("avatar_too_large", f"avatar {name} is {info.width}x{info.height}; "
                           f"the limit is {max_side_px} px a side")
    if min(info.width, info.height) < 16:
        raise InvalidInput("avatar_too_small", f"avatar {name} is {info.width}x{info.height}; "
                           "at least 16 px a side is needed")
    if not info.is_still and not (min_fps <= float(info.fps) <= max_fps):
        raise InvalidInput("avatar_fps_out_of_range", f"avatar {name} runs at {float(info.fps):.3f} fps; "
                           f"supported: {min_fps:g} to {max_fps:g}")
    return info


class BaseVideo:
    """The decoded frames of an avatar, random-access, read from a content-keyed cache file.

    `take(indices)` returns uint8 (B, H, W, 3) BGR copies. Frames are read with pread rather than
    memory-mapped, so the process holds one batch at a time and the page cache holds the rest:
    RSS does not grow with the base video or the speech. Build with `BaseVideo.open(...)`."""

    def __init__(self, source: AvatarSource, info: VideoInfo, raw_path: Path, frame_count: int,
                 width: int, height: int):
        self.source, self.info, self.raw_path = source, info, raw_path
        self.width, self.height, self.frame_count = width, height, frame_count
        self.fps: Fraction = info.fps
        self.key = raw_path.parent.name  # the content key: same video and decode, same key
        self._frame_bytes = width * height * 3
        self._fd = os.open(raw_path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.frame_count

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    @classmethod
    def open(cls, source: AvatarSource, info: VideoInfo, cache_dir: Path) -> "BaseVideo":
        key = _content_key(source.path, info)
        folder = Path(cache_dir) / key
        meta_path = folder / "frames.json"
        with one_at_a_time(f"frames:{key}"):
            if not meta_path.is_file():
                _decode_into(source.path, info, folder)
        touch(folder)  # the avatar cache's LRU clock (node/avatar_cache.py)
        meta = json.loads(meta_path.read_text())
        return cls(source, info, folder / "frames.u8", meta["frames"], meta["width"], meta["height"])

    def take(self, indices) -> np.ndarray:
        """Frames at `indices` (any int sequence) as a new uint8 (B, H, W, 3) BGR array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        flat = out.reshape(len(indices), -1)
        for k, i in enumerate(indices):
            if not 0 <= i < self.frame_count:
                raise IndexError(f"frame {i} outside 0..{self.frame_count - 1}")
            if os.preadv(self._fd, [flat[k]], int(i) * self._frame_bytes) != self._frame_bytes:
                raise MediaError(f"frame cache {self.raw_path} is truncated", code="avatar_cache_corrupt")
        return out

    def pingpong_indices(self, count: int, start: int = 0) -> np.ndarray:
        """Source frame index for each of `count` output frames, looping forth and back
        (0 1 2 3 2 1 0 1 ...) so the loop has no jump cut."""
        n = len(self)
        t = np.arange(start, start + count)
        if n == 1:
            return np.zeros(count, dtype=np.int64)
        period = 2 * n - 2
        phase = t % period
        return np.where(phase < n, phase, period - phase).astype(np.int64)


def _content_key(path: Path, info: VideoInfo) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"v{FRAME_CACHE_VERSION}:{info.width}x{info.height}@{info.fps}".encode())
    return digest.hexdigest()[:32]


def _decode_into(path: Path, info: VideoInfo, folder: Path) -> None:
    """Decode to folder/frames.u8, published atomically by writing frames.json last."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"frames.u8.{os.getpid()}.tmp"
    count = 0
    try:
        with open(tmp, "wb") as out:
            for batch in iter_video_frames(path, info.width, info.height,
                                           fps=None if info.is_still else info.fps):
                out.write(batch.tobytes())
                count += len(batch)
                if info.is_still:
                    break
        if count == 0:
            raise MediaError(f"{path.name} decoded to no frames", code="avatar_unreadable")
        if info.is_still:
            count = 1
            with open(tmp, "r+b") as out:
                out.truncate(info.width * info.height * 3)
        os.replace(tmp, folder / "frames.u8")
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"frames": count, "width": info.width, "height": info.height, "fps": str(info.fps),
            "version": FRAME_CACHE_VERSION}
    meta_tmp = folder / f"frames.json.{os.getpid()}.tmp"
    meta_tmp.write_text(json.dumps(meta))
    os.replace(meta_tmp, folder / "frames.json")


def install_avatar_file(source: Path, folder: Path, name: str) -> Path:
    """Copy `source` (and its `.json` sidecar) in as `folder/name.<ext>`; other files of that name
    are removed. Re-preparing the installed file itself is a no-op, never a deletion of it."""
    folder.mkdir(parents=True, exist_ok=True)
    installed = folder / f"{name}{source.suffix.lower()}"
    sidecar, installed_sidecar = source.with_suffix(".json"), folder / f"{name}.json"
    keep = {installed.resolve(), installed_sidecar.resolve()}
    for src, dest in ((source, installed), (sidecar, installed_sidecar)):
        if not src.is_file() or (dest.exists() and dest.resolve() == src.resolve()):
            continue
        tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)  # copied first: `source` may be one of the files removed below
    if not sidecar.is_file():
        keep.discard(installed_sidecar.resolve())
    for old in folder.glob(f"{name}.*"):
        if old.resolve() not in keep:
            old.unlink()  # a re-prepared name replaces the old file, whatever its format
    return installed
