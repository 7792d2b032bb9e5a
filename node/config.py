"""One frozen settings object, read from the environment (and `.env`) once.

Env var names are fixed by existing deployments (ELEVENLABS_API_KEY, PAPA_NOEL_VOICE_ID, ...);
new settings follow the same UPPER_SNAKE style with the unit in the name where there is one.
Secrets are `SecretStr`, so `repr(settings)` and logs show `**********`.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_CACHE_ROOT = Path.home() / ".cache" / "lipsync-node"

#: Local lip-sync engines, in the default order strategy 1 tries them.
DEFAULT_ENGINE_ORDER = "musetalk,wav2lip,synclabs"
#: Full-video providers, in the order strategy 2 tries them.
DEFAULT_FULL_VIDEO_ORDER = "higgsfield,heygen"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True,
        case_sensitive=False,
    )

    # --- secrets (fixed names) -----------------------------------------------------------
    elevenlabs_api_key: SecretStr | None = None
    synclabs_api_key: SecretStr | None = None
    heygen_api_key: SecretStr | None = None
    higgsfield_api_key_id: SecretStr | None = None
    higgsfield_api_key_secret: SecretStr | None = None

    # --- personas and voices ---------------------------------------------------------------
    #: ElevenLabs voice of the papa_noel persona (fixed name).
    papa_noel_voice_id: str = "bkVwoLpm00fYfz45ZQAb"
    #: Extra persona files (*.toml) beside the bundled ones; same name overrides bundled.
    personas_dir: Path | None = None
    #: Named avatars (NAME.mp4 / NAME.png + optional NAME.json) beside the bundled ones.
    avatars_dir: Path | None = None

    # --- logging (fixed names) ----------------------------------------------------------------
    use_json_logging: bool = False
    log_level: str = "INFO"

    # --- paths ---------------------------------------------------------------------------------
    weights_dir: Path = Path("weights")
    output_dir: Path = Path("out")
    temp_dir: Path = Path(tempfile.gettempdir()) / "lipsync-node"
    #: Decoded base videos and per-avatar preparation, keyed by content hash.
    avatar_cache_dir: Path = _CACHE_ROOT / "avatars"
    audio_cache_dir: Path = _CACHE_ROOT / "audio"
    #: MiB; least-recently-used entries are evicted past this.
    audio_cache_max_size_mb: int = Field(default=512, ge=1)
    storage_type: Literal["local", "s3"] = "local"

    # --- job limits -------------------------------------------------------------------------------
    max_text_chars: int = Field(default=2000, ge=1)
    #: seconds of speech per job (text-to-speech output or uploaded audio).
    max_audio_seconds: float = Field(default=300.0, gt=0)
    #: pixels, either side of the base video.
    max_video_side_px: int = 4096
    min_video_fps: float = 10.0
    max_video_fps: float = 60.0

    # --- strategy chain -----------------------------------------------------------------------------
    #: Comma-separated; Wav2Lip's official weights are non-commercial, so operators may drop it.
    lipsync_engine_order: str = DEFAULT_ENGINE_ORDER
    full_video_provider_order: str = DEFAULT_FULL_VIDEO_ORDER
    #: Enables the `mock` lip-sync engine (tests and local development only).
    enable_mock_engine: bool = False
    #: Frames per batch for local engines; also the granularity of drain and progress.
    lipsync_batch_size: int = Field(default=16, ge=1)

    # --- encoder ------------------------------------------------------------------------------------
    #: auto = h264_nvenc when the startup probe proves it works, else libx264.
    video_encoder: Literal["auto", "libx264", "h264_nvenc"] = "auto"
    video_crf: int = Field(default=23, ge=0, le=51)
    x264_preset: str = "medium"
    audio_bitrate_kbps: int = 128
    ffmpeg_binary: str | None = None
    ffprobe_binary: str | None = None
    espeak_binary: str | None = None

    # --- queue and fleet (issue 4 wires these) -------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_job_attempts: int = Field(default=3, ge=1)
    #: seconds; a running job gets this long to finish after SIGTERM/SIGINT.
    shutdown_timeout: float = 300.0
    cleanup_interval_hours: float = 6.0
    temp_max_age_hours: float = 24.0
    jobs_max_age_hours: float = 168.0

    # --- derived ----------------------------------------------------------------------------------
    def environ(self) -> dict[str, str]:
        """The process environment over `.env`, for per-persona names such as PAPA_NOEL_VOICE_ID."""
        from dotenv import dotenv_values

        env_file = self.model_config.get("env_file")
        file_values = dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
        merged = {**{k: v for k, v in file_values.items() if v is not None}, **os.environ}
        return merged | {"PAPA_NOEL_VOICE_ID": self.papa_noel_voice_id}

    @property
    def lipsync_engines(self) -> list[str]:
        return _split_names(self.lipsync_engine_order)

    @property
    def full_video_providers(self) -> list[str]:
        return _split_names(self.full_video_provider_order)


def _split_names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()
