"""ffmpeg and ffprobe at the boundary: finding the binaries, probing files, decoding.

System binaries are preferred (Debian's ffmpeg has every codec we use); without them the ffmpeg
from the `imageio-ffmpeg` wheel is used, and probing falls back to parsing `ffmpeg -i`, which is
enough for the fields we need (stream kind, size, fps, duration).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from node.errors import MediaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
#: frames per second given to a still image used as an avatar.
STILL_IMAGE_FPS = Fraction(25)
#: seconds; a probe or a short decode that takes longer than this is a broken file.
PROBE_TIMEOUT_S = 60


_configured: dict[str, str | None] = {"ffmpeg": None, "ffprobe": None}


def use_binaries(ffmpeg: str | None = None, ffprobe: str | None = None) -> None:
    """Pin the binaries (FFMPEG_BINARY / FFPROBE_BINARY); None means look them up."""
    _configured.update(ffmpeg=ffmpeg, ffprobe=ffprobe)
    ffmpeg_binary.cache_clear()
    ffprobe_binary.cache_clear()


@lru_cache(maxsize=None)
def ffmpeg_binary() -> str:
    if _configured["ffmpeg"]:
        return _configured["ffmpeg"]
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise MediaError("ffmpeg not found: install ffmpeg or imageio-ffmpeg", code="ffmpeg_missing") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=None)
def ffprobe_binary() -> str | None:
    return _configured["ffprobe"] or shutil.which("ffprobe")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    duration_s: float | None
    frame_count: int | None
    is_still: bool
    codec: str


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    video: VideoInfo | None
    audio_duration_s: float | None  # None when there is no audio stream
    duration_s: float | None


def probe(path: Path) -> MediaInfo:
    """Streams of a media file; raises MediaError(code="unreadable") when ffmpeg can't read it."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist", code="unreadable")
    ffprobe = ffprobe_binary()
    return _probe_ffprobe(ffprobe, path) if ffprobe else _probe_ffmpeg(path)


def _probe_ffprobe(ffprobe: str, path: Path) -> MediaInfo:
    cmd = [ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)]
    proc = _run(cmd)
    if proc.returncode != 0:
        raise MediaError(f"cannot read {path.name}: {_last_line(proc.stderr)}", code="unreadable")
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    duration = _float(fmt.get("duration"))
    video = audio = None
    for s in streams:
        kind = s.get("codec_type")
        if kind == "video" and video is None and not s.get("disposition", {}).get("attached_pic"):
            video = s
        elif kind == "audio" and audio is None:
            audio = s
    video_info = None
    if video is not None:
        width, height = int(video.get("width", 0)), int(video.get("height", 0))
        if _rotation(video) in (90, 270):
            width, height = height, width  # ffmpeg auto-rotates when decoding
        still = _is_still(path, fmt.get("format_name", ""))
        fps = STILL_IMAGE_FPS if still else _fps(video.get("avg_frame_rate")) or _fps(video.get("r_frame_rate"))
        frames = int(video["nb_frames"]) if str(video.get("nb_frames", "")).isdigit() else None
        video_info = VideoInfo(
            width=width, height=height, fps=fps or Fraction(0),
            duration_s=_float(video.get("duration")) or duration, frame_count=1 if still else frames,
            is_still=still, codec=video.get("codec_name", ""),
        )
    audio_duration = (_float(audio.get("duration")) or duration) if audio is not None else None
    return MediaInfo(path=path, video=video_info, audio_duration_s=audio_duration, duration_s=duration)


_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_RE = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")


def _probe_ffmpeg(path: Path) -> MediaInfo:
    """Fallback probe from `ffmpeg -i` stderr, used only when no ffprobe binary exists."""
    proc = _run([ffmpeg_binary(), "-hide_banner", "-i", str(path)])
    text = proc.stderr
    if "Invalid data" in text or "No such file" in text or "Stream #" not in text:
        raise MediaError(f"cannot read {path.name}: {_last_line(text)}", code="unreadable")
    m = _DURATION_RE.search(text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    video_info = None
    vm = _VIDEO_RE.search(text)
    if vm:
        line = text[vm.start(): text.find("\n", vm.start())]
        still = _is_still(path, "")
        fm = _FPS_RE.search(line)
        fps = STILL_IMAGE_FPS if still else (
            _printed_rate(fm[1]) * (1000 if fm[2] else 1) if fm else Fraction(0))
        video_info = VideoInfo(int(vm[2]), int(vm[3]), fps, duration, 1 if still else None, still, vm[1])
    has_audio = re.search(r"Stream #\S+.*?: Audio:", text) is not None
    return MediaInfo(path, video_info, duration if has_audio else None, duration)


def decode_audio(path: Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate`, channels averaged by ffmpeg."""
    cmd = [ffmpeg_binary(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise MediaError(f"cannot decode audio of {Path(path).name}: "
                         f"{_last_line(proc.stderr.decode(errors='replace'))}", code="audio_unreadable")
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono WAV; the format every provider and ffmpeg accept."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def iter_video_frames(path: Path, width: int, height: int, fps: Fraction | None = None,
                      batch: int = 16) -> Iterator[np.ndarray]:
    """Decoded frames as uint8 BGR batches of shape (B, height, width, 3), streamed from ffmpeg.

    `fps` resamples to a constant rate (duplicating/dropping frames of a variable-rate file)."""
    cmd = [ffmpeg_binary(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if fps is not None:
        cmd += ["-fps_mode", "cfr", "-r", f"{fps.numerator}/{fps.denominator}"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]
    frame_bytes = width * height * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            data = proc.stdout.read(frame_bytes * batch)
            usable = len(data) - len(data) % frame_bytes
            if usable:
                yield np.frombuffer(data[:usable], np.uint8).reshape(-1, height, width, 3)
            if len(data) < frame_bytes * batch:
                break
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise MediaError(f"cannot decode {Path(path).name}: {_last_line(err)}", code="unreadable")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _printed_rate(text: str) -> Fraction:
    """ffmpeg prints rates rounded ("29.97"); recover the exact integer or NTSC (N*1000/1001) rate."""
    value = float(text)
    for exact in (Fraction(round(value)), Fraction(round(value * 1.001) * 1000, 1001)):
        if abs(float(exact) - value) < 0.005:
            return exact
    return Fraction(text).limit_denominator(1001)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"{Path(cmd[-1]).name}: probing timed out after {PROBE_TIMEOUT_S}s",
                         code="unreadable") from e


def _is_still(path: Path, format_name: str) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or format_name.endswith("_pipe") or format_name == "image2"


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    rotate = stream.get("tags", {}).get("rotate")
    return int(rotate) % 360 if rotate and rotate.lstrip("-").isdigit() else 0


def _fps(rate: str | None) -> Fraction | None:
    try:
        value = Fraction(rate) if rate else None
    except (ValueError, ZeroDivisionError):
        return None
    return value if value else None


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no diagnostic from ffmpeg"
