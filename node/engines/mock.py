"""The `mock` engine: draws a mouth whose opening follows the speech energy, so the whole
render path (chain, batches, encoder, progress, drain) runs in tests without weights.
Enabled only by ENABLE_MOCK_ENGINE."""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from node.avatars import BaseVideo
from node.engines.base import Speech
from node.engines.speech_activity import frame_energy

#: The mouth is drawn here, as fractions of the frame, when the avatar has no mouth_box.
DEFAULT_MOUTH_CENTRE = (0.5, 0.7)
DEFAULT_MOUTH_WIDTH = 0.12
LIP_BGR = (40, 40, 150)
INNER_BGR = (20, 10, 30)


class MockEngine:
    name = "mock"
    licence = "n/a (test engine, draws a synthetic mouth)"

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def unavailable_reason(self) -> str | None:
        return None if self.enabled else "ENABLE_MOCK_ENGINE is off (the mock engine is for tests)"

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int, batch_size: int,
               report: dict | None = None) -> Iterator[np.ndarray]:
        energy = frame_energy(speech.samples_16k, Speech.SAMPLE_RATE, float(base.fps), frame_count)
        cx, cy, half_w = self._mouth(base)
        indices = base.pingpong_indices(frame_count)
        for start in range(0, frame_count, batch_size):
            batch = base.take(indices[start:start + batch_size])
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
