"""Real media for the mocks to serve, made once per process with ffmpeg and numpy.

The mocks answer with a real H.264 MP4 (a moving test pattern with a tone) and real speech-like
audio (tone bursts, never silent), so everything downstream runs on real decoders.
"""

from __future__ import annotations

import atexit
import io
import shutil
import subprocess
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from node.media import ffmpeg_binary

_DIR = Path(tempfile.mkdtemp(prefix="lipsync-mocks-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)  # made per process, gone with it
#: seconds of the audio the TTS mock speaks, and of the video the video mocks return.
SPEECH_S = 1.2
VIDEO_S = 1.0


def speech_samples(seconds: float = SPEECH_S, rate: int = 44100) -> np.ndarray:
    """float32 mono: two 220 Hz bursts over a faint hum."""
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.003 * np.sin(2 * np.pi * 90 * t)
    for start, end in ((0.15, 0.5), (0.7, 1.05)):
        on = (t >= start) & (t < end)
        signal[on] += 0.5 * np.sin(2 * np.pi * 220 * t[on])
    return signal.astype(np.float32)


def pcm16(rate: int) -> bytes:
    return (speech_samples(rate=rate) * 32767).astype("<i2").tobytes()


def wav_bytes(rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16(rate))
    return buf.getvalue()


@lru_cache(maxsize=None)
def mp3_bytes(rate: int = 44100, kbps: int = 128) -> bytes:
    src = _DIR / f"speech-{rate}.wav"
    src.write_bytes(wav_bytes(rate))
    out = _DIR / f"speech-{rate}-{kbps}.mp3"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(src), "-c:a", "libmp3lame", "-b:a", f"{kbps}k",
                    str(out)], check=True)
    return out.read_bytes()


def audio_for(output_format: str) -> tuple[bytes, str]:
    """(bytes, content type) as ElevenLabs sends them for `output_format`."""
    codec, _, rest = output_format.partition("_")
    parts = rest.split("_")
    rate = int(parts[0]) if parts and parts[0].isdigit() else 44100
    if codec == "mp3":
        return mp3_bytes(rate, int(parts[1]) if len(parts) > 1 else 128), "audio/mpeg"
    if codec == "wav":
        return wav_bytes(rate), "audio/wav"
    if codec == "pcm":
        return pcm16(rate), "audio/pcm"
    raise ValueError(f"the mock does not speak {output_format}")


@lru_cache(maxsize=None)
def mp4_bytes(width: int = 160, height: int = 120, seconds: float = VIDEO_S) -> bytes:
    out = _DIR / f"video-{width}x{height}-{seconds}.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds), "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(out)], check=True)
    return out.read_bytes()
