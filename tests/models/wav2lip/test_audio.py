"""models/wav2lip/audio.py against hand computations of the official front end (PIPELINES §1)."""

from __future__ import annotations

from fractions import Fraction

import librosa
import numpy as np
import pytest

from models.wav2lip import audio

SR = 16000


# --- an independent numpy-only front end: naive DFT, hand reflect padding, hand Slaney mel ---


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney: linear (200/3 Hz per mel) below 1 kHz, logarithmic (6.4x per 27 mels) above
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def _slaney_basis() -> np.ndarray:
    fft_hz = np.arange(401) * (SR / 800)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(55.0), _hz_to_mel(7600.0), 82))
    basis = np.zeros((80, 401))
    for m in range(80):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rising = (fft_hz - left) / (centre - left)
        falling = (right - fft_hz) / (right - centre)
        basis[m] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (right - left)
    return basis


def _hand_melspectrogram(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    y = x.copy()
    y[1:] -= 0.97 * x[:-1]
    padded = np.concatenate([y[1:401][::-1], y, y[-401:-1][::-1]])
    n = np.arange(800)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 800)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(401), n) / 800)
    frames = np.stack([padded[t * 200 : t * 200 + 800] for t in range(1 + len(x) // 200)])
    magnitude = np.abs(dft @ (frames * window).T)  # (401, T)
    db = 20 * np.log10(np.maximum(1e-5, _slaney_basis() @ magnitude)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def _test_signal(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2900 * t)
    return (wav + 0.02 * rng.standard_normal(n)).astype(np.float32)


def test_melspectrogram_matches_hand_computation():
    # Given a short signal that is not a multiple of the hop
    wav = _test_signal(1234)
    # When
    mel = audio.melspectrogram(wav)
    expected = _hand_melspectrogram(wav)
    # Then the shapes, dtype and values agree, and the test is not trivially all clipped
    assert mel.shape == (80, 7) and mel.dtype == np.float32
    assert np.mean(np.abs(expected) < 4) > 0.5
    np.testing.assert_allclose(mel, expected, rtol=0, atol=1e-5)


def test_reflect_padding_is_used_at_both_edges():
    # Given a loud signal right up to both edges, where zero padding would change the edge frames
    wav = _test_signal(2000, seed=3) * 2
    mel = audio.melspectrogram(wav)
    expected = _hand_melspectrogram(wav)
    np.testing.assert_allclose(mel[:, [0, -1]], expected[:, [0, -1]], atol=1e-5)


def test_melspectrogram_matches_librosa_stft_with_reflect_padding():
    # Given 3 s of a chirp after 0.25 s of silence
    t = np.arange(3 * SR) / SR
    wav = (0.5 * np.sin(2 * np.pi * (100 + 1500 * t) * t)).astype(np.float32)
    wav[:4000] = 0
    # When the same chain is computed with librosa's STFT, reflect padding forced
    emph = np.concatenate([wav[:1], wav[1:] - 0.97 * wav[:-1].astype(np.float64)])
    spec = np.abs(
        librosa.stft(
            emph,
            n_fft=800,
            hop_length=200,
            win_length=800,
            center=True,
            pad_mode="reflect",
            window="hann",
        )
    )
    basis = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ spec)) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    # Then
    mel = audio.melspectrogram(wav)
    assert mel.shape == (80, 241)
    np.testing.assert_allclose(mel, expected, atol=1e-5)


def test_mel_basis_is_slaney_and_cached():
    basis = audio.mel_filters()
    assert basis.shape == (80, 401) and basis.dtype == np.float32
    np.testing.assert_allclose(basis, _slaney_basis(), rtol=1e-5, atol=1e-8)
    assert audio.mel_filters() is basis


def test_digital_silence_is_exactly_minus_four():
    mel = audio.melspectrogram(np.zeros(16000, dtype=np.float32))
    assert mel.shape == (80, 81)
    assert np.all(mel == -4.0)


@pytest.mark.parametrize(
    ("samples", "frames"), [(1, 1), (199, 1), (200, 2), (401, 3), (48000, 241)]
)
def test_frame_count_is_one_plus_floor_n_over_hop(samples, frames):
    wav = _test_signal(samples)
    assert audio.num_mel_frames(samples) == frames
    assert audio.melspectrogram(wav).shape == (80, frames)


def test_derived_constants():
    assert audio.MEL_FPS == 80
    assert audio.MEL_STEP_SIZE == 16
    assert audio.SILENCE_VALUE == -4.0


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 100), np.float32), np.zeros(0, np.float32), np.zeros(10, np.int16)]
)
def test_melspectrogram_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        audio.melspectrogram(bad)


# --- windows ---


def test_three_seconds_at_25_fps_gives_72_windows():
    # Given T = 241 mel frames (3.0 s); window i starts at int(i * 3.2)
    starts = audio.window_starts(241, 25)
    # Then 71 regular windows (i = 0..70, the last at 224) and the tail window at 241 - 16 = 225
    assert len(starts) == 72
    assert starts[:6].tolist() == [0, 3, 6, 9, 12, 16]
    assert starts[70] == 224 and starts[71] == 225


@pytest.mark.parametrize("fps", [30, 30.0, Fraction(30)])
def test_window_starts_at_30_fps(fps):
    starts = audio.window_starts(241, fps)
    # int(i * 8 / 3): 0, 2, 5, 8, 10, 13, 16 ...; i = 84 -> 224 is the last that fits
    assert starts[:7].tolist() == [0, 2, 5, 8, 10, 13, 16]
    assert len(starts) == 86 and starts[84] == 224 and starts[85] == 225


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), 30000 / 1001])
def test_window_starts_at_ntsc_29_97_are_exact(fps):
    # int(i * 1001 / 375): 0, 2, 5, 8, 10, 13, 16; exactly 1001 at i = 375
    starts = audio.window_starts(10_000, fps)
    assert starts[:7].tolist() == [0, 2, 5, 8, 10, 13, 16]
    assert starts[375] == 1001 and starts[374] == 998
    i = np.arange(len(starts) - 1)
    assert starts[:-1].tolist() == [k * 1001 // 375 for k in i.tolist()]
    assert len(audio.window_starts(241, fps)) == 86


def test_float_fps_is_read_exactly_where_float_products_would_round_down():
    # 300 * 80 / (24000/1001) is exactly 1001, but 1000.9999999999999 in float arithmetic
    starts = audio.window_starts(2000, 24000 / 1001)
    assert int(300 * (80.0 / (24000 / 1001))) == 1000
    assert starts[300] == 1001 and starts[299] == 997


def test_tail_window_is_appended_even_when_last_regular_window_ends_at_t():
    # T = 32 at 25 fps: starts 0, 3, 6, 9, 12, 16 all fit (16 + 16 == 32); then the tail [16, 32)
    assert audio.window_starts(32, 25).tolist() == [0, 3, 6, 9, 12, 16, 16]


def test_mel_windows_cut_the_mel_at_the_starts():
    mel = np.random.default_rng(0).uniform(-4, 4, (80, 241)).astype(np.float32)
    windows = audio.mel_windows(mel, 25)
    starts = audio.window_starts(241, 25)
    assert windows.shape == (72, 80, 16) and windows.dtype == np.float32
    for i in (0, 1, 35, 70, 71):
        np.testing.assert_array_equal(windows[i], mel[:, starts[i] : starts[i] + 16])


def test_short_mel_gives_one_window_padded_with_silence():
    mel = np.random.default_rng(0).uniform(-3, 3, (80, 10)).astype(np.float32)
    windows = audio.mel_windows(mel, 25)
    assert windows.shape == (1, 80, 16)
    np.testing.assert_array_equal(windows[0, :, :10], mel)
    assert np.all(windows[0, :, 10:] == -4.0)


@pytest.mark.parametrize("fps", [0, -25, 0.0])
def test_non_positive_fps_is_rejected(fps):
    with pytest.raises(ValueError):
        audio.window_starts(241, fps)


def test_mel_windows_rejects_wrong_shape():
    with pytest.raises(ValueError):
        audio.mel_windows(np.zeros((16, 80), np.float32), 25)


def test_non_finite_audio_is_rejected():
    wav = np.zeros(1000, np.float32)
    wav[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        audio.melspectrogram(wav)
