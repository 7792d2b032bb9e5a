"""The `wav2lip` engine: streams lip-synced frames batch by batch.

    speech -> mel (80 x T) -> one 16-column window per output frame
    base video -> cached FaceTrack (S3FD boxes, smoothing, 96 x 96 crops), once per avatar
    per batch: crops + windows -> generator -> colour match -> feathered paste into the frame

The generator runs on PyTorch or ONNX Runtime (WAV2LIP_BACKEND; the `auto` rule and the export
cache are in node/engines/wav2lip_backends.py); `backend_name` and each render's report say which.

Only one batch of frames exists at a time (peak memory does not grow with the speech), the
encoder consumes a batch while the next is computed, and frames without a face or inside a
pause keep their source pixels. The official weights are non-commercial (see LICENCES).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from node.avatars import BaseVideo
from node.config import Settings
from node.device import Placement, choose_placement
from node.engines.base import Speech
from node.engines.face_track import CROP_SIZE, FaceDetector, load_or_prepare, s3fd_detector, s3fd_identity
from node.engines.speech_activity import frame_energy, mouth_weights
from node.engines.wav2lip_backends import GeneratorBackend, generator_input, load_backend  # noqa: F401
from node.once import one_at_a_time
from node.weights import LICENCES, missing_weights_reason, wav2lip_checkpoint

log = logging.getLogger(__name__)

__all__ = ["Wav2LipEngine", "generator_input"]


class Wav2LipEngine:
    name = "wav2lip"
    licence = LICENCES["wav2lip"]

    def __init__(self, settings: Settings, *, detector: FaceDetector | None = None,
                 detector_id: str | None = None):
        self.weights_dir = Path(settings.weights_dir)
        self.cache_dir = Path(settings.avatar_cache_dir)
        self.model_cache_dir = Path(settings.model_cache_dir)
        self._device_setting = settings.torch_device
        self._backend_setting = settings.wav2lip_backend
        self._detector, self._detector_id = detector, detector_id
        self._backend: GeneratorBackend | None = None
        self.backend_reason: str | None = None
        self._placement: Placement | None = None
        self._lock = threading.Lock()  # one load, even with several jobs in threads

    def unavailable_reason(self) -> str | None:
        return missing_weights_reason(self.name, self.weights_dir)

    # --- loading, once per process ------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._backend is not None:
                return
            self._placement = choose_placement(self._device_setting)
            path = wav2lip_checkpoint(self.weights_dir)
            self._backend, self.backend_reason = load_backend(self._backend_setting, self._placement, path,
                                                              self.model_cache_dir)
            log.info("wav2lip loaded %s on %s (%s) with %s (%s)", path.name, self._placement.device,
                     self._placement.reason, self._backend.name, self.backend_reason)

    @property
    def backend_name(self) -> str | None:
        """"torch" or "onnxruntime" once loaded; None before."""
        return self._backend.name if self._backend is not None else None

    def _detector_identity(self) -> str:
        """What the cached face tracks are keyed on: the injected detector's id, or the S3FD file."""
        if self._detector is not None:
            return self._detector_id or "injected"
        return s3fd_identity(self.weights_dir / "s3fd.pth")

    def _load_detector(self) -> FaceDetector:
        """S3FD, loaded on the first avatar that needs preparing (a warm node never loads it)."""
        if self._detector is not None:
            return self._detector
        return s3fd_detector(self.weights_dir / "s3fd.pth", self._placement.device)

    def prepare(self, base: BaseVideo):
        """Build (or read) the avatar's cached face track; `avatar prepare` calls this ahead of time."""
        self.load()
        with one_at_a_time(f"wav2lip:{base.key}"):  # slots meeting a new avatar prepare it once
            return load_or_prepare(base, self._load_detector, self._detector_identity(), self.cache_dir)

    # --- rendering -------------------------------------------------------------------------------

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int, batch_size: int,
               report: dict | None = None) -> Iterator[np.ndarray]:
        from models.face.blend import clip_box, lower_face_mask, match_colour, paste
        from models.wav2lip.audio import mel_windows, melspectrogram

        t0 = time.perf_counter()
        track = self.prepare(base)
        prepare_s = time.perf_counter() - t0
        fps = float(base.fps)
        windows = mel_windows(melspectrogram(speech.samples_16k), base.fps)
        # The official cut makes the video a few frames shorter than the audio; we keep every
        # frame and let the last window (the audio's tail) drive the frames past it.
        window_of_frame = np.minimum(np.arange(frame_count), len(windows) - 1)
        weights = mouth_weights(frame_energy(speech.samples_16k, Speech.SAMPLE_RATE, fps, frame_count), fps)
        source_of_frame = base.pingpong_indices(frame_count)
        mask = lower_face_mask(CROP_SIZE)
        passthrough = silent = 0
        for start in range(0, frame_count, batch_size):
            idx = source_of_frame[start:start + batch_size]
            frames = base.take(idx)
            w = weights[start:start + batch_size]
            has_face = track.has_face[idx]
            passthrough += int((~has_face).sum())
            silent += int((has_face & (w == 0)).sum())
            todo = np.flatnonzero(has_face & (w > 0))
            if len(todo):
                crops = track.crops[idx[todo]]
                generated = match_colour(self._generate(windows[window_of_frame[start + todo]], crops), crops, mask)
                for k, face in zip(todo, generated):
                    box = clip_box(track.boxes[idx[k]], base.width, base.height)
                    if box is not None:
                        paste(frames[k], box, face, mask, float(w[k]))
            yield frames
        if report is not None:
            report.update(passthrough_s=round(passthrough / fps, 3), source_mouth_s=round(silent / fps, 3),
                          faceless_base_frames=track.faceless_frames,
                          avatar_cache="hit" if track.cache_hit else "miss", avatar_prep_s=round(prepare_s, 3),
                          generator_backend=self.backend_name)

    def _generate(self, mel: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """(B, 80, 16) mel windows + (B, 96, 96, 3) crops -> (B, 96, 96, 3) uint8 BGR mouths."""
        return self._backend.mouths(mel, crops)
