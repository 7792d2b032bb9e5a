"""The `mock` engine: draws a mouth whose opening follows the speech energy, so the whole
render path (chain, batches, encoder, progress, drain) runs in tests without weights.
Enabled only by ENABLE_MOCK_ENGINE."""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from node.avatars import BaseVideo
from node.engines.base import Speech

#: The mouth is drawn here, as fractions of the frame, when the avatar has no mouth_box.
DEFAULT_MOUTH_CENTRE = (0.5, 0.7)
DEFAULT_MOUTH_WIDTH = 0.12
LIP_BGR = (40, 40, 150)
INNER_BGR = (20, 10, 30)


def frame_energy(samples: np.ndarray, sample_rate: int, fps: float, frame_count: int) -> np.ndarray:
    """RMS of the audio under each video frame, scaled to [0, 1] by the clip's 95th percentile."""
    edges = (np.arange(frame_count + 1) * sample_rate / fps).astype(np.int64)
    edges = np.clip(edges, 0, len(samples))
    sq = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt((sq[edges[1:]] - sq[edges[:-1]]) / counts)
    ref = np.percentile(rms, 95) if rms.size else 0.0
    return np.clip(rms / ref, 0.0, 1.0) if ref > 1e-6 else np.zeros(frame_count)


class MockEngine:
    name = "mock"
    licence = "n/a (test engine, draws a synthetic mouth)"

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def unavailable_reason(self) -> str | None:
        return None if self.enabled else "ENABLE_MOCK_ENGINE is off (the mock engine is for tests)"

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int,
               batch_size: int) -> Iterator[np.ndarray]:
        energy = frame_energy(speech.samples_16k, Speech.SAMPLE_RATE, float(base.fps), frame_count)
        cx, cy, half_w = self._mouth(base)
        indices = base.pingpong_indices(frame_count)
        for start in range(0, frame_count, batch_size):
            batch = np.array(base.frames[indices[start:start + batch_size]])  # copy: cache is read-only
            for k, frame in enumerate(batch):
                opening = energy[start + k]
                half_h = max(1, int(round(half_w * (0.12 + 0.55 * opening))))
                cv2.ellipse(frame, (cx, cy), (half_w, half_h), 0, 0, 360, LIP_BGR, -1, cv2.LINE_AA)
                if opening > 0.05:
                    inner = (max(1, int(half_w * 0.75)), max(1, int(half_h * 0.7)))
                    cv2.ellipse(frame, (cx, cy), inner, 0, 0, 360, INNER_BGR, -1, cv2.LINE_AA)
            yield batch

    @staticmethod
    def _mouth(base: BaseVideo) -> tuple[int, int, int]:
        box = base.source.mouth_box
        if box:
            x1, y1, x2, y2 = box
            return (x1 + x2) // 2, (y1 + y2) // 2, max(2, (x2 - x1) // 2)
        return (int(base.width * DEFAULT_MOUTH_CENTRE[0]), int(base.height * DEFAULT_MOUTH_CENTRE[1]),
                max(2, int(base.width * DEFAULT_MOUTH_WIDTH / 2)))
