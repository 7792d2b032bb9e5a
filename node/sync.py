"""Sync confidence of every lip-synced render, from the Wav2Lip SyncNet expert (issue: LSE-D/C).

    SyncScoring    once per process: the expert (`lipsync_expert.pth`), loaded on the first scored
                   render, and S3FD (shared with the engines) only when faces must be found;
                   `monitor(...)` gives one render's monitor, or says why scoring is skipped
    SyncMonitor    fed every batch of output frames as the pipeline encodes it; crops each frame's
                   face at 96x96 (the expert's input) and embeds it; `result()` gives the score
    Candidate      a chain step's finished output with its score; one scored below
                   SYNC_MIN_CONFIDENCE is kept aside while the chain moves on, and the best of
                   them wins over strategy 3 when no later lip-sync step passes
    fix_offset     SYNC_FIX_OFFSET: re-mux the audio by the measured offset when it is confident

Where the faces are: a local engine's frames are the base video's frames, in ping-pong order,
so the avatar's cached face track (the Wav2Lip track: S3FD once per avatar, smoothed, chin pad)
gives every box without a second detection; a remote provider's video is decoded once (the
pipeline does that to re-encode it) and S3FD runs on its frames, batch by batch, because its
framing need not be the base video's. The arithmetic (distance, confidence, offset) lives in
`models.wav2lip.sync_score`, which documents how it relates to the published LSE-D/LSE-C.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from node.avatars import BaseVideo
from node.config import Settings
from node.engines.base import Speech
from node.engines.face_track import (CROP_SIZE, FaceTrack, detect_scaled, load_or_prepare, pad_and_clip,
                                     s3fd_detector, s3fd_identity)
from node.errors import MediaError
from node.media import ffmpeg_binary, probe
from providers import metrics

log = logging.getLogger(__name__)

EXPERT = "lipsync_expert.pth"
DETECTOR = "s3fd.pth"
#: What the numbers are, for readers of a result: the model, the distance and the offset range.
SCORER = "wav2lip-syncnet-expert/cosine"


class SyncScoring:
    """The process's sync scorer; models load on the first scored render, once."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.weights_dir = Path(settings.weights_dir)
        self._expert = None
        self._device = "cpu"
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        if not self.settings.sync_scoring:
            return "SYNC_SCORING=false"
        missing = [name for name in (EXPERT, DETECTOR) if not (self.weights_dir / name).is_file()]
        if missing:
            return (f"{' and '.join(missing)} not in WEIGHTS_DIR ({self.weights_dir}); run "
                    "scripts/download_weights.py --engine wav2lip --optional")
        return None

    def _load(self) -> None:
        with self._lock:
            if self._expert is not None:
                return
            import torch

            from models.wav2lip import load_syncnet
            from models.wav2lip.conv import fold_batchnorm
            from node.device import choose_placement

            self._device = choose_placement(self.settings.torch_device).device
            # BatchNorm folded into the convolutions and channels-last, as the Wav2Lip engine runs
            # its generator (1.27x for the expert's face encoder on a 2-core EPYC)
            expert = fold_batchnorm(load_syncnet(self.weights_dir / EXPERT, self._device))
            self._expert = expert.to(memory_format=torch.channels_last)

    def _detector(self):
        """S3FD, shared with the engines; loaded only when faces must be found (a cold avatar, or
        a remote provider's video), never for a warm local render."""
        return s3fd_detector(self.weights_dir / DETECTOR, self._device)

    def monitor(self, base: BaseVideo, speech: Speech, frame_count: int, *, aligned: bool) -> "SyncMonitor":
        """A monitor for one render of `frame_count` frames. `aligned`: frame k is base frame
        `base.pingpong_indices(frame_count)[k]` (a local engine); else faces are detected."""
        self._load()
        from models.wav2lip.audio import mel_windows, melspectrogram
        from models.wav2lip.sync_score import SyncAccumulator

        windows = mel_windows(melspectrogram(speech.samples_16k), base.fps)
        windows = windows[np.minimum(np.arange(frame_count), len(windows) - 1)]  # as the engines cut them
        accumulator = SyncAccumulator(self._expert, windows, max_offset=self.settings.sync_max_offset_frames,
                                      window_stride=self.settings.sync_window_stride)
        track = None
        if aligned:
            track = load_or_prepare(base, self._detector, s3fd_identity(self.weights_dir / DETECTOR),
                                    self.settings.avatar_cache_dir)  # the Wav2Lip engine's track
        return SyncMonitor(accumulator, track, base.pingpong_indices(frame_count) if aligned else None,
                           None if aligned else self._detector())


class SyncMonitor:
    """Scores a render's frames on its own thread, one batch behind the renderer: the expert's
    work overlaps the next batch's generation instead of adding to it (the encoder does the same)."""

    def __init__(self, accumulator, track: FaceTrack | None, sources: np.ndarray | None, detect=None):
        self._accumulator, self._track, self._sources, self._detect = accumulator, track, sources, detect
        self._seen = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sync-score")
        self._pending: Future | None = None
        self._failed: str | None = None  # scoring broke: the render goes on unscored

    def add(self, frames: np.ndarray) -> None:
        """The next output frames (B, H, W, 3) uint8 BGR, in order. The caller must not modify
        them afterwards (the pipeline hands each batch on and makes a new one)."""
        self._settle()  # one batch in flight: memory stays at one batch
        if self._failed is None:
            self._pending = self._pool.submit(self._score, frames)

    def _settle(self) -> None:
        if self._pending is None:
            return
        try:
            self._pending.result()
        except Exception as e:  # scoring must never cost a render
            log.warning("sync scoring failed: %s: %s", type(e).__name__, e)
            self._failed = f"scoring failed: {type(e).__name__}"
        self._pending = None

    def _score(self, frames: np.ndarray) -> None:
        n, (h, w) = len(frames), frames.shape[1:3]
        if self._track is not None:
            idx = self._sources[self._seen:self._seen + n]
            boxes, valid = self._track.boxes[idx], self._track.has_face[idx]
        else:
            found = detect_scaled(frames, self._detect)
            valid = np.array([b is not None for b in found])
            raw = np.array([b if b is not None else (0, 0, 0, 0) for b in found], np.float64).reshape(n, 4)
            boxes = pad_and_clip(raw, w, h)
            valid &= (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        crops = np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        for k in np.flatnonzero(valid):
            x1, y1, x2, y2 = (int(v) for v in boxes[k])
            crops[k] = cv2.resize(frames[k, y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
        self._accumulator.add(crops, valid)
        self._seen += n

    def close(self) -> None:
        """Stop the scoring thread (idempotent); a batch being scored is finished first."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def result(self) -> dict:
        """`{distance, confidence, offset_frames, windows, scorer}`, or `{skipped: why}`."""
        try:
            self._settle()
            score = None if self._failed else self._accumulator.result()
        except Exception as e:
            log.warning("sync scoring failed: %s: %s", type(e).__name__, e)
            self._failed = f"scoring failed: {type(e).__name__}"
        finally:
            self.close()
        if self._failed:
            return {"skipped": self._failed, "scorer": SCORER}
        if score is None:
            return {"skipped": "no 5-frame window with a face to score", "scorer": SCORER}
        return score.as_dict() | {"scorer": SCORER}


def shift_audio(video: Path, speech: Path, duration_s: float, shift_s: float, audio_bitrate_kbps: int) -> None:
    """Re-mux `video` in place with `speech` moved `shift_s` seconds earlier (later when negative):
    the video stream is copied, the audio re-encoded to AAC, the duration kept, +faststart."""
    if shift_s > 0:
        audio_filter = f"atrim=start={shift_s:.6f},asetpts=PTS-STARTPTS,apad"
    else:
        delay_ms = round(-shift_s * 1000)
        audio_filter = f"adelay={delay_ms}:all=1,apad"
    tmp = video.with_name(f".{video.stem}.shift{video.suffix}")
    cmd = [ffmpeg_binary(), "-v", "error", "-y", "-nostdin", "-i", str(video), "-i", str(speech),
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-af", audio_filter, "-c:a", "aac",
           "-b:a", f"{audio_bitrate_kbps}k", "-t", f"{duration_s:.6f}", "-movflags", "+faststart", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise MediaError(f"shifting the audio failed: {done.stderr.strip()[-300:]}", code="encode_failed")
        shutil.move(tmp, video)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Candidate:
    """A chain step's finished output: its file, timings, engine report and sync score."""

    stage: str
    provider: str
    path: Path
    stage_times: dict
    report: dict
    sync: dict | None  # SyncMonitor.result(), {skipped: why}, or None (strategy 3)
    note: str | None = None

    def keep_as_candidate(self, path: Path) -> "Candidate":
        """Move the output aside (the chain goes on writing the job's output path)."""
        self.path.replace(path)
        return replace(self, path=path)


def below_threshold(sync: dict | None, min_confidence: float | None) -> str | None:
    """Why a scored output fails SYNC_MIN_CONFIDENCE, or None when it passes (or was not scored)."""
    if min_confidence is None or not sync or "confidence" not in sync or sync["confidence"] >= min_confidence:
        return None
    return (f"sync confidence {sync['confidence']:.4f} is below SYNC_MIN_CONFIDENCE {min_confidence:g} "
            f"(offset {sync['offset_frames']} frames); output kept as a candidate")


def observe_sync(done: Candidate) -> None:
    if done.sync and "confidence" in done.sync:
        metrics.SYNC_CONFIDENCE.labels(done.provider).observe(done.sync["confidence"])


def fix_offset(sync: dict | None, settings: Settings, output: Path, speech: Speech) -> dict | None:
    """With SYNC_FIX_OFFSET, move the audio by the measured offset when it is non-zero and its
    confidence reaches SYNC_OFFSET_MIN_CONFIDENCE; the result says by how much."""
    if not (settings.sync_fix_offset and sync and sync.get("offset_frames")
            and sync["confidence"] >= settings.sync_offset_min_confidence):
        return sync
    fps = float(probe(output).video.fps)
    # video window i matches audio window i + offset: the audio is late by `offset` frames
    shift_s = sync["offset_frames"] / fps
    shift_audio(output, speech.path, speech.duration_s, shift_s, settings.audio_bitrate_kbps)
    log.info("audio moved %+.3fs (%+d frames) to the measured sync offset", -shift_s, -sync["offset_frames"])
    return sync | {"audio_shift_frames": -sync["offset_frames"], "audio_shift_s": round(-shift_s, 4)}
