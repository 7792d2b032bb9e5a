"""Audio-visual sync score of a clip with the Wav2Lip SyncNet expert: distance, confidence, offset.

Inputs and outputs
------------------
- crops: (N, 96, 96, 3) uint8 BGR face crops, one per video frame, as the Wav2Lip generator takes
  and returns them. `face_input` turns them into the expert's face input: one window per start
  frame s = 0..N-5, (N - 4, 15, 48, 96) float32 in [0, 1], rows 48-95 (lower half) of frames
  s..s+4, each BGR, stacked on the channel axis in frame order.
- mel_windows: (M, 80, 16) float32, `models.wav2lip.audio.mel_windows(mel, fps)`: row j is the mel
  window of video frame j. As in the expert's training, the 5-frame face window starting at frame s
  is paired with the mel window of frame s (PIPELINES.md §1.2 fact 13).
- `distance_matrix`: (K, 2 * max_offset + 1) float64, row i = video window starting at starts[i],
  column o + max_offset = cosine distance 1 - <f_i, a_{starts[i] + o}> to the audio window o frames
  later, NaN where that audio window does not exist.
- `score_distances` -> `SyncScore` (distance, confidence, offset_frames, curve, windows).
- `SyncAccumulator` embeds frames as a renderer yields them; `score_clip` scores a whole clip with
  it, so both give the same numbers.

How this follows and where it departs from the published protocol
-----------------------------------------------------------------
The published LSE-D / LSE-C (Wav2Lip paper §4, computed with joonson/syncnet_python's
`SyncNetInstance.evaluate` and `calc_pdist`, vshift = 15) work like this: the original SyncNet of
Chung & Zisserman embeds 5-frame windows of whole 224x224 face-track crops and 0.2 s of MFCCs;
for each video window i and shift o in -15..15 the euclidean distance to audio feature i + o is
taken, audio features padded with zero vectors past both ends; `mdist[o]` is the mean over windows;
LSE-D is min(mdist), LSE-C is median(mdist) - min(mdist), and the AV offset is argmin(mdist)
reported as 15 - index.

Followed here: 5-frame video windows against 0.2 s audio windows aligned with the window's first
frame, shifts of -15..15 frames, a mean distance curve over shifts, the confidence as the median
of that curve minus its minimum, the offset as its argmin.

Departures, so compare numbers only with numbers from this module:
- Network and input: the Wav2Lip expert (`lipsync_expert.pth`, trained on LRS2 at 25 fps) on the
  lower half of 96x96 crops (the generator's own crops, no second face detection), not the
  original SyncNet on 224x224 crops of the whole face, and mel windows, not MFCCs. At frame rates
  other than 25 the five frames span 5/fps s while the mel window stays 0.2 s.
- Distance: cosine distance 1 - <f, a> of unit-norm embeddings (what the expert was trained on,
  a BCE loss on the cosine similarity), not the euclidean distance of unnormalised features. The
  expert's embeddings come out of a ReLU, so distances lie in [0, 1] (published LSE-D values are
  around 6-8, LSE-C around 6-8; nothing here is on that scale).
- `distance` is the mean over video windows of each window's minimum over shifts (the issue's
  definition), which is <= the published LSE-D, min of the mean curve; that one is `min(curve)`.
- Edges: a shift that reaches past the clip's audio is left out (NaN) instead of compared with a
  zero vector, and each point of the curve is the mean over the windows that have that shift, so
  edge windows do not drag the curve up. The audio windows cover every video frame (M >= N
  normally), one window more than syncnet_python's `min_length - 5` range.
- Frames without a face (`valid` False) exclude every window touching them; the published
  pipeline instead splits face tracks and scores each track.
- Median: `np.median` of the finite curve points (31 normally, so the middle one; with an even
  count the mean of the two middle ones, where torch.median would take the lower).
- Offset sign: `offset_frames` = o at the argmin, video window i matching audio window i + o, so a
  positive value means the audio lags the video by o frames. syncnet_python's "AV offset" is
  15 - argmin index = -o, the opposite sign. Exact ties go to the offset nearest 0 (the negative
  one of a +-o tie); syncnet_python takes the first, most positive AV offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "CROP_SIZE",
    "MAX_OFFSET",
    "VIDEO_WINDOW",
    "SyncAccumulator",
    "SyncScore",
    "distance_matrix",
    "face_input",
    "score_clip",
    "score_distances",
]

MAX_OFFSET = 15  # frames each way, syncnet_python's vshift in the Wav2Lip evaluation
VIDEO_WINDOW = 5  # frames per expert face input (syncnet_T)
CROP_SIZE = 96  # generator crop side, pixels
HALF = CROP_SIZE // 2  # 48: the expert sees rows 48-95
FACE_CHANNELS = 3 * VIDEO_WINDOW  # 15
MEL_SHAPE = (80, 16)  # (n_mels, mel_step_size) of one audio window

# uint8 -> float32 exactly as the official pipeline does it: x / 255. in float64, then float32
_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


@dataclass(frozen=True)
class SyncScore:
    """Sync score of one clip; distances are cosine distances of the expert's embeddings."""

    distance: float  # LSE-D-like: mean over video windows of (min over offsets of the distance)
    confidence: float  # LSE-C-like: median minus min of the mean-distance curve over offsets
    offset_frames: int  # argmin of the curve: video window i matches audio window i + offset
    curve: tuple[float, ...]  # mean distance per offset -MAX_OFFSET..+MAX_OFFSET (NaN: no window)
    windows: int  # video windows that were scored

    def as_dict(self) -> dict:
        """{"distance", "confidence", "offset_frames", "windows"}, floats rounded to 4 decimals."""
        return {
            "distance": round(self.distance, 4),
            "confidence": round(self.confidence, 4),
            "offset_frames": self.offset_frames,
            "windows": self.windows,
        }


def _check_crops(crops_bgr: np.ndarray) -> np.ndarray:
    crops = np.asarray(crops_bgr)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        side = CROP_SIZE
        raise ValueError(f"crops must have shape (N, {side}, {side}, 3), got {crops.shape}")
    if crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 BGR, got {crops.dtype}")
    return crops


def _windows(lower: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """lower (F, 48, 96, 3) uint8 lower halves, starts (K,) indices into it -> (K, 15, 48, 96)."""
    frames = np.asarray(starts)[:, None] + np.arange(VIDEO_WINDOW)  # (K, 5)
    picked = lower[frames]  # (K, 5, 48, 96, 3)
    stacked = picked.transpose(0, 1, 4, 2, 3).reshape(len(frames), FACE_CHANNELS, HALF, CROP_SIZE)
    return _TO_UNIT[stacked]


def face_input(crops_bgr: np.ndarray) -> np.ndarray:
    """The expert's face input for every 5-frame window of a clip.

    crops_bgr: (N, 96, 96, 3) uint8 BGR. Returns (N - 4, 15, 48, 96) float32 in [0, 1]: window s
    holds rows 48-95 of frames s..s+4, channels [B, G, R] of frame s, then of s+1, ...; N < 5 gives
    (0, 15, 48, 96).
    """
    crops = _check_crops(crops_bgr)
    count = max(0, len(crops) - VIDEO_WINDOW + 1)
    return _windows(crops[:, HALF:], np.arange(count))


def _to_float64(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def distance_matrix(face_emb, audio_emb, starts, max_offset: int = MAX_OFFSET) -> np.ndarray:
    """Cosine distances of each video window to the audio windows around it.

    face_emb: (K, D) unit-norm (numpy or torch). audio_emb: (M, D) unit-norm. starts: (K,) int,
    the first frame of each video window. Returns (K, 2 * max_offset + 1) float64 with
    [i, o + max_offset] = 1 - <face_emb[i], audio_emb[starts[i] + o]>, NaN where starts[i] + o is
    outside [0, M). Embeddings are not renormalised here.
    """
    face = _to_float64(face_emb)
    audio = _to_float64(audio_emb)
    starts = np.asarray(starts)
    if face.ndim != 2 or audio.ndim != 2 or face.shape[1] != audio.shape[1]:
        raise ValueError(f"need (K, D) and (M, D) embeddings, got {face.shape} and {audio.shape}")
    integers = len(starts) == 0 or np.issubdtype(starts.dtype, np.integer)
    if starts.shape != (len(face),) or not integers:
        raise ValueError(f"starts must be ({len(face)},) ints, got {starts.shape} {starts.dtype}")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    # One column per offset: K * (2 max_offset + 1) dot products, never a (K, M) matrix
    dists = np.full((len(face), 2 * max_offset + 1), np.nan)
    for column, offset in enumerate(range(-max_offset, max_offset + 1)):
        target = starts + offset
        inside = (target >= 0) & (target < len(audio))
        dots = np.einsum("kd,kd->k", face[inside], audio[target[inside]])
        dists[inside, column] = 1.0 - dots
    return dists


def score_distances(dists: np.ndarray, max_offset: int = MAX_OFFSET) -> SyncScore | None:
    """Distance, confidence and offset from a `distance_matrix`; None when no row has a value.

    Non-finite entries are left out of every mean, minimum and median; rows without a finite entry
    are not counted in `windows`. Exact ties in the argmin go to the offset nearest 0.
    """
    dists = np.asarray(dists, dtype=np.float64)
    width = 2 * max_offset + 1
    if dists.ndim != 2 or dists.shape[1] != width:
        raise ValueError(
            f"dists must have shape (K, {width}) for max_offset={max_offset}, got {dists.shape}"
        )
    finite = np.isfinite(dists)
    scored = finite.any(axis=1)
    if not scored.any():
        return None
    dists, finite = dists[scored], finite[scored]

    counts = finite.sum(axis=0)
    sums = np.where(finite, dists, 0.0).sum(axis=0)
    has_value = counts > 0
    curve = np.full(width, np.nan)
    curve[has_value] = sums[has_value] / counts[has_value]

    per_window_min = np.where(finite, dists, np.inf).min(axis=1)
    lowest = curve[has_value].min()
    offsets = np.arange(-max_offset, max_offset + 1)
    tied = offsets[has_value & (curve == lowest)]
    offset = min(tied.tolist(), key=lambda o: (abs(o), o))
    return SyncScore(
        distance=float(per_window_min.mean()),
        confidence=float(np.median(curve[has_value]) - lowest),
        offset_frames=int(offset),
        # math.nan itself for missing points, so equal scores compare equal (nan is nan)
        curve=tuple(float(v) if ok else math.nan for v, ok in zip(curve, has_value)),
        windows=int(scored.sum()),
    )


class SyncAccumulator:
    """Streaming: frames arrive batch by batch (as a renderer yields them); memory stays flat in the
    clip's length (a few crops' lower halves, plus the (K, 512) face and (M, 512) audio embeddings).

    syncnet: anything with SyncNet's forward(mel (B, 1, 80, 16), face (B, 15, 48, 96)) ->
    (audio_emb (B, D), face_emb (B, D)), unit norm. Inputs go to its first parameter's device and
    dtype (CPU float32 when it has none), in channels-last layout when its convolutions are, under
    torch.inference_mode.
    mel_windows: (M, 80, 16) float, the mel window of each video frame of the clip (frame j ->
    row j).

    window_stride: score the video windows starting at every `window_stride`-th frame only (1: all
    of them). Windows overlap by 4 frames, so a stride of 2 still sees every frame twice or more;
    it halves the face encoder, the cost that matters on a CPU node.

    Complete face windows are embedded batch_size at a time, each batch paired with the next
    batch_size audio windows, so the batches the network sees do not depend on how frames were
    split across `add` calls: the accumulator and `score_clip` give identical numbers. A batch is
    cut short when frames without a face would otherwise hold its first window's frames, so the
    buffer never exceeds the lower halves of batch_size + 5 frames (48x96x3 uint8 each). Video
    frames past the last mel window only meet NaN (unscored) audio.
    """

    def __init__(
        self,
        syncnet: nn.Module,
        mel_windows: np.ndarray,
        *,
        max_offset: int = MAX_OFFSET,
        batch_size: int = 64,
        window_stride: int = 1,
    ) -> None:
        mels = np.asarray(mel_windows, dtype=np.float32)
        if mels.ndim != 3 or mels.shape[1:] != MEL_SHAPE:
            raise ValueError(f"mel_windows must have shape (M, 80, 16), got {mels.shape}")
        if max_offset < 0:
            raise ValueError(f"max_offset must be >= 0, got {max_offset}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if window_stride < 1:
            raise ValueError(f"window_stride must be >= 1, got {window_stride}")
        self.syncnet = syncnet
        self.window_stride = window_stride
        self.max_offset = max_offset
        self.batch_size = batch_size
        self._mels = mels
        param = next(iter(syncnet.parameters()), None) if isinstance(syncnet, nn.Module) else None
        self._device = param.device if param is not None else torch.device("cpu")
        self._dtype = param.dtype if param is not None else torch.float32
        # a network converted to channels-last gets its face input in that layout too
        convs = [q for q in syncnet.parameters() if q.dim() == 4] if isinstance(syncnet, nn.Module) else []
        self._channels_last = bool(convs) and convs[0].is_contiguous(memory_format=torch.channels_last)

        self._lower: list[np.ndarray] = []  # (48, 96, 3) uint8 lower halves from frame _first on
        self._valid: list[bool] = []
        self._first = 0  # clip index of _lower[0]
        self._frames = 0  # frames added so far
        self._pending: list[int] = []  # starts of complete valid windows not yet embedded
        self._starts: list[int] = []  # starts of embedded windows, in order
        self._face_emb: list[np.ndarray] = []  # (b, D) float32 per batch
        self._audio_emb: np.ndarray | None = None  # (M, D) float32, rows filled as computed
        self._audio_done = np.zeros(len(mels), dtype=bool)
        self._audio_next = 0  # next mel row to pair with a face batch

    def add(self, crops_bgr: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Append the next consecutive frames.

        crops_bgr: (B, 96, 96, 3) uint8 BGR face crops. valid: (B,) bool, False for frames without
        a face; every 5-frame window touching an invalid frame is left unscored.
        """
        crops = _check_crops(crops_bgr)
        if valid is None:
            flags = np.ones(len(crops), dtype=bool)
        else:
            flags = np.asarray(valid)
            if flags.shape != (len(crops),) or flags.dtype != np.bool_:
                raise ValueError(
                    f"valid must be ({len(crops)},) bool, got {flags.shape} {flags.dtype}"
                )
        for crop, ok in zip(crops, flags):
            self._lower.append(np.array(crop[HALF:]))  # a copy: the caller's batch is not kept
            self._valid.append(bool(ok))
            self._frames += 1
            start = self._frames - VIDEO_WINDOW
            on_stride = start % self.window_stride == 0
            if start >= self._first and on_stride and all(self._valid[start - self._first :]):
                self._pending.append(start)
                if len(self._pending) == self.batch_size:
                    self._embed_faces(self.batch_size)
            if self._pending and self._frames - self._pending[0] > self.batch_size + 4:
                self._embed_faces(len(self._pending))  # a gap: embed now rather than buffer it
            self._trim()

    def result(self) -> SyncScore | None:
        """Embed what is pending and the audio windows still needed, then score; None when no
        window could be scored (fewer than 5 valid consecutive frames). May be called again."""
        while self._pending:
            self._embed_faces(min(self.batch_size, len(self._pending)))
        self._trim()
        if not self._starts:
            return None
        starts = np.asarray(self._starts, dtype=np.int64)
        face = np.concatenate(self._face_emb)
        # Audio rows any window can reach; those not paired with a face batch are embedded now
        need_lo = max(0, int(starts.min()) - self.max_offset)
        need_hi = min(len(self._mels), int(starts.max()) + self.max_offset + 1)
        missing = [j for j in range(need_lo, need_hi) if not self._audio_done[j]]
        for lo in range(0, len(missing), self.batch_size):
            rows = missing[lo : lo + self.batch_size]
            self._store_audio(rows, self._audio_only(self._mels[rows]))
        audio = self._audio_emb
        if audio is None:  # no mel row within reach: every distance is NaN
            audio = np.zeros((len(self._mels), face.shape[1]), dtype=np.float32)
        dists = distance_matrix(face, audio, starts, self.max_offset)
        return score_distances(dists, self.max_offset)

    def _embed_faces(self, count: int) -> None:
        starts = self._pending[:count]
        del self._pending[:count]
        lower = np.stack(self._lower)
        faces = _windows(lower, np.asarray(starts) - self._first)
        # Pair the batch with the next mel rows; past the last row, reuse it and discard the output
        rows = [min(self._audio_next + k, len(self._mels) - 1) for k in range(count)]
        fresh = list(range(self._audio_next, min(self._audio_next + count, len(self._mels))))
        if len(self._mels):
            audio, face = self._forward(self._mels[rows], faces)
            self._store_audio(fresh, audio[: len(fresh)])
        else:
            _, face = self._forward(np.zeros((count, *MEL_SHAPE), np.float32), faces)
        self._audio_next += len(fresh)
        self._starts.extend(starts)
        self._face_emb.append(face)

    def _store_audio(self, rows: list[int], audio: np.ndarray) -> None:
        if not rows:
            return
        if self._audio_emb is None:
            self._audio_emb = np.zeros((len(self._mels), audio.shape[1]), dtype=np.float32)
        self._audio_emb[rows] = audio
        self._audio_done[rows] = True

    def _forward(self, mels: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mel = torch.from_numpy(np.ascontiguousarray(mels)).unsqueeze(1)
        face = torch.from_numpy(faces)
        if self._channels_last:
            face = face.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            audio, face_emb = self.syncnet(
                mel.to(self._device, self._dtype), face.to(self._device, self._dtype)
            )
        return (
            audio.to("cpu", torch.float32).numpy(),
            face_emb.to("cpu", torch.float32).numpy(),
        )

    def _audio_only(self, mels: np.ndarray) -> np.ndarray:
        """Audio embeddings alone: through `embed_audio` when the network has it (SyncNet does),
        else through the forward with a blank face batch whose embedding is thrown away."""
        embed_audio = getattr(self.syncnet, "embed_audio", None)
        if embed_audio is None:
            blank = np.zeros((len(mels), FACE_CHANNELS, HALF, CROP_SIZE), dtype=np.float32)
            return self._forward(mels, blank)[0]
        mel = torch.from_numpy(np.ascontiguousarray(mels)).unsqueeze(1)
        with torch.inference_mode():
            return embed_audio(mel.to(self._device, self._dtype)).to("cpu", torch.float32).numpy()

    def _trim(self) -> None:
        # Keep the frames of pending windows and the last 4 (they may start a window)
        keep_from = self._frames - (VIDEO_WINDOW - 1)
        if self._pending:
            keep_from = min(keep_from, self._pending[0])
        drop = max(0, keep_from - self._first)
        if drop:
            del self._lower[:drop]
            del self._valid[:drop]
            self._first += drop


def score_clip(
    syncnet: nn.Module,
    crops_bgr: np.ndarray,
    mel_windows: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    max_offset: int = MAX_OFFSET,
    batch_size: int = 64,
    window_stride: int = 1,
) -> SyncScore | None:
    """Score a whole clip at once: `SyncAccumulator` fed every frame in one `add`, same numbers.

    crops_bgr: (N, 96, 96, 3) uint8 BGR; mel_windows: (M, 80, 16) float32 (frame j -> row j);
    valid: (N,) bool or None (all frames have a face). None when no window could be scored.
    """
    accumulator = SyncAccumulator(
        syncnet, mel_windows, max_offset=max_offset, batch_size=batch_size, window_stride=window_stride
    )
    accumulator.add(crops_bgr, valid)
    return accumulator.result()
