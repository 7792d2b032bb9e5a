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
from typing import Literal, Optional

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
    #: Named avatars (NAME.mp4 / NAME.png + optional NAME.json) beside the bundled ones;
    #: `lipsync-node avatar prepare PATH --name NAME` installs into it.
    avatars_dir: Path = Path("avatars")
    #: Where queued jobs' local input files (audio, base videos given as paths) may be, besides
    #: AVATARS_DIR; a queued job naming a file elsewhere is refused (path_not_allowed).
    inputs_dir: Path | None = None
    #: Hosts and networks (CIDR), comma-separated, that a job's URLs (webhook_url) may reach although
    #: they are private, loopback or link-local (node/input_guard.py); empty = public addresses only.
    url_allowlist: str = ""

    # --- logging (fixed names) ----------------------------------------------------------------
    use_json_logging: bool = False
    log_level: str = "INFO"

    # --- paths ---------------------------------------------------------------------------------
    weights_dir: Path = Path("weights")
    output_dir: Path = Path("out")
    temp_dir: Path = Path(tempfile.gettempdir()) / "lipsync-node"
    #: Decoded base videos and per-avatar preparation, keyed by content hash.
    avatar_cache_dir: Path = _CACHE_ROOT / "avatars"
    #: MiB; whole avatars are evicted from AVATAR_CACHE_DIR past this, least recently used first.
    avatar_cache_max_size_mb: int = Field(default=20480, ge=1)
    audio_cache_dir: Path = _CACHE_ROOT / "audio"
    #: Artefacts derived from weight files (ONNX exports of the Wav2Lip generator), keyed by the
    #: weight file's hash: made once per checkpoint, never edited by hand.
    model_cache_dir: Path = _CACHE_ROOT / "models"
    #: MiB; least-recently-used entries are evicted past this.
    audio_cache_max_size_mb: int = Field(default=512, ge=1)
    storage_type: Literal["local", "s3"] = "local"
    #: STORAGE_TYPE=s3 (node/storage.py): outputs go to s3://S3_BUCKET/S3_PREFIX{video_id}/{token}.mp4
    #: on any S3-compatible store (S3_ENDPOINT_URL for MinIO, Ceph, R2, ...); credentials come from
    #: boto3's standard chain, never from here.
    s3_bucket: str = ""
    s3_prefix: str = "outputs/"
    #: Where prepared avatars (face tracks, MuseTalk latents) are shared with the fleet.
    s3_avatar_prefix: str = "avatars/"
    s3_endpoint_url: str = ""
    s3_region: str = ""
    #: seconds a presigned HTTPS URL of an output stays valid in `status`/the API; 0 = none given.
    s3_presign_ttl_s: float = Field(default=0, ge=0, le=7 * 86400)
    #: MiB per multipart upload part (S3's minimum is 5); larger outputs upload in parts.
    s3_multipart_chunk_mb: int = Field(default=8, ge=5, le=512)

    # --- job limits -------------------------------------------------------------------------------
    max_text_chars: int = Field(default=2000, ge=1)
    #: MiB an input fetched from a URL (audio, avatar) may have (node/inputs.py).
    input_max_mb: int = Field(default=500, ge=1)
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
    #: Frames per batch, the one rule for batches: every strategy yields frames in batches of this
    #: size and the drain and progress are checked after each; it is also each local engine's
    #: model batch unless that engine's own setting is set (see `batch_size_for`).
    lipsync_batch_size: int = Field(default=32, ge=1)
    #: Frames per Wav2Lip generator call, if not LIPSYNC_BATCH_SIZE (the official default is 128);
    #: when set, Wav2Lip renders yield and are drain-checked every this many frames instead.
    wav2lip_batch_size: Optional[int] = Field(default=None, ge=1)
    #: Where the Wav2Lip generator runs: auto (the documented rule in node/engines/wav2lip.py),
    #: torch, or onnxruntime (an ONNX export of the checkpoint, cached in MODEL_CACHE_DIR).
    wav2lip_backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    #: Frames per MuseTalk UNet + VAE-decode call, if not LIPSYNC_BATCH_SIZE; same rule.
    musetalk_batch_size: Optional[int] = Field(default=None, ge=1)
    #: Blur kernel of MuseTalk's blend mask as a fraction of the crop side: 0.05 as the official
    #: scripts/inference.py; 0.1 is the realtime preparation's softer edge. Part of the avatar
    #: cache key, so changing it prepares avatars again.
    musetalk_blur_ratio: float = Field(default=0.05, gt=0, le=1)
    #: torch.compile the VAE decoder on CUDA (compiled on the first job; CPU nodes ignore it).
    musetalk_compile: bool = False

    # --- sync confidence (node/sync.py; needs lipsync_expert.pth and s3fd.pth) ------------------------
    #: Score every lip-synced output with the Wav2Lip SyncNet expert (off: no overhead, no score).
    sync_scoring: bool = True
    #: Below this confidence a lip-sync step fails (low_sync_confidence) and the chain moves on;
    #: unset = report only. Units: cosine distance (median minus minimum of the offset curve).
    sync_min_confidence: Optional[float] = Field(default=None, ge=0)
    #: Move the audio by the measured offset at mux time (when non-zero and confident).
    sync_fix_offset: bool = False
    #: The confidence an offset needs before SYNC_FIX_OFFSET acts on it.
    sync_offset_min_confidence: float = Field(default=0.05, ge=0)
    #: Offsets searched each way, frames (the SyncNet protocol's 15).
    sync_max_offset_frames: int = Field(default=15, ge=1, le=60)
    #: Score the 5-frame windows starting every this many frames (1 = all, as the protocol does;
    #: windows overlap, so 2 still sees every frame and halves the cost on CPU nodes).
    sync_window_stride: int = Field(default=2, ge=1, le=5)
    #: auto | cpu | cuda | cuda:N; fp16 autocast is chosen by the GPU's capability.
    torch_device: str = "auto"

    # --- encoder ------------------------------------------------------------------------------------
    #: auto = h264_nvenc when the startup probe proves it works, else libx264.
    video_encoder: Literal["auto", "libx264", "h264_nvenc"] = "auto"
    video_crf: int = Field(default=23, ge=0, le=51)
    x264_preset: str = "medium"
    #: libx264 threads per encode; unset = this slot's share of the CPU cores (cores / slots), so
    #: several jobs side by side do not each spawn a thread per core.
    x264_threads: Optional[int] = Field(default=None, ge=1, le=64)
    audio_bitrate_kbps: int = 128
    ffmpeg_binary: str | None = None
    ffprobe_binary: str | None = None
    espeak_binary: str | None = None

    # --- providers (remote APIs; base URLs are settings so tests and staging can use mocks) --
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    synclabs_base_url: str = "https://api.sync.so"
    #: Sync model id (lipsync-2, lipsync-2-pro, sync-3, ...).
    synclabs_model: str = "lipsync-2"
    #: higgsfield-client 0.2.0 moved here from platform.higgsfield.ai.
    higgsfield_base_url: str = "https://api.higgsfield.ai"
    heygen_base_url: str = "https://api.heygen.com"
    #: Host of HeyGen's v3 asset upload (the API host; the legacy v1 host is upload.heygen.com).
    heygen_upload_url: str = "https://api.heygen.com"
    #: seconds for one whole provider call: a TTS request, or create + polling + download.
    elevenlabs_deadline_s: float = Field(default=120.0, gt=0)
    synclabs_deadline_s: float = Field(default=1800.0, gt=0)
    higgsfield_deadline_s: float = Field(default=900.0, gt=0)
    heygen_deadline_s: float = Field(default=1800.0, gt=0)
    #: calls in flight at once per process and provider (set to the plan's concurrency).
    elevenlabs_concurrency: int = Field(default=2, ge=1)
    synclabs_concurrency: int = Field(default=1, ge=1)
    higgsfield_concurrency: int = Field(default=2, ge=1)
    heygen_concurrency: int = Field(default=3, ge=1)
    #: seconds per HTTP request phase (connect; read/write/pool); never past the call's deadline.
    provider_connect_timeout_s: float = Field(default=5.0, gt=0)
    provider_read_timeout_s: float = Field(default=60.0, gt=0)
    #: tries of one request on 429/5xx/network errors; a create is never re-sent after a 5xx.
    provider_max_tries: int = Field(default=4, ge=1)
    #: seconds; backoff between those tries (exponential with jitter; Retry-After wins).
    provider_retry_base_s: float = Field(default=1.0, gt=0)
    provider_retry_cap_s: float = Field(default=30.0, gt=0)
    #: seconds; status polling starts at BASE and doubles (jittered) up to CAP.
    provider_poll_base_s: float = Field(default=5.0, gt=0)
    provider_poll_cap_s: float = Field(default=30.0, gt=0)
    #: consecutive failed calls that open a provider's circuit, and seconds it stays open.
    provider_circuit_failures: int = Field(default=3, ge=1)
    provider_circuit_cooldown_s: float = Field(default=300.0, ge=0)
    #: Each job's provider generation ids (default TEMP_DIR/generations), so a retried job
    #: resumes polling its generation instead of paying for a second one.
    provider_generations_dir: Path | None = None

    # --- queue and fleet ---------------------------------------------------------------------------
    #: redis://, rediss:// (TLS), with an ACL user and password in the URL where needed.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Every key the fleet uses starts with this, inside a hash tag ("{lipsync}:..."), so several
    #: fleets (or tests) share one Redis and each fleet's keys one cluster slot.
    redis_key_prefix: str = Field(default="lipsync:", min_length=1)
    #: Replicas that must have a submit or a commit before it is acknowledged (Redis WAIT; 0 = none):
    #: with 1, a failover to that replica loses no acknowledged job. Not with redis+cluster://.
    redis_wait_replicas: int = Field(default=0, ge=0, le=10)
    #: seconds a WAIT may take; on timeout the write stands and a warning says how many confirmed.
    redis_wait_timeout_s: float = Field(default=1.0, gt=0)
    #: seconds; a command that gets no reply in this long counts as Redis being unavailable.
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    #: Attempts per job (claims that crashed or failed count; a drain release does not).
    max_job_attempts: int = Field(default=3, ge=1)
    #: seconds; a job's lease. The heartbeat renews it every third of this; a node silent for
    #: this long loses the job to another node (its entry is XAUTOCLAIMed, its token fenced off).
    job_lock_timeout: float = Field(default=60.0, ge=0.5)
    #: seconds; the first retry of a failed job waits up to this long (backoff doubles, jitter).
    retry_base_delay_s: float = Field(default=10.0, ge=0)
    #: seconds; no retry waits longer than this.
    retry_max_delay_s: float = Field(default=900.0, ge=0)
    #: bytes of one queue entry's JSON payload; larger entries are dead-lettered unread.
    queue_max_payload_bytes: int = Field(default=65536, ge=256)
    #: milliseconds an idle worker blocks on the stream before it looks for expired leases.
    queue_block_ms: int = Field(default=1000, ge=1)
    #: seconds between progress writes (and progress webhooks) of a running job; at least 1 s
    #: for webhooks whatever this says.
    progress_interval_s: float = Field(default=1.0, gt=0)
    #: Jobs a worker renders at once (`worker --concurrency` wins); unset = derived from the
    #: node (node/slots.py): one per GPU with NVENC, else one per CPU_CORES_PER_SLOT cores of each
    #: GPU's share, up to MAX_SLOTS_PER_GPU, since libx264 bounds a GPU node.
    render_slots: Optional[int] = Field(default=None, ge=1, le=64)
    #: Names this node in leases and attempt records; default hostname-pid.
    node_id: str | None = None
    #: Signs webhook bodies (HMAC-SHA256 header); unset = webhooks are sent unsigned.
    webhook_secret: SecretStr | None = None
    #: seconds per webhook POST (connect, read, write, pool each).
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    #: POSTs per webhook event before it is dropped (5xx, 429 and network errors are retried).
    webhook_max_attempts: int = Field(default=5, ge=1)
    #: seconds; the first webhook retry waits up to this long (backoff doubles, jitter).
    webhook_retry_base_delay_s: float = Field(default=1.0, ge=0)
    #: TCP port for Prometheus metrics of `worker`; 0 = not served.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: TCP port of the worker's /healthz, /readyz and /metrics; 0 = beside metrics on METRICS_PORT
    #: when that is set, else not served.
    health_port: int = Field(default=0, ge=0, le=65535)
    #: MiB; /readyz fails while TEMP_DIR, OUTPUT_DIR or AVATAR_CACHE_DIR has less free space.
    min_free_disk_mb: int = Field(default=1024, ge=0)
    #: seconds; a worker loop (a slot between batches, or housekeeping) silent this long is wedged
    #: and the node DEFUNCT (liveness fails, so the orchestrator restarts it).
    loop_stall_timeout_s: float = Field(default=300.0, gt=0)
    #: seconds a slot inside a job may go without a rendered batch (speech synthesis and a new
    #: avatar's preparation come before the first) before the node is DEFUNCT.
    render_stall_timeout_s: float = Field(default=1800.0, gt=0)
    #: `lipsync-node api`: the bearer token clients send (required: no token, no start), where it
    #: listens, and its port.
    api_token: SecretStr | None = None
    api_host: str = "0.0.0.0"
    api_port: int = Field(default=8080, ge=0, le=65535)
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

    def batch_size_for(self, engine: str) -> tuple[int, str]:
        """(frames per batch, the setting it comes from) for a local engine: its own
        `<ENGINE>_BATCH_SIZE` when set, else LIPSYNC_BATCH_SIZE. Its renders yield, report
        progress and check for a drain after every batch of that size."""
        own = getattr(self, f"{engine}_batch_size", None)
        if own:
            return own, f"{engine.upper()}_BATCH_SIZE"
        return self.lipsync_batch_size, "LIPSYNC_BATCH_SIZE"


def _split_names(value: str) -> list[str]:
    return [name.strip().lower() for name in value.split(",") if name.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()
