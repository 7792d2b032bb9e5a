"""The Wav2Lip audio front end: 16 kHz mono samples -> normalised log-mel -> 16-column windows.

Numerically this is the official `audio.melspectrogram` as it ran under librosa 0.7.0
(PIPELINES.md §1.1), with the STFT framing done here so that no librosa default (padding mode,
output dtype) can drift under us. Only the mel filterbank comes from librosa.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from numbers import Rational

import librosa
import numpy as np
import scipy.signal

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_SIZE",
    "WIN_SIZE",
    "N_MELS",
    "MEL_FPS",
    "MEL_STEP_SIZE",
    "SILENCE_VALUE",
    "melspectrogram",
    "mel_filters",
    "num_mel_frames",
    "window_starts",
    "mel_windows",
]

# hparams.py of the official repo
SAMPLE_RATE = 16000  # Hz
N_FFT = 800  # 50 ms
HOP_SIZE = 200  # 12.5 ms
WIN_SIZE = 800  # 50 ms
N_MELS = 80
FMIN = 55  # Hz
FMAX = 7600  # Hz
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100
REF_LEVEL_DB = 20
MAX_ABS_VALUE = 4.0  # symmetric mels: output range [-4, 4]

# derived
MEL_FPS = SAMPLE_RATE // HOP_SIZE  # 80 mel frames per second of audio
STFT_PAD = N_FFT // 2  # 400 samples of reflect padding on each side (center=True)
MIN_LEVEL = 10.0 ** (MIN_LEVEL_DB / 20)  # 1e-5, the magnitude floor before log
SILENCE_VALUE = -MAX_ABS_VALUE  # -4.0, what digital silence normalises to
MEL_STEP_SIZE = 16  # mel columns per generator window (inference.py mel_step_size): 0.2 s


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-style mel filterbank, shape (N_MELS, N_FFT // 2 + 1) = (80, 401), float32."""
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False, norm="slaney"
    )
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # periodic ("fftbins") Hann, as librosa's stft builds it
    return scipy.signal.get_window("hann", WIN_SIZE, fftbins=True)


def num_mel_frames(num_samples: int) -> int:
    """Number of mel columns T for `num_samples` samples: 1 + floor(N / HOP_SIZE)."""
    return 1 + num_samples // HOP_SIZE


def _stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| of a float64 signal, shape (N_FFT // 2 + 1, T), float32.

    The official code got a complex64 matrix from librosa 0.7.0 and took its magnitude, so the
    spectrum is rounded through complex64 here too.
    """
    padded = np.pad(y, STFT_PAD, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP_SIZE
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SIZE][:n_frames]
    spectrum = np.fft.rfft(frames * _hann_window(), axis=1).astype(np.complex64)
    return np.abs(spectrum).T


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel spectrogram of mono 16 kHz audio.

    wav: shape (N,), float (float32 as librosa loads it), nominally in [-1, 1], 16 kHz mono.
    Returns shape (80, T) float32 in [-4, 4] with T = 1 + N // 200; digital silence is exactly -4.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"wav must be a 1-D mono signal, got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError("wav is empty")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"wav must be floating point, got {wav.dtype}")
    if not np.isfinite(wav).all():
        raise ValueError("wav contains NaN or infinite samples")

    # y[n] = x[n] - 0.97 x[n-1], x[-1] = 0
    emphasised = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav.astype(np.float64))
    magnitude = _stft_magnitude(emphasised)
    mel = mel_filters() @ magnitude  # float32, (80, T)
    db = 20 * np.log10(np.maximum(np.float32(MIN_LEVEL), mel)) - REF_LEVEL_DB
    scaled = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def _as_fraction(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction.

    A float is read as the nearest fraction with a denominator up to 10**6, so the value OpenCV
    reports for NTSC video, 29.97002997002997, becomes exactly 30000/1001 and 25.0 becomes 25.
    """
    if isinstance(fps, Rational):  # int, numpy integer, Fraction
        value = Fraction(fps.numerator, fps.denominator)
    else:
        value = Fraction(float(fps)).limit_denominator(1_000_000)
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return value


def window_starts(num_frames: int, fps: float | Fraction) -> np.ndarray:
    """First mel column of each generator window, one window per output video frame.

    Window i starts at floor(i * 80 / fps), computed exactly; windows are taken while
    start + 16 <= num_frames, then one tail window starting at num_frames - 16 ends the list
    (so 3.0 s of audio, T = 241, at 25 fps gives 71 + 1 = 72 windows). When num_frames < 16 the
    result is [0]: a single window, which `mel_windows` pads with silence.

    fps is an int, a Fraction or a float (see `_as_fraction`): pass Fraction(30000, 1001), or the
    float OpenCV reports, for NTSC; the literal 29.97 means 2997/100. The official loop works in
    floats and so can start a window one column early where i * 80 / fps is a whole number
    (e.g. i = 300 at 24000/1001 fps); this function gives the exact value.

    Returns shape (num_windows,) int64.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rate = _as_fraction(fps)
    # floor(i * 80 q / p) <= last  <=>  i * 80 q < (last + 1) p,  with fps = p / q
    p, q = rate.numerator, rate.denominator
    last = num_frames - MEL_STEP_SIZE
    count = 0 if last < 0 else -(-(last + 1) * p // (MEL_FPS * q))
    step = MEL_FPS * q
    if count * step < 2**62:
        starts = np.arange(count, dtype=np.int64) * step // p
    else:  # absurd denominators: stay in Python integers
        starts = np.array([i * step // p for i in range(count)], dtype=np.int64)
    return np.append(starts, np.int64(max(last, 0)))


def mel_windows(mel: np.ndarray, fps: float | Fraction) -> np.ndarray:
    """Cut a (80, T) mel into the per-video-frame windows the generator consumes.

    mel: shape (80, T) float32 from `melspectrogram`. fps: video frame rate (float or Fraction).
    Returns shape (N, 80, 16) float32, N = len(window_starts(T, fps)). A mel shorter than 16
    columns is padded on the right with the silence value -4 to give one window.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != N_MELS:
        raise ValueError(f"mel must have shape ({N_MELS}, T), got {mel.shape}")
    num_frames = mel.shape[1]
    starts = window_starts(num_frames, fps)
    if num_frames < MEL_STEP_SIZE:
        pad = MEL_STEP_SIZE - num_frames
        mel = np.pad(mel, ((0, 0), (0, pad)), constant_values=SILENCE_VALUE)
    columns = starts[:, None] + np.arange(MEL_STEP_SIZE)  # (N, 16)
    return np.ascontiguousarray(mel[:, columns].transpose(1, 0, 2))
