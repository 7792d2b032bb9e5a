"""models/wav2lip/sync_score.py: the arithmetic on a one-hot SyncNet stand-in, the real layout on
random weights (random weights make the confidence meaningless, so no number is checked there)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.wav2lip import SyncNet
from models.wav2lip.sync_score import (
    MAX_OFFSET,
    SyncAccumulator,
    SyncScore,
    distance_matrix,
    face_input,
    score_clip,
    score_distances,
)
from tests.checkpoints import random_state_dict

CODES = 512


class OneHotSyncNet(nn.Module):
    """SyncNet stand-in without parameters: each embedding is a one-hot code.

    The face code is the B value of frame 0's top-left lower-half pixel times 255 (the window's
    first frame); the audio code is mel[0, 0]. Equal codes give distance 0, different codes 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[tuple[int, ...], ...]] = []  # (face codes, audio codes) per call

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        face_code = torch.round(face[:, 0, 0, 0] * 255).long()
        audio_code = torch.round(mel[:, 0, 0, 0]).long()
        self.batches.append((tuple(face_code.tolist()), tuple(audio_code.tolist())))
        return (nn.functional.one_hot(audio_code, CODES).float(),
                nn.functional.one_hot(face_code, CODES).float())


def coded_clip(frames: int, lag: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops and mel windows where video window i carries the code of audio window i + lag.

    Frame codes are a random permutation of 1..255 (no accidental agreement); audio windows with
    no frame lag frames earlier get codes 300+ that no frame has.
    """
    rng = np.random.default_rng(seed)
    codes = rng.permutation(np.arange(1, 256))[:frames]
    crops = rng.integers(0, 256, size=(frames, 96, 96, 3), dtype=np.uint8)
    crops[:, 48, 0, 0] = codes
    mels = rng.uniform(-4, 4, size=(frames, 80, 16)).astype(np.float32)
    for j in range(frames):
        mels[j, 0, 0] = codes[j - lag] if 0 <= j - lag < frames else 300 + j
    return crops, mels


def random_unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("lag", [3, -2, 0])
def test_known_offset_is_found_with_zero_distance(lag):
    # Given a clip whose video window i agrees exactly with audio window i + lag
    frames = 40
    crops, mels = coded_clip(frames, lag)
    # When it is scored, and again with its frames shuffled
    score = score_clip(OneHotSyncNet(), crops, mels)
    order = np.random.default_rng(1).permutation(frames)
    shuffled = score_clip(OneHotSyncNet(), crops[order], mels)
    # Then the offset is lag, the curve is 0 there and 1 elsewhere, and the distance is 0 except for
    # the windows whose partner i + lag lies before the audio starts (distance 1 each)
    windows = frames - 4
    assert score.offset_frames == lag
    assert score.windows == windows
    assert score.curve[MAX_OFFSET + lag] == 0.0
    assert all(v == 1.0 for o, v in enumerate(score.curve) if o != MAX_OFFSET + lag)
    assert score.distance == pytest.approx(max(0, -lag) / windows, abs=1e-12)
    assert score.confidence == pytest.approx(1.0)
    assert shuffled.confidence < score.confidence - 0.5


def test_face_input_matches_independent_slicing():
    # Given 7 random BGR crops
    crops = np.random.default_rng(2).integers(0, 256, size=(7, 96, 96, 3), dtype=np.uint8)
    # When they become the expert's face input
    faces = face_input(crops)
    # Then window s, channel 3f + c is channel c of frame s + f, rows 48-95, divided by 255
    assert faces.shape == (3, 15, 48, 96) and faces.dtype == np.float32
    for s in range(3):
        for f in range(5):
            for c in range(3):
                expected = (crops[s + f, 48:96, :, c] / 255.0).astype(np.float32)
                np.testing.assert_array_equal(faces[s, 3 * f + c], expected)
    assert face_input(crops[:4]).shape == (0, 15, 48, 96)


def test_face_input_rejects_wrong_layout():
    with pytest.raises(ValueError, match="uint8"):
        face_input(np.zeros((5, 96, 96, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        face_input(np.zeros((5, 3, 96, 96), dtype=np.uint8))


def test_distance_matrix_matches_a_loop_with_nan_edges():
    # Given unit embeddings and windows with gaps, close enough to the ends to leave the audio
    rng = np.random.default_rng(3)
    face, audio = random_unit(6, 8, rng), random_unit(11, 8, rng)
    starts = np.array([0, 1, 2, 5, 6, 9])
    # When the matrix is built (from torch tensors too)
    dists = distance_matrix(face, audio, starts, max_offset=3)
    from_torch = distance_matrix(torch.from_numpy(face).float(), torch.from_numpy(audio).float(),
                                 torch.from_numpy(starts), max_offset=3)
    # Then it equals 1 - <f_i, a_{s_i + o}>, NaN outside [0, 11)
    assert dists.shape == (6, 7) and dists.dtype == np.float64
    for i, s in enumerate(starts):
        for column, o in enumerate(range(-3, 4)):
            if 0 <= s + o < 11:
                expected = 1 - float(face[i] @ audio[s + o])
                assert dists[i, column] == pytest.approx(expected, abs=1e-12)
            else:
                assert math.isnan(dists[i, column])
    np.testing.assert_allclose(from_torch, dists, atol=1e-6)


def test_score_distances_excludes_nan_and_breaks_ties_towards_zero():
    # Given 3 windows over offsets -2..2, equal lowest means at -2 and +1, one row all NaN
    nan = math.nan
    dists = np.array([
        [0.2, 0.9, 0.8, nan, 0.9],
        [nan, 0.7, 0.6, 0.2, 0.7],
        [nan, nan, nan, nan, nan],
        [nan, 0.5, 0.4, 0.2, 0.5],
    ])
    # When it is scored
    score = score_distances(dists, max_offset=2)
    # Then means skip NaN, the all-NaN row is not a window, and the tie goes to +1 (nearer 0)
    assert score.curve == pytest.approx((0.2, 0.7, 0.6, 0.2, 0.7))
    assert score.windows == 3
    assert score.offset_frames == 1
    assert score.distance == pytest.approx((0.2 + 0.2 + 0.2) / 3)
    assert score.confidence == pytest.approx(0.6 - 0.2)
    assert score.as_dict() == {"distance": 0.2, "confidence": 0.4, "offset_frames": 1, "windows": 3}
    assert score_distances(np.full((2, 5), nan), max_offset=2) is None
    with pytest.raises(ValueError, match="shape"):
        score_distances(dists, max_offset=3)


def test_accumulator_in_uneven_batches_equals_score_clip():
    # Given a coded clip and a small embedding batch, so batches straddle the add() calls
    crops, mels = coded_clip(40, lag=2, seed=4)
    whole = OneHotSyncNet()
    expected = score_clip(whole, crops, mels, batch_size=4)
    streamed = OneHotSyncNet()
    accumulator = SyncAccumulator(streamed, mels, batch_size=4)
    # When the frames arrive in batches of 1, 3, 7, 2, 11, 0, 16
    at = 0
    for size in (1, 3, 7, 2, 11, 0, 16):
        accumulator.add(crops[at : at + size])
        at += size
    assert at == 40
    result = accumulator.result()
    # Then the score is the same, and so is every batch the network saw (what makes a real network
    # give bit-identical numbers), none larger than batch_size
    assert result == expected
    assert streamed.batches == whole.batches
    assert max(len(faces) for faces, _ in streamed.batches) == 4
    assert accumulator.result() == expected


def test_invalid_frames_exclude_exactly_the_windows_touching_them():
    # Given 30 frames, faces missing at frames 8 and 20
    crops, mels = coded_clip(30, lag=1, seed=5)
    valid = np.ones(30, dtype=bool)
    valid[[8, 20]] = False
    # When the clip is scored with the validity mask
    score = score_clip(OneHotSyncNet(), crops, mels, valid, batch_size=5)
    # Then the score is that of the windows not touching 8 or 20, scored by hand
    starts = np.array([s for s in range(26) if not (s <= 8 <= s + 4 or s <= 20 <= s + 4)])
    faces = np.eye(CODES)[crops[starts, 48, 0, 0]]
    audio = np.eye(CODES)[np.round(mels[:, 0, 0]).astype(int)]
    assert score == score_distances(distance_matrix(faces, audio, starts))
    assert score.windows == 26 - 10
    assert score.offset_frames == 1


def test_long_gaps_without_faces_keep_the_buffer_small():
    # Given 200 frames where only a few short runs have a face, and a batch of 8
    crops, mels = coded_clip(200, lag=0, seed=7)
    valid = np.zeros(200, dtype=bool)
    for lo in (0, 50, 120, 190):
        valid[lo : lo + 7] = True
    net = OneHotSyncNet()
    accumulator = SyncAccumulator(net, mels, batch_size=8)
    # When they arrive 10 at a time
    buffered = []
    for lo in range(0, 200, 10):
        accumulator.add(crops[lo : lo + 10], valid[lo : lo + 10])
        buffered.append(len(accumulator._lower))
    score = accumulator.result()
    # Then at most batch_size + 5 frames were ever held, and the score is still the whole clip's
    assert max(buffered) <= 8 + 5
    assert score == score_clip(OneHotSyncNet(), crops, mels, valid, batch_size=8)
    assert score.windows == 3 + 3 + 3 + 3 and score.offset_frames == 0


def test_too_few_frames_give_none():
    crops, mels = coded_clip(10, lag=0)
    accumulator = SyncAccumulator(OneHotSyncNet(), mels)
    accumulator.add(crops[:4])
    assert accumulator.result() is None
    assert score_clip(OneHotSyncNet(), crops[:3], mels) is None
    # Five frames but one without a face: no complete window either
    assert score_clip(OneHotSyncNet(), crops[:5], mels, np.array([1, 1, 0, 1, 1], bool)) is None


def test_bad_arguments_raise():
    crops, mels = coded_clip(6, lag=0)
    with pytest.raises(ValueError, match="mel_windows"):
        SyncAccumulator(OneHotSyncNet(), mels[:, :, :8])
    accumulator = SyncAccumulator(OneHotSyncNet(), mels)
    with pytest.raises(ValueError, match="valid"):
        accumulator.add(crops, np.ones(5, dtype=bool))


def test_real_architecture_on_random_weights_gives_finite_numbers():
    # Given the expert's architecture with random weights and a short random clip
    net = SyncNet()
    net.load_state_dict(random_state_dict("wav2lip_syncnet_expert"))
    net.eval()
    rng = np.random.default_rng(6)
    crops = rng.integers(0, 256, size=(12, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, size=(12, 80, 16)).astype(np.float32)
    # When it is scored
    score = score_clip(net, crops, mels)
    # Then every number is finite and cosine distances of ReLU features lie in [0, 1]
    assert isinstance(score, SyncScore) and score.windows == 8
    assert math.isfinite(score.distance) and math.isfinite(score.confidence)
    assert 0.0 <= score.distance <= 1.0 + 1e-6 and score.confidence >= 0.0
    finite = [v for v in score.curve if math.isfinite(v)]
    assert len(finite) == 7 + 1 + 11  # starts 0..7: only offsets -7..11 reach the 12 audio rows
    assert -7 <= score.offset_frames <= 11


@pytest.mark.parametrize("stride", [2, 3])
def test_a_window_stride_scores_every_nth_window_and_finds_the_same_offset(stride):
    # Given a clip whose video window i agrees with audio window i + 3
    crops, mels = coded_clip(40, 3)
    # When only every `stride`-th window is scored
    net = OneHotSyncNet()
    score = score_clip(net, crops, mels, window_stride=stride)
    every = score_clip(OneHotSyncNet(), crops, mels)
    # Then the windows starting at multiples of the stride were embedded, and no other
    starts = [code for faces, _ in net.batches for code in faces if code]  # 0: a blank face (audio only)
    expected = [int(crops[s, 48, 0, 0]) for s in range(0, 36, stride)]
    assert starts == expected and score.windows == len(expected)
    # and the offset is the same as with every window
    assert score.offset_frames == every.offset_frames == 3
