"""Per-video-frame speech activity: how loud the audio under each frame is, and where the
speaker is silent long enough that the mouth should stay the source's."""

from __future__ import annotations

import math

import numpy as np

#: A pause at least this long keeps the source mouth instead of generated motion.
MIN_SILENCE_S = 0.2
#: Relative loudness (of the clip's 95th percentile) under which a frame counts as silent.
SILENCE_LEVEL = 0.06
#: Frames over which the generated mouth fades to the source one at a pause's edges.
CROSSFADE_FRAMES = 3


def frame_energy(samples: np.ndarray, sample_rate: int, fps: float, frame_count: int) -> np.ndarray:
    """(frame_count,) RMS of the audio under each video frame, scaled to [0, 1] by the clip's
    95th percentile (so the measure does not depend on recording level)."""
    edges = (np.arange(frame_count + 1) * sample_rate / fps).astype(np.int64)
    edges = np.clip(edges, 0, len(samples))
    sq = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt(np.maximum(sq[edges[1:]] - sq[edges[:-1]], 0) / counts)
    ref = np.percentile(rms, 95) if rms.size else 0.0
    return np.clip(rms / ref, 0.0, 1.0) if ref > 1e-6 else np.zeros(frame_count)


def mouth_weights(energy: np.ndarray, fps: float) -> np.ndarray:
    """(N,) float32 in [0, 1]: 1 = generated mouth, 0 = source mouth.

    Runs of silent frames lasting >= MIN_SILENCE_S get 0, with a linear cross-fade of
    CROSSFADE_FRAMES inside the run at each edge that borders speech."""
    n = len(energy)
    weights = np.ones(n, np.float32)
    silent = energy < SILENCE_LEVEL
    min_run = max(1, math.ceil(MIN_SILENCE_S * fps - 1e-9))
    i = 0
    while i < n:
        if not silent[i]:
            i += 1
            continue
        j = i
        while j < n and silent[j]:
            j += 1
        if j - i >= min_run:
            ramp = np.linspace(1, 0, CROSSFADE_FRAMES + 2, dtype=np.float32)[1:-1]
            run = np.zeros(j - i, np.float32)
            if i > 0:  # fade out of speech
                k = min(len(ramp), len(run))
                run[:k] = np.maximum(run[:k], ramp[:k])
            if j < n:  # fade into speech
                k = min(len(ramp), len(run))
                run[len(run) - k:] = np.maximum(run[len(run) - k:], ramp[::-1][len(ramp) - k:])
            weights[i:j] = run
        i = j
    return weights
