"""Media in the shape each provider accepts, and checks on what they send back.

Higgsfield Speak takes WAV only; HeyGen checks that Content-Type matches the bytes; Sync needs a
video (a still avatar becomes a short video first). Outputs are probed before they are used, so a
provider's HTML error page saved as "video.mp4" fails here, with a code, not in the encoder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from node.errors import MediaError
from node.media import IMAGE_SUFFIXES, ffmpeg_binary, probe
from providers.base import ProviderError

#: seconds; every conversion here is of a few seconds to minutes of media.
FFMPEG_TIMEOUT_S = 300


def _ffmpeg(args: list[str], what: str) -> None:
    cmd = [ffmpeg_binary(), "-v", "error", "-nostdin", "-y", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ProviderError("media_prepare_failed", f"{what}: ffmpeg took over {FFMPEG_TIMEOUT_S}s",
                            provider_fault=False) from e
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no diagnostic"]
        raise ProviderError("media_prepare_failed", f"{what}: {detail[0][:200]}", provider_fault=False)


def to_wav_pcm16(src: Path, dest: Path, sample_rate: int = 44100) -> Path:
    """16-bit PCM mono WAV, the one audio format Higgsfield Speak accepts."""
    _ffmpeg(["-i", str(src), "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le",
             str(dest)], "converting the speech to WAV")
    return dest


def portrait_of(avatar: Path, dest: Path) -> Path:
    """A PNG still of the avatar (its first frame), for providers that animate an image."""
    _ffmpeg(["-i", str(avatar), "-frames:v", "1", str(dest)], "extracting a still of the avatar")
    return dest


def video_of(avatar: Path, dest: Path, seconds: float) -> Path:
    """The avatar as an MP4: a video is passed through as it is; a still image becomes a
    `seconds`-long 25 fps video, since lip-sync APIs need a video input."""
    if avatar.suffix.lower() not in IMAGE_SUFFIXES:
        return avatar
    _ffmpeg(["-loop", "1", "-i", str(avatar), "-t", f"{seconds:.3f}", "-r", "25", "-pix_fmt", "yuv420p",
             "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", str(dest)],
            "making a video of the still avatar")
    return dest


def audio_seconds(path: Path) -> float:
    try:
        seconds = probe(path).audio_duration_s
    except MediaError as e:
        raise ProviderError("media_prepare_failed", f"speech unreadable: {e.message}", provider_fault=False) from e
    if not seconds:
        raise ProviderError("media_prepare_failed", "speech has no audio stream", provider_fault=False)
    return seconds


def check_video(path: Path, provider: str) -> Path:
    """Raise ProviderError(provider_bad_output) unless `path` holds a readable video stream."""
    try:
        info = probe(path)
    except MediaError as e:
        raise ProviderError("provider_bad_output", f"{provider} sent an unreadable video: {e.message}") from e
    if info.video is None:
        raise ProviderError("provider_bad_output", f"{provider} sent a file without a video stream")
    return path


def check_audio(path: Path, provider: str) -> float:
    """Seconds of audio in `path`; ProviderError(tts_bad_output) when it is not audio."""
    try:
        seconds = probe(path).audio_duration_s
    except MediaError as e:
        raise ProviderError("tts_bad_output", f"{provider} sent unreadable audio: {e.message}") from e
    if not seconds or seconds <= 0:
        raise ProviderError("tts_bad_output", f"{provider} sent a file without audio")
    return seconds


_MAGIC = [
    (b"RIFF", 0, "audio/wav"),  # checked further below (WAVE)
    (b"ID3", 0, "audio/mpeg"),
    (b"\x89PNG", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"ftyp", 4, "video/mp4"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
    (b"OggS", 0, "audio/ogg"),
]


def sniff_mime(path: Path) -> str:
    """The MIME type from the file's first bytes (providers reject a Content-Type that does not
    match the bytes, e.g. HeyGen's 400543)."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, offset, mime in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            if mime == "audio/wav" and head[8:12] != b"WAVE":
                continue
            return mime
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "audio/mpeg"  # an MP3 frame sync without an ID3 tag
    return "application/octet-stream"
