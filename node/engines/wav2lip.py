"""The `wav2lip` engine: streams lip-synced frames batch by batch.

    speech -> mel (80 x T) -> one 16-column window per output frame
    base video -> cached FaceTrack (S3FD boxes, smoothing, 96 x 96 crops), once per avatar
    per batch: crops + windows -> generator -> colour match -> feathered paste into the frame

Only one batch of frames exists at a time (peak memory does not grow with the speech), the
encoder consumes a batch while the next is computed, and frames without a face or inside a
pause keep their source pixels. The official weights are non-commercial (see LICENCES).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from node.avatars import BaseVideo
from node.config import Settings
from node.device import Placement, choose_placement
from node.engines.base import Speech
from node.engines.face_track import CROP_SIZE, FaceDetector, load_or_prepare, s3fd_detector, s3fd_identity
from node.engines.speech_activity import frame_energy, mouth_weights
from node.weights import LICENCES, missing_weights_reason, wav2lip_checkpoint

log = logging.getLogger(__name__)


def generator_input(crops: np.ndarray) -> np.ndarray:
    """(B, 96, 96, 3) uint8 BGR crops -> (B, 6, 96, 96) float32 [0, 1]: [lower half masked | full].

    Both halves come from the same frame, as in the official inference (PIPELINES.md 1.4 #20-21)."""
    faces = crops.astype(np.float32) / 255.0
    masked = faces.copy()
    masked[:, CROP_SIZE // 2:] = 0.0
    return np.ascontiguousarray(np.concatenate([masked, faces], axis=3).transpose(0, 3, 1, 2))


class Wav2LipEngine:
    name = "wav2lip"
    licence = LICENCES["wav2lip"]

    def __init__(self, settings: Settings, *, detector: FaceDetector | None = None,
                 detector_id: str | None = None):
        self.weights_dir = Path(settings.weights_dir)
        self.cache_dir = Path(settings.avatar_cache_dir)
        self._device_setting = settings.torch_device
        self._detector, self._detector_id = detector, detector_id
        self._model = None
        self._placement: Placement | None = None
        self._lock = threading.Lock()  # one load, even with several jobs in threads

    def unavailable_reason(self) -> str | None:
        return missing_weights_reason(self.name, self.weights_dir)

    # --- loading, once per process ------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch

            from models.wav2lip import load_wav2lip
            from models.wav2lip.conv import fold_batchnorm

            self._placement = choose_placement(self._device_setting)
            path = wav2lip_checkpoint(self.weights_dir)
            # Strict load of the official file first, then the inference-only rewrites.
            model = fold_batchnorm(load_wav2lip(path, self._placement.device))
            if self._placement.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._model = model
            log.info("wav2lip loaded %s on %s (%s)", path.name, self._placement.device, self._placement.reason)

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
        return load_or_prepare(base, self._load_detector, self._detector_identity(), self.cache_dir)

    # --- rendering -------------------------------------------------------------------------------

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int, batch_size: int,
               report: dict | None = None) -> Iterator[np.ndarray]:
        from models.face.blend import clip_box, lower_face_mask, match_colour, paste
        from models.wav2lip.audio import mel_windows, melspectrogram

        track = self.prepare(base)
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
                          avatar_cache="hit" if track.cache_hit else "miss")

    def _generate(self, mel: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """(B, 80, 16) mel windows + (B, 96, 96, 3) crops -> (B, 96, 96, 3) uint8 BGR mouths."""
        import torch

        placement = self._placement
        face = torch.from_numpy(generator_input(crops)).to(placement.device)
        audio = torch.from_numpy(np.ascontiguousarray(mel[:, None])).to(placement.device)
        if placement.channels_last:
            face = face.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=placement.fp16):
            out = self._model(audio, face)
        pred = out.float().permute(0, 2, 3, 1).cpu().numpy()
        return np.clip(pred * 255.0 + 0.5, 0, 255).astype(np.uint8)
