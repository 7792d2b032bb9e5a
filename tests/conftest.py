"""Shared fixtures: real ffmpeg/ffprobe, real media files made by ffmpeg, isolated settings.

One rule for what may be missing (`CI`, read here and nowhere else): a test that needs a system
tool, server or data file skips locally when it is absent and fails under CI=true (`.ci/run` sets
it), where the Makefile's setup must have installed it. Only hardware this machine may lack skips
everywhere, by marker: `requires_cuda` (a CUDA GPU) and `requires_nvenc` (an NVENC encoder).

Every test starts from a clean environment: the node's settings variables (provider keys
included) of the developer's shell are removed, so a test meant to run offline never calls a
real provider, and a developer's `.env` or exports never change an outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from node.config import Settings
from node.media import write_wav

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]


def missing(message: str) -> None:
    """A tool, server or data file is absent: skip locally, fail under CI."""
    if CI:
        pytest.fail(f"{message} (required under CI; make test installs it)")
    pytest.skip(message)


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken driver is no GPU for these tests
        return False


def has_nvenc() -> bool:
    from node.encoder import probe_nvenc

    return shutil.which("ffmpeg") is not None and probe_nvenc()


#: marker -> (probe, what it needs); a marked test skips where the probe says no, CI included.
HARDWARE_MARKERS = {
    "requires_cuda": (has_cuda, "a CUDA GPU"),
    "requires_nvenc": (has_nvenc, "an NVENC encoder (NVIDIA GPU with NVENC and an ffmpeg built with it)"),
}


def pytest_runtest_setup(item):
    for name, (probe, needs) in HARDWARE_MARKERS.items():
        if item.get_closest_marker(name) and not _probe_once(name, probe):
            pytest.skip(f"needs {needs}; this machine has none")


_PROBED: dict[str, bool] = {}


def _probe_once(name: str, probe) -> bool:
    if name not in _PROBED:
        _PROBED[name] = bool(probe())
    return _PROBED[name]


def settings_env_names() -> set[str]:
    """Every environment variable the node's settings read (PAPA_NOEL_VOICE_ID and the keys too)."""
    names = {name.upper() for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.update(a.upper() for a in getattr(alias, "choices", [alias]) if isinstance(a, str))
    return names


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No setting of the developer's shell reaches a test (or the CLI processes it starts)."""
    for name in settings_env_names() & set(os.environ):
        monkeypatch.delenv(name)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        missing(f"{name} not installed")
    return path


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return require_tool("ffmpeg")


@pytest.fixture(scope="session")
def ffprobe() -> str:
    return require_tool("ffprobe")


@pytest.fixture
def settings(tmp_path: Path, tmp_path_factory) -> Settings:
    """Settings isolated in tmp_path, ignoring any developer .env, with the mock engine on. The
    model cache (ONNX exports, keyed by checkpoint hash) is the session's: one export per checkpoint
    per run, never in the developer's home."""
    return Settings(
        _env_file=None, weights_dir=tmp_path / "weights", output_dir=tmp_path / "out",
        temp_dir=tmp_path / "tmp", avatar_cache_dir=tmp_path / "cache" / "avatars",
        audio_cache_dir=tmp_path / "cache" / "audio", enable_mock_engine=True,
        video_encoder="libx264", x264_preset="ultrafast",
        model_cache_dir=tmp_path_factory.getbasetemp() / "model-cache",
    )


def make_video(path: Path, width: int = 160, height: int = 120, fps: str = "25",
               seconds: float = 1.0, extra: list[str] | None = None) -> Path:
    """A real H.264 test-pattern video (moving, so frame order is checkable)."""
    require_tool("ffmpeg")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
           f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds),
           "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", *(extra or []), str(path)]
    subprocess.run(cmd, check=True)
    return path


def make_speech(path: Path, seconds: float = 1.6, sample_rate: int = 22050,
                bursts: list[tuple[float, float]] | None = None) -> Path:
    """A WAV with loud tone bursts (default: 0.2-0.6 s and 1.0-1.4 s) over near-silence."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.002 * np.sin(2 * np.pi * 90 * t)
    for start, end in bursts or [(0.2, 0.6), (1.0, 1.4)]:
        on = (t >= start) & (t < end)
        signal[on] += 0.6 * np.sin(2 * np.pi * 220 * t[on]) * np.sin(np.pi * (t[on] - start) / (end - start))
    write_wav(path, signal.astype(np.float32), sample_rate)
    return path


def ffprobe_json(path: Path) -> dict:
    out = subprocess.run([require_tool("ffprobe"), "-v", "error", "-print_format", "json",
                          "-show_streams", "-show_format", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def stream(info: dict, kind: str) -> dict:
    return next(s for s in info["streams"] if s["codec_type"] == kind)


def top_level_boxes(path: Path) -> list[str]:
    """MP4 top-level box types in file order (to check that moov precedes mdat)."""
    data, boxes, pos = Path(path).read_bytes(), [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        boxes.append(data[pos + 4:pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8:
            break
        pos += size
    return boxes


def decode_frames(path: Path) -> np.ndarray:
    """All frames of a small video as uint8 (N, H, W, 3) BGR."""
    info = stream(ffprobe_json(path), "video")
    w, h = int(info["width"]), int(info["height"])
    raw = subprocess.run([require_tool("ffmpeg"), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "bgr24", "pipe:1"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def fps_of(info: dict) -> Fraction:
    return Fraction(stream(info, "video")["r_frame_rate"])


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "", None}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Tests talk to loopback servers only: resolving any other host fails the test at once, so
    a misconfigured base URL can never send traffic off this machine."""
    import socket

    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK_NAMES and not str(name).startswith("127."):
            raise AssertionError(f"test tried to reach {name!r}; only loopback is allowed")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
