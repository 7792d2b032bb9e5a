"""models/musetalk/audio.py against hand computations of the official front end (PIPELINES.md §4.3).

The references here share no code with the implementation: a direct DFT with hand reflect padding
and a hand Slaney filterbank for the log-mel, plain torch ops on the state dict for the
encoder, and a per-row Python loop for the windows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointError
from models.musetalk.audio import WhisperFeatures
from tests.models.musetalk.build_whisper import build_whisper_dir, whisper_state_dict

SR = 16000
SEGMENT = 30 * SR


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return build_whisper_dir(tmp_path_factory.mktemp("whisper_bin"), seed=1)


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    return WhisperFeatures(whisper_dir)


@pytest.fixture(scope="module")
def encoder_file_state():
    """Only the encoder's entries of the file (seed 1), under the file's key names."""
    return {k: v for k, v in whisper_state_dict(seed=1).items() if k.startswith("model.encoder.")}


@pytest.fixture(scope="module")
def encoder_weights(encoder_file_state):
    """The encoder's weights without the file's prefix."""
    return {k[len("model.encoder."):]: v for k, v in encoder_file_state.items()}


def _signal(n: int, seed: int = 0) -> np.ndarray:
    # a chirp over noise, with a quiet start so the max - 8 floor matters in some frames
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) + 0.05 * rng.standard_normal(n)
    x[: n // 8] *= 1e-4
    return np.clip(x, -1, 1).astype(np.float32)


# --- independent log-mel: hand Slaney filterbank, hand reflect padding, direct DFT ---


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    # Slaney: linear (200/3 Hz per mel) below 1 kHz, logarithmic (6.4x per 27 mels) above
    log = 15 + np.log(np.maximum(hz, 1e-10) / 1000) / (np.log(6.4) / 27)
    return np.where(hz >= 1000, log, hz * 3 / 200)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15, 1000 * np.exp((np.log(6.4) / 27) * (mel - 15)), mel * 200 / 3)


def _slaney_filters() -> np.ndarray:
    fft_hz = np.arange(201) * (SR / 400)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), 82))
    filters = np.zeros((80, 201))
    for m in range(80):
        lo, mid, hi = edges[m : m + 3]
        tri = np.minimum((fft_hz - lo) / (mid - lo), (hi - fft_hz) / (hi - mid))
        filters[m] = np.maximum(tri, 0) * 2 / (hi - lo)
    return filters


_DFT = np.exp(-2j * np.pi * np.outer(np.arange(400), np.arange(201)) / 400)  # (400, 201)
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)


def _hand_segment_log_mel(segment: np.ndarray) -> np.ndarray:
    x = np.zeros(SEGMENT)
    x[: len(segment)] = segment.astype(np.float64)
    padded = np.concatenate([x[1:201][::-1], x, x[-201:-1][::-1]])
    frames = np.stack([padded[160 * t : 160 * t + 400] for t in range(3000)])  # frame 3000 dropped
    power = np.abs((frames * _HANN) @ _DFT) ** 2  # (3000, 201)
    log_spec = np.log10(np.maximum(_slaney_filters() @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8)
    return (log_spec + 4) / 4


# --- independent encoder: plain torch ops on the state dict ---


def _layer_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _hand_states(sd: dict, features: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The five MuseTalk states [1500, 384] each, and layer 4's un-normalised output."""
    x = torch.as_tensor(features, dtype=torch.float32)[None]  # [1, 80, 3000]
    x = F.gelu(F.conv1d(x, sd["conv1.weight"], sd["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["conv2.weight"], sd["conv2.bias"], stride=2, padding=1))
    h = x[0].T + sd["embed_positions.weight"]  # [1500, 384]
    states = [h]
    heads, width = 6, 384
    for i in range(4):
        p = f"layers.{i}"
        y = _layer_norm(h, sd, f"{p}.self_attn_layer_norm")
        q = y @ sd[f"{p}.self_attn.q_proj.weight"].T + sd[f"{p}.self_attn.q_proj.bias"]
        q = q * (width // heads) ** -0.5
        k = y @ sd[f"{p}.self_attn.k_proj.weight"].T  # whisper's key projection has no bias
        v = y @ sd[f"{p}.self_attn.v_proj.weight"].T + sd[f"{p}.self_attn.v_proj.bias"]
        q, k, v = (t.reshape(-1, heads, width // heads).transpose(0, 1) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        attn = attn.transpose(0, 1).reshape(-1, width)
        h = h + attn @ sd[f"{p}.self_attn.out_proj.weight"].T + sd[f"{p}.self_attn.out_proj.bias"]
        y = _layer_norm(h, sd, f"{p}.final_layer_norm")
        y = F.gelu(y @ sd[f"{p}.fc1.weight"].T + sd[f"{p}.fc1.bias"])
        h = h + y @ sd[f"{p}.fc2.weight"].T + sd[f"{p}.fc2.bias"]
        states.append(h)
    raw_last = states.pop()
    states.append(_layer_norm(raw_last, sd, "layer_norm"))
    return states, raw_last


# --- independent windowing: one row at a time ---


def _hand_windows(states: np.ndarray, n: int, fps: float) -> np.ndarray:
    """states [steps, 5, 384]; rows as rule 3 states them, built element by element."""
    count = math.floor(n / SR * fps)
    keep = math.floor(n / SR * 50)
    m = 50 / fps
    left = 2 * math.ceil(m)
    out = np.zeros((count, 50, states.shape[-1]), dtype=states.dtype)
    for i in range(count):
        start = math.floor(i * m)
        for row in range(50):
            step = start + row // 5 - left  # index into the unpadded, trimmed steps
            if 0 <= step < keep:
                out[i, row] = states[step, row % 5]
    return out


# --- tests ---


def test_log_mel_matches_hand_computation(whisper):
    # Given 3 s of audio (one segment, mostly zero padding)
    wav = _signal(3 * SR)
    # When
    mel = whisper.log_mel(wav)
    # Then it is one float32 segment equal to the direct-DFT recomputation, with the floor active
    expected = _hand_segment_log_mel(wav)
    assert mel.dtype == torch.float32 and tuple(mel.shape) == (1, 80, 3000)
    assert np.isclose(expected, expected.max() - 2).mean() > 0.5  # padding is on the max - 8 floor
    np.testing.assert_allclose(mel[0].numpy(), expected, rtol=0, atol=1e-5)


def test_log_mel_uses_reflect_padding_and_drops_the_last_frame(whisper):
    # Given a full 30 s segment that is loud up to both edges
    t = np.arange(SEGMENT) / SR
    wav = 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.4 * np.sin(2 * np.pi * 3100 * t + 1)
    wav = wav.astype(np.float32)
    # When
    mel = whisper.log_mel(wav)
    # Then there are exactly 3000 frames and the edge frames match the reflect-padded recomputation
    expected = _hand_segment_log_mel(wav)
    assert tuple(mel.shape) == (1, 80, 3000)
    edges = [0, 1, 2998, 2999]
    np.testing.assert_allclose(mel[0][:, edges].numpy(), expected[:, edges], rtol=0, atol=1e-5)


def test_log_mel_cuts_30_second_segments(whisper):
    # Given 30.6 s of audio
    wav = _signal(489_600, seed=2)
    # When
    mel = whisper.log_mel(wav)
    # Then it is two segments, each the log-mel of its own 30 s (the second zero-padded)
    assert tuple(mel.shape) == (2, 80, 3000)
    np.testing.assert_allclose(mel[0].numpy(), _hand_segment_log_mel(wav[:SEGMENT]), atol=1e-5)
    np.testing.assert_allclose(mel[1].numpy(), _hand_segment_log_mel(wav[SEGMENT:]), atol=1e-5)


def test_log_mel_of_silence_and_of_nothing(whisper):
    # Given digital silence, and no samples at all
    # Then silence sits at log10(1e-10) -> (-10 + 4) / 4 everywhere, and nothing gives no segments
    silence = whisper.log_mel(np.zeros(SR, np.float32)).numpy()
    np.testing.assert_array_equal(silence, np.full((1, 80, 3000), -1.5, np.float32))
    assert tuple(whisper.log_mel(np.zeros(0, np.float32)).shape) == (0, 80, 3000)


def test_log_mel_rejects_bad_input(whisper):
    with pytest.raises(ValueError, match="1-D"):
        whisper.log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="floating"):
        whisper.log_mel(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="NaN"):
        whisper.log_mel(np.full(100, np.nan, np.float32))


def test_encoder_states_match_plain_torch_forward(whisper, encoder_weights):
    # Given the log-mel of 3 s of audio
    features = whisper.log_mel(_signal(3 * SR))
    # When
    got = whisper.encode(features)
    # Then the five stacked states match a plain forward pass on the state dict
    expected, raw_last = _hand_states(encoder_weights, features[0].numpy())
    assert tuple(got.shape) == (1, 1500, 5, 384) and got.dtype == torch.float32
    for layer, state in enumerate(expected):
        torch.testing.assert_close(got[0, :, layer], state, rtol=0, atol=1e-4)
    # and the last state is the LayerNorm'd output, far from layer 4's raw residual stream
    assert (got[0, :, 4] - raw_last).abs().max() > 1.0


def test_encode_concatenates_segments_in_time(whisper, encoder_weights):
    # Given the features of two segments
    features = whisper.log_mel(_signal(489_600, seed=2))
    # When
    got = whisper.encode(features)
    # Then segment 2 occupies steps 1500-2999 and is encoded on its own
    assert tuple(got.shape) == (1, 3000, 5, 384)
    expected, _ = _hand_states(encoder_weights, features[1].numpy())
    torch.testing.assert_close(got[0, 1500:], torch.stack(expected, dim=1), rtol=0, atol=1e-4)


def _windows_and_states(whisper, wav, fps):
    """whisper.windows(wav, fps) and the encoder states it was cut from (recorded by a spy)."""
    recorded = []
    encode = whisper.encode

    def spy(features):
        recorded.append(encode(features))
        return recorded[-1]

    whisper.encode = spy
    try:
        windows = whisper.windows(wav, fps)
    finally:
        del whisper.encode
    (states,) = recorded
    assert tuple(states.shape) == (1, 1500 * math.ceil(len(wav) / SEGMENT), 5, 384)
    return windows, states[0]


@pytest.mark.parametrize(
    ("seconds", "fps", "count"), [(3.0, 25, 75), (3.0, 30, 90), (3.0, 29.97, 89), (30.6, 30, 918)]
)
def test_windows_count_and_content(whisper, seconds, fps, count):
    # Given audio of a known length (30.6 s spans two segments)
    n = round(seconds * SR)
    wav = _signal(n, seed=3)
    # When
    windows, states = _windows_and_states(whisper, wav, fps)
    # Then there is one window per frame at the real fps (29.97 is not truncated to 29: 89, not 87)
    assert count == math.floor(n / SR * fps)
    assert tuple(windows.shape) == (count, 50, 384) and windows.dtype == torch.float32
    # and each is the padded slice of the encoder states, rows step-major
    expected = _hand_windows(states.numpy(), n, fps)
    np.testing.assert_allclose(windows.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fps", [25, 29.97, 60])
def test_frame_windows_give_any_range_of_the_same_windows(whisper, fps):
    # Given the encoder states of 3 s of audio, computed once
    from models.musetalk.audio import frame_windows

    n = 3 * SR
    wav = _signal(n, seed=7)
    windows, states = _windows_and_states(whisper, wav, fps)
    expected = _hand_windows(states.numpy(), n, fps)
    # When a renderer takes its frames' windows batch by batch
    count = len(windows)
    for frames in ([0], range(7), range(7, 20), [3, 5, 11, 12], range(count - 3, count), [count - 1] * 3, []):
        got = frame_windows(states, n, fps, list(frames))
        # Then each batch holds exactly those rows of the whole
        assert tuple(got.shape) == (len(frames), 50, 384)
        np.testing.assert_allclose(got.numpy(), expected[list(frames)], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        frame_windows(states, n, fps, [count])


def test_windows_at_25_fps_cover_four_steps_before_and_five_after(whisper):
    # Given 3 s of audio at 25 fps (m = 2, p = 2: 4 zero steps in front; T = 150 steps kept)
    wav = _signal(3 * SR, seed=3)
    # When
    windows, states = _windows_and_states(whisper, wav, 25)
    windows = windows.reshape(75, 10, 5, 384)
    # Then frame 0 starts with 4 zero steps, frame 10 holds steps 16..25, and frame 74 holds
    # steps 144..149 followed by zeros where steps 150.. (padding of the segment) were cut off
    assert torch.count_nonzero(windows[0, :4]) == 0
    torch.testing.assert_close(windows[0, 4:], states[:6])
    torch.testing.assert_close(windows[10], states[16:26])
    torch.testing.assert_close(windows[74, :6], states[144:150])
    assert torch.count_nonzero(states[150:152]) > 0 and torch.count_nonzero(windows[74, 6:]) == 0


def test_windows_with_no_whole_frame_are_empty(whisper):
    # Given less audio than one frame lasts
    # Then there are no windows, with the full trailing shape
    for wav in (np.zeros(0, np.float32), _signal(100)):
        windows = whisper.windows(wav, 25)
        assert tuple(windows.shape) == (0, 50, 384) and windows.dtype == torch.float32


def test_windows_reject_bad_fps(whisper):
    for fps in (0, -25, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            whisper.windows(_signal(SR), fps)


def test_windows_above_50_fps_do_not_overrun(whisper):
    # Given 1 s at 60 fps, where the official right padding (6 steps) is too short
    wav = _signal(SR, seed=5)
    # When / Then every window is whole and matches the hand slicing
    windows, states = _windows_and_states(whisper, wav, 60)
    expected = _hand_windows(states.numpy(), SR, 60)
    np.testing.assert_allclose(windows.numpy(), expected, rtol=0, atol=1e-6)


def test_loader_returns_frozen_eval_encoder(whisper):
    assert not whisper.encoder.training
    assert not any(p.requires_grad for p in whisper.encoder.parameters())


def _assert_same_encoder(a: WhisperFeatures, b: WhisperFeatures) -> None:
    state_b = b.encoder.state_dict()
    for name, value in a.encoder.state_dict().items():
        assert torch.equal(value, state_b[name]), name


def test_safetensors_container_loads_the_same_weights(tmp_path, whisper):
    # Given the same seed written as model.safetensors
    directory = build_whisper_dir(tmp_path, seed=1, container="safetensors")
    assert not (directory / "pytorch_model.bin").exists()
    # When
    other = WhisperFeatures(directory)
    # Then every encoder parameter is identical
    _assert_same_encoder(whisper, other)


def _dir_with(tmp_path, whisper_dir, state: dict):
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((whisper_dir / name).read_bytes())
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_decoder_keys_and_prefix_are_optional(tmp_path, whisper_dir, whisper, encoder_file_state):
    # Given a file with encoder keys only, without "model.", plus a stray proj_out
    state = {k[len("model."):]: v for k, v in encoder_file_state.items()}
    state["proj_out.weight"] = torch.zeros(3, 384)
    # When
    other = WhisperFeatures(_dir_with(tmp_path, whisper_dir, state))
    # Then it loads the same encoder
    _assert_same_encoder(whisper, other)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("drop", "model.encoder.layers.2.fc1.bias"),
        ("add", "model.encoder.layers.0.self_attn.k_proj.bias"),
        ("reshape", "model.encoder.conv1.weight"),
    ],
)
def test_encoder_keys_load_strictly(tmp_path, whisper_dir, encoder_file_state, change, named):
    # Given a file with one encoder key missing, one too many, or one misshapen
    state = dict(encoder_file_state)
    if change == "drop":
        del state[named]
    elif change == "add":
        state[named] = torch.zeros(384)
    else:
        state[named] = torch.zeros(384, 80, 5)
    # When / Then the loader refuses and names the key
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        WhisperFeatures(_dir_with(tmp_path, whisper_dir, state))


def test_missing_files_and_foreign_preprocessor_are_refused(
    tmp_path, whisper_dir, encoder_file_state
):
    directory = _dir_with(tmp_path, whisper_dir, encoder_file_state)
    # Given a preprocessor config for another front end
    (directory / "preprocessor_config.json").write_text('{"n_fft": 512}')
    with pytest.raises(ValueError, match="n_fft"):
        WhisperFeatures(directory)
    # Given no weights at all
    (directory / "preprocessor_config.json").unlink()
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        WhisperFeatures(directory)
