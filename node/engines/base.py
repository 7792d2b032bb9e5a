"""What a local lip-sync engine is to the node: prepare once per process, then stream batches.

An engine gets the decoded base video and the speech, and yields uint8 BGR frame batches of the
base video's size, `batch_size` at a time. The pipeline checks for drain/cancel and reports
progress between batches, so a batch is the unit of interruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from node.avatars import BaseVideo


@dataclass(frozen=True)
class Speech:
    path: Path  # the audio file muxed into the output (any format ffmpeg reads)
    samples_16k: np.ndarray  # float32 mono, for the models' audio front ends
    duration_s: float
    provider: str  # "espeak", "elevenlabs", "upload", ...

    SAMPLE_RATE = 16000


@runtime_checkable
class LipSyncEngine(Protocol):
    name: str
    licence: str

    def unavailable_reason(self) -> str | None:
        """Why this engine cannot run on this node (no weights, disabled); None = ready."""

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int, batch_size: int,
               report: dict | None = None) -> Iterator[np.ndarray]:
        """`frame_count` frames in batches of uint8 (B, H, W, 3) BGR, H x W the base video's.

        `report`, when given, is filled once the last batch is out with what the job should tell
        its user (e.g. `passthrough_s`: seconds of frames without a face, left unchanged)."""
