"""MuseTalk's audio features: 16 kHz mono -> whisper-tiny log-mel -> encoder states -> windows.

Numerically this is the official `AudioProcessor` (musetalk/utils/audio_processor.py; PIPELINES.md
§4.3): the `WhisperFeatureExtractor` front end of openai/whisper-tiny, the encoder of
`WhisperModel` with all five hidden states kept, and the per-video-frame windowing, with one
deliberate change: the frame rate is used as given, not truncated to an int (see `windows`).

`WhisperFeatures(model_dir, *, device="cpu", dtype=torch.float32)`
    Loads the encoder of a Hugging Face whisper directory: `config.json`, `model.safetensors` or
    `pytorch_model.bin` (keys may carry the `model.` prefix of WhisperForConditionalGeneration;
    decoder and `proj_out` keys are ignored; the encoder's keys load strictly and a missing,
    unexpected or misshapen one raises `CheckpointError` naming it) and, when present,
    `preprocessor_config.json`, which must describe the front end below. The encoder is built with
    transformers' `WhisperEncoder`, in eval mode with `requires_grad=False`, on `device` in `dtype`.

`.log_mel(wav) -> torch.float32 [S, 80, 3000]` (CPU)
    wav: mono samples `[n]` at 16 kHz, nominally in [-1, 1], a float numpy array or CPU tensor
    (rounded to float32 first, as the official front end does). One row per 30 s segment,
    S = ceil(n / 480 000): each segment is zero-padded to 480 000 samples; STFT (n_fft 400, hop
    160, periodic Hann, centred, reflect padding) with the last of its 3001 frames dropped; power;
    80 Slaney mel filters over 0-8 kHz; log10(max(x, 1e-10)); floored at the segment's max - 8;
    (x + 4) / 4. A segment's values span at most 2 (digital silence is -1.5 throughout).

`.encode(features [S, 80, 3000]) -> [1, 1500 * S, 5, 384]` (encoder dtype and device)
    Each segment is encoded alone (the encoder takes exactly 3000 frames). The five states, stacked
    on axis 2, are: the embedding output (conv -> GELU -> stride-2 conv -> GELU, plus positions),
    the residual stream after layers 1, 2 and 3, and the final LayerNorm of layer 4's output.
    Segments follow each other along axis 1 (1500 steps of 20 ms per segment).

`frame_windows(states, n, fps, frames)` gives the windows of some frames of the same audio from its
encoder states, so a renderer encodes once and gathers windows batch by batch (memory flat in length).

`.windows(wav, fps) -> [N, 50, 384]` (encoder dtype and device)
    One window per video frame, N = floor(n / 16000 * fps); N = 0 gives `[0, 50, 384]`. The encoder
    steps are trimmed to T = floor(n / 16000 * 50); with m = 50 / fps and p = ceil(m), 2p zero steps
    go before them and 6p after; frame i takes the padded steps [floor(i * m), floor(i * m) + 10),
    and its rows are step-major: row 5 * t + layer. With fps in (0, 50) the window never overruns
    (the official code stops there for fps >= 50; here the right padding grows instead).
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn

from models.checkpoint import CheckpointError, load_strict, read_state_dict

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "N_MELS",
    "CHUNK_SAMPLES",
    "N_FRAMES",
    "ENCODER_FPS",
    "WINDOW_STEPS",
    "WhisperFeatures",
    "frame_windows",
    "mel_filters",
    "window_count",
]

# openai/whisper-tiny preprocessor_config.json (WhisperFeatureExtractor)
SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_MELS = 80  # feature_size
CHUNK_LENGTH = 30  # s
CHUNK_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480_000 samples: 30 s, the n_samples of the config
N_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3000 mel frames per segment (nb_max_frames)
FMAX = SAMPLE_RATE / 2  # 8000 Hz
LOG_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below each segment's maximum (80 dB)

# musetalk/utils/audio_processor.py: get_whisper_chunk
ENCODER_FPS = SAMPLE_RATE // (2 * HOP_LENGTH)  # 50 encoder steps per second (conv2 has stride 2)
PAD_LEFT = 2  # audio_padding_length_left
PAD_RIGHT = 2  # audio_padding_length_right
RIGHT_PAD_FACTOR = 3  # the right padding is tripled "to prevent out of bounds"
WINDOW_STEPS = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # 10 encoder steps (200 ms) per video frame

_CONFIG = "config.json"
_PREPROCESSOR_CONFIG = "preprocessor_config.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the order from_pretrained prefers
_MODEL_PREFIX = "model."  # WhisperForConditionalGeneration's base_model_prefix
_ENCODER_PREFIX = "encoder."
# the preprocessor_config.json values this front end implements
_PREPROCESSOR_EXPECTED = {
    "feature_size": N_MELS,
    "sampling_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "n_samples": CHUNK_SAMPLES,
    "nb_max_frames": N_FRAMES,
}


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters over 0-8 kHz, (80, N_FFT // 2 + 1) = (80, 201).

    float64; transformers' `mel_filter_bank(..., norm="slaney", mel_scale="slaney")` agrees.
    """
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=FMAX,
        htk=False, norm="slaney", dtype=np.float64,
    )
    basis.setflags(write=False)
    return basis


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # periodic Hann (torch.hann_window's default), as the feature extractor's STFT uses
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)


def _segment_log_mel(segment: np.ndarray) -> np.ndarray:
    """(x + 4) / 4 of the floored log10 mel power of one <= 30 s segment, (80, 3000) float32."""
    padded = np.zeros(CHUNK_SAMPLES, dtype=np.float64)
    padded[: len(segment)] = segment
    centred = np.pad(padded, N_FFT // 2, mode="reflect")
    # frame t covers centred[160 t : 160 t + 400]; the STFT's frame 3000 is the one dropped
    frames = np.lib.stride_tricks.sliding_window_view(centred, N_FFT)[::HOP_LENGTH][:N_FRAMES]
    power = np.abs(np.fft.rfft(frames * _hann_window(), axis=1)) ** 2  # (3000, 201)
    log_spec = np.log10(np.maximum(mel_filters() @ power.T, LOG_FLOOR))
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def _as_wav(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"wav must be a 1-D mono signal, got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"wav must be floating point, got {wav.dtype}")
    # the official extractor rounds its input to float32 before anything else
    wav = wav.astype(np.float32)
    if not np.isfinite(wav).all():
        raise ValueError("wav contains NaN or infinite samples")
    return wav


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _weights_path(model_dir: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir} has neither {' nor '.join(_WEIGHT_FILES)}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return read_state_dict(path, "cpu", allow_container=False)


class _EncoderFile(nn.Module):
    """The encoder under the name it has in the official file, so that errors name file keys."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = encoder


def _encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder entries of a WhisperModel or WhisperForConditionalGeneration state dict.

    Keys come back as `model.encoder.*` whether or not the file carries the `model.` prefix.
    """
    encoder: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        bare = key[len(_MODEL_PREFIX):] if key.startswith(_MODEL_PREFIX) else key
        if not bare.startswith(_ENCODER_PREFIX):
            continue  # decoder, proj_out: MuseTalk never runs them
        name = _MODEL_PREFIX + bare
        if name in encoder:
            raise CheckpointError(f"key {key!r} appears both with and without {_MODEL_PREFIX!r}")
        encoder[name] = value
    return encoder


def _check_preprocessor(path: Path) -> None:
    config = _read_json(path)
    for key, expected in _PREPROCESSOR_EXPECTED.items():
        if key in config and config[key] != expected:
            raise ValueError(
                f"{path}: {key} is {config[key]!r}; this front end implements {expected!r}"
            )


def _build_encoder(config: dict) -> nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    whisper_config = WhisperConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    if whisper_config.num_mel_bins != N_MELS:
        raise ValueError(
            f"config.json: num_mel_bins is {whisper_config.num_mel_bins}, expected {N_MELS}"
        )
    if 2 * whisper_config.max_source_positions != N_FRAMES:
        raise ValueError(
            f"config.json: max_source_positions is {whisper_config.max_source_positions}, "
            f"expected {N_FRAMES // 2} (3000 mel frames through a stride-2 conv)"
        )
    return WhisperEncoder(whisper_config)


class WhisperFeatures:
    """whisper-tiny encoder states for MuseTalk's UNet; see the module docstring for shapes."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        model_dir = Path(model_dir)
        config_path = model_dir / _CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} does not exist")
        preprocessor_path = model_dir / _PREPROCESSOR_CONFIG
        if preprocessor_path.is_file():
            _check_preprocessor(preprocessor_path)

        encoder = _build_encoder(_read_json(config_path))
        weights = _weights_path(model_dir)
        try:
            load_strict(_EncoderFile(encoder), _encoder_state(_read_weights(weights)))
        except CheckpointError as error:
            raise CheckpointError(f"{weights}: {error}") from None
        self.encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.num_states = len(self.encoder.layers) + 1  # 5 for whisper-tiny
        self.width = self.encoder.config.d_model  # 384 for whisper-tiny

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    def log_mel(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 CPU tensor [S, 80, 3000], one row per 30 s segment of `wav` (16 kHz mono)."""
        wav = _as_wav(wav)
        segments = [
            _segment_log_mel(wav[start : start + CHUNK_SAMPLES])
            for start in range(0, len(wav), CHUNK_SAMPLES)
        ]
        if not segments:
            return torch.zeros((0, N_MELS, N_FRAMES), dtype=torch.float32)
        return torch.from_numpy(np.stack(segments))

    @torch.no_grad()
    def encode(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[1, 1500 * S, 5, 384] encoder states of log-mel `features` [S, 80, 3000]."""
        features = torch.as_tensor(features)
        if features.ndim != 3 or tuple(features.shape[1:]) != (N_MELS, N_FRAMES):
            raise ValueError(
                f"features must have shape [S, {N_MELS}, {N_FRAMES}], got {tuple(features.shape)}"
            )
        features = features.to(device=self.device, dtype=self.dtype)
        if features.shape[0] == 0:
            return torch.zeros(
                (1, 0, self.num_states, self.width), device=self.device, dtype=self.dtype
            )
        # one segment at a time, as the official loop does: the result does not depend on batching
        per_segment = [self._states(segment[None]) for segment in features]
        return torch.cat(per_segment, dim=1)

    def _states(self, features: torch.Tensor) -> torch.Tensor:
        """[1, 1500, 5, 384] for one [1, 80, 3000] segment.

        The states are recorded with hooks rather than taken from `output_hidden_states`, whose
        last entry depends on the transformers version and config (5.x records layer outputs and
        swaps in the normalised output unless `tie_last_hidden_states` is false). Recorded: the
        first layer's input (the embedding output), the outputs of the layers before the last,
        and the encoder's output, which is the final LayerNorm of the last layer's output.
        """
        layers = self.encoder.layers
        recorded: list[torch.Tensor] = []

        def record_input(module, args, kwargs):
            recorded.append(args[0] if args else kwargs["hidden_states"])

        def record_output(module, args, output):
            recorded.append(output[0] if isinstance(output, tuple) else output)

        handles = [layers[0].register_forward_pre_hook(record_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(record_output) for layer in layers[:-1]]
        try:
            output = self.encoder(features, return_dict=True)
        finally:
            for handle in handles:
                handle.remove()
        recorded.append(output.last_hidden_state)
        if len(recorded) != self.num_states:
            raise RuntimeError(
                f"recorded {len(recorded)} encoder states, expected {self.num_states}"
            )
        return torch.stack(recorded, dim=2)

    @torch.no_grad()
    def windows(self, wav: np.ndarray | torch.Tensor, fps: float) -> torch.Tensor:
        """[N, 50, 384] audio context per video frame at `fps`; N = floor(n / 16000 * fps).

        Counts use the official float arithmetic (n / 16000 first, then x fps, in float64), so they
        agree with the official code at integer rates even where the product rounds just below a
        whole number (n = 9280 gives T = 28 steps, not 29).
        """
        wav = _as_wav(wav)
        count = window_count(len(wav), fps)
        if count == 0:
            rows = WINDOW_STEPS * self.num_states
            return torch.zeros((0, rows, self.width), device=self.device, dtype=self.dtype)
        states = self.encode(self.log_mel(wav))[0]  # [1500 S, 5, 384]
        return frame_windows(states, len(wav), fps, np.arange(count))


def window_count(num_samples: int, fps: float) -> int:
    """N = floor(n / 16000 * fps): the number of video frames the audio drives."""
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return math.floor(num_samples / SAMPLE_RATE * fps)


def frame_windows(states: torch.Tensor, num_samples: int, fps: float, frames) -> torch.Tensor:
    """The rows of `windows` for video frames `frames` (ints in [0, N)), from the encoder states
    `[1500 S, 5, 384]` of the same audio (`encode(log_mel(wav))[0]`): `[len(frames), 50, 384]`.
    A renderer encodes the audio once and gathers each batch's windows, so memory stays flat in
    the video's length instead of holding all N windows."""
    count = window_count(num_samples, fps)
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    if len(frames) and (frames.min() < 0 or frames.max() >= count):
        raise ValueError(f"frames {frames.min()}..{frames.max()} outside [0, {count})")
    num_steps = math.floor(num_samples / SAMPLE_RATE * ENCODER_FPS)
    states = states[:num_steps]
    num_states, width = states.shape[1:]
    steps_per_frame = ENCODER_FPS / float(fps)  # m, float64
    pad = math.ceil(steps_per_frame)  # p
    # The official code pads 2p zero steps before and 6p after; reading every step outside the
    # audio as zero is the same below 50 fps, and from 50 fps on (where 6p would be overrun) too.
    left = PAD_LEFT * pad
    starts = np.floor(frames.astype(np.float64) * steps_per_frame).astype(np.int64)
    # padded step j is states[j - left] inside the audio and a zero step outside it
    index = torch.from_numpy(starts[:, None] + np.arange(WINDOW_STEPS) - left).to(states.device)
    inside = (index >= 0) & (index < num_steps)
    if num_steps:
        rows = states[index.clamp(0, num_steps - 1)] * inside[..., None, None].to(states.dtype)
    else:
        rows = states.new_zeros((len(frames), WINDOW_STEPS, num_states, width))
    return rows.reshape(len(frames), WINDOW_STEPS * num_states, width).contiguous()
