"""The output encoder: raw BGR frames piped into one ffmpeg process, muxed with the speech.

Output contract: H.264 High profile, level 4.0, CRF 23 (libx264) or constant quality 23
(h264_nvenc, only when a startup probe proves it works), yuv420p, lanczos scaling to at most
1920x1080 keeping aspect and even sizes, AAC audio, `+faststart`, duration equal to the audio.

Frames are handed to a writer thread through a small queue so the engine computes the next batch
while ffmpeg consumes this one; nothing touches disk but the output file.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import ffmpeg
import numpy as np

from node.errors import MediaError
from node.media import ffmpeg_binary

log = logging.getLogger(__name__)

#: The output's bounding box; larger sources are scaled down into it.
MAX_OUTPUT_WIDTH, MAX_OUTPUT_HEIGHT = 1920, 1080
#: H.264 level 4.0 limits (ITU-T H.264 Table A-1): frame size and throughput in macroblocks.
LEVEL_40_MAX_FRAME_MBS = 8192
LEVEL_40_MAX_MBS_PER_S = 245760
#: kbit/s; level 4.0 High-profile VBV limits (1.25 x the Main-profile 20000/25000).
LEVEL_40_HIGH_MAX_BITRATE_KBPS = 25000
LEVEL_40_HIGH_MAX_CPB_KBITS = 31250
#: Batches buffered between the engine and ffmpeg: enough to overlap, small enough for memory.
WRITE_QUEUE_BATCHES = 2


@dataclass(frozen=True)
class EncoderChoice:
    codec: str  # "libx264" or "h264_nvenc"
    reason: str


def output_size(width: int, height: int, fps: float) -> tuple[int, int]:
    """Largest even size <= the source that fits 1920x1080 and H.264 level 4.0 at `fps`."""
    scale = min(1.0, MAX_OUTPUT_WIDTH / width, MAX_OUTPUT_HEIGHT / height)
    max_mbs = min(LEVEL_40_MAX_FRAME_MBS, LEVEL_40_MAX_MBS_PER_S / max(fps, 1e-6))
    while True:
        w = max(2, int(width * scale) // 2 * 2)
        h = max(2, int(height * scale) // 2 * 2)
        if math.ceil(w / 16) * math.ceil(h / 16) <= max_mbs:
            return w, h
        scale *= 0.98


def probe_nvenc(ffmpeg_path: str | None = None, timeout_s: float = 20.0) -> bool:
    """True when h264_nvenc really encodes a frame here (listed encoders prove nothing)."""
    cmd = [ffmpeg_path or ffmpeg_binary(), "-v", "error", "-nostdin", "-f", "lavfi",
           "-i", "color=c=black:s=256x256:r=25", "-frames:v", "2", "-c:v", "h264_nvenc",
           "-profile:v", "high", "-f", "null", "-"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout_s).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_encoder(setting: str, nvenc_probe: Callable[[], bool] = probe_nvenc) -> EncoderChoice:
    """`setting` is VIDEO_ENCODER: auto | libx264 | h264_nvenc."""
    if setting == "libx264":
        return EncoderChoice("libx264", "VIDEO_ENCODER=libx264")
    works = nvenc_probe()
    if works:
        return EncoderChoice("h264_nvenc", "NVENC probe encoded a test frame")
    why = "NVENC probe failed (no NVENC on this GPU or no GPU); using libx264"
    if setting == "h264_nvenc":
        log.warning("VIDEO_ENCODER=h264_nvenc but %s", why)
    return EncoderChoice("libx264", why)


def codec_options(codec: str, crf: int, preset: str, threads: int | None = None) -> dict[str, object]:
    """ffmpeg output options; `threads` caps libx264's threads (a render slot's share of the cores:
    unset, x264 starts 1.5 per core for every one of several encodes side by side)."""
    common = {"profile:v": "high", "level:v": "4.0", "pix_fmt": "yuv420p",
              "maxrate": f"{LEVEL_40_HIGH_MAX_BITRATE_KBPS}k", "bufsize": f"{LEVEL_40_HIGH_MAX_CPB_KBITS}k"}
    if codec == "h264_nvenc":
        # VBR with a CQ target and no bitrate floor is NVENC's analogue of CRF.
        return {"vcodec": "h264_nvenc", "rc:v": "vbr", "cq:v": crf, "b:v": 0, "preset": "p5", **common}
    # x264 signals the lowest profile its tools need, so a fast preset (no 8x8 transform) would
    # come out Constrained Baseline despite `-profile:v high`; the 8x8 transform is High-only.
    x264 = {"vcodec": "libx264", "crf": crf, "preset": preset, "x264-params": "8x8dct=1", **common}
    return x264 | ({"threads": threads} if threads else {})


class VideoEncoder:
    """Encodes frames of one size and rate, plus an audio file, into an MP4 at `output`.

        enc = VideoEncoder(out, 640, 480, Fraction(25), audio, duration_s=3.2, codec="libx264")
        enc.write(batch)   # uint8 (B, 480, 640, 3) BGR, any number of times
        enc.close()        # waits for ffmpeg; raises MediaError on failure

    The output is written to a temporary name and renamed on success, so a failed or aborted
    encode never leaves a half-written file at `output`.
    """

    def __init__(self, output: Path, width: int, height: int, fps: Fraction, audio: Path,
                 duration_s: float, *, codec: str = "libx264", crf: int = 23, preset: str = "medium",
                 threads: int | None = None, audio_bitrate_kbps: int = 128):
        self.output = Path(output)
        self.width, self.height, self.fps = width, height, Fraction(fps)
        self.frames_written = 0
        self.blocked_s = 0.0  # time the producer waited on ffmpeg: the encoder's share of the wall
        self._partial = self.output.with_name(f".{self.output.name}.{os.getpid()}.part")
        out_w, out_h = output_size(width, height, float(self.fps))
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{width}x{height}",
                             framerate=f"{self.fps.numerator}/{self.fps.denominator}")
        video = video.filter("scale", out_w, out_h, flags="lanczos").filter("format", "yuv420p")
        sound = ffmpeg.input(str(audio)).audio
        stream = ffmpeg.output(
            video, sound, str(self._partial), format="mp4", t=f"{duration_s:.6f}",
            acodec="aac", **{"b:a": f"{audio_bitrate_kbps}k"}, movflags="+faststart",
            **codec_options(codec, crf, preset, threads),
        ).global_args("-hide_banner", "-nostats", "-loglevel", "error").overwrite_output()
        self.args = stream.compile(cmd=ffmpeg_binary())
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        self._stderr: deque[str] = deque(maxlen=20)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=WRITE_QUEUE_BATCHES)
        self._write_error: BaseException | None = None
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True),
                         threading.Thread(target=self._write_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def write(self, frames: np.ndarray) -> None:
        """Queue uint8 BGR frames, shape (B, H, W, 3) or (H, W, 3)."""
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 (B, {self.height}, {self.width}, 3), got "
                             f"{frames.dtype} {frames.shape}")
        if self._write_error is not None:
            raise self._failure("ffmpeg stopped reading frames")
        started = time.perf_counter()
        self._queue.put(np.ascontiguousarray(frames))
        self.blocked_s += time.perf_counter() - started
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish the file; returns `output`. Raises MediaError if ffmpeg failed."""
        started = time.perf_counter()
        self._queue.put(None)
        self._threads[1].join()
        code = self._proc.wait()
        self._threads[0].join()
        self.blocked_s += time.perf_counter() - started
        if code != 0 or self._write_error is not None:
            self._partial.unlink(missing_ok=True)
            raise self._failure(f"ffmpeg exited with {code}")
        os.replace(self._partial, self.output)
        return self.output

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file; safe to call more than once."""
        if self._proc.poll() is None:
            self._proc.kill()
        try:  # the writer sees a broken pipe and drains, so this put cannot wait long
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass
        self._proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "VideoEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _write_loop(self) -> None:
        stdin = self._proc.stdin
        try:
            while (frames := self._queue.get()) is not None:
                if self._write_error is None:
                    stdin.write(frames.data)
        except (BrokenPipeError, OSError) as e:
            self._write_error = e
            while self._queue.get() is not None:  # keep draining so producers never block forever
                pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _drain_stderr(self) -> None:
        for line in iter(self._proc.stderr.readline, b""):
            self._stderr.append(line.decode(errors="replace").rstrip())
        self._proc.stderr.close()

    def _failure(self, what: str) -> MediaError:
        detail = " | ".join(self._stderr) or "no diagnostic"
        return MediaError(f"encoding {self.output.name} failed: {what}: {detail}", code="encode_failed")
