"""HeyGen v3: a still of the persona + speech -> a talking video. Strategy 2, after Higgsfield.

    POST {HEYGEN_UPLOAD_URL}/v3/assets   multipart file (<= 32 MB, MIME checked against the bytes)
                                         -> {"data": {"asset_id", "url", ...}}
    POST /v3/videos                      {"type": "image", "image": {"type": "asset_id", ...},
                                          "audio_asset_id", ...}; header Idempotency-Key
                                         -> {"data": {"video_id", "status": "waiting"}}
    GET  /v3/videos/{id}                 pending -> processing -> completed (video_url) | failed
                                         (failure_code/failure_message, maybe null); anything
                                         else: still running

v2 (`/v2/video/generate`) is being retired (PROVIDERS.md), so only v3 is spoken here.
Errors come as {"error": {"code", "message", "param", "doc_url"}}; 429 carries Retry-After.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import httpx

from node.personas import Persona
from providers import media
from providers._retry import CallLog, Deadline, GenerationStatus, generation_state
from providers.base import GenerationStore, MemoryGenerationStore, ProviderError, RemoteVideo, idempotency_key
from providers.generation import GenerationFlow
from providers.http import ApiKey, HeaderAuth, ProviderHttp, ProviderLimits

DEFAULT_BASE_URL = "https://api.heygen.com"
#: v3 assets are served by the API host (heygen-cli); the legacy v1 upload host was upload.heygen.com.
DEFAULT_UPLOAD_URL = "https://api.heygen.com"
#: bytes; larger files need HeyGen's direct-upload flow (not done here).
MAX_ASSET_BYTES = 32 * 1024 * 1024
SUCCEEDED, FAILED = {"completed"}, {"failed"}


def parse_error(response: httpx.Response | None, body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return error.get("code"), str(error.get("message") or error.get("code") or "error")
        if body.get("code") not in (None, 100):  # the v1 envelope, e.g. {"code": 400543, "message"}
            return str(body["code"]), str(body.get("message") or "error")
    return None, "no error body"


class HeyGenVideo:
    name = "heygen"

    def __init__(self, api_key: ApiKey | None, *, base_url: str = DEFAULT_BASE_URL,
                 upload_url: str = DEFAULT_UPLOAD_URL, resolution: str = "1080p",
                 limits: ProviderLimits | None = None, store: GenerationStore | None = None,
                 transport: httpx.BaseTransport | None = None, sleep=None):
        self._key, self.upload_url, self.resolution = api_key, upload_url.rstrip("/"), resolution
        auth = HeaderAuth("x-api-key", lambda: self._key.reveal())
        self.http = ProviderHttp(self.name, base_url, auth=auth, limits=limits or ProviderLimits(),
                                 parse_error=parse_error, transport=transport, **({"sleep": sleep} if sleep else {}))
        self.flow = GenerationFlow(self.http, store or MemoryGenerationStore(), idempotent_create=True)

    def __repr__(self) -> str:
        return f"HeyGenVideo(base_url={self.http.base_url!r}, api_key={self._key!r})"

    def unavailable_reason(self) -> str | None:
        if not self._key:
            return "not configured: HEYGEN_API_KEY not set"
        return self.http.circuit.reason()

    def generate(self, persona: Persona, portrait: Path, audio: Path, out_path: Path, *,
                 video_id: str, should_stop: Callable[[], bool] | None = None) -> RemoteVideo:
        if media.sniff_mime(audio) not in ("audio/wav", "audio/mpeg"):  # HeyGen takes WAV or MP3 audio
            audio = media.to_wav_pcm16(audio, out_path.with_name(f"{out_path.stem}-speech.wav"))
        for path in (portrait, audio):
            if path.stat().st_size > MAX_ASSET_BYTES:
                raise ProviderError("input_too_large", f"{path.name} is over HeyGen's {MAX_ASSET_BYTES // 2**20} MB "
                                    "asset limit", retryable=False, provider_fault=False)
        key = idempotency_key(video_id, self.name)

        def create(deadline: Deadline, calls: CallLog) -> str:
            image_id = self._upload(portrait, deadline, calls)
            audio_id = self._upload(audio, deadline, calls)
            body = {"type": "image", "image": {"type": "asset_id", "asset_id": image_id},
                    "audio_asset_id": audio_id, "resolution": self.resolution, "aspect_ratio": "auto",
                    "output_format": "mp4", "title": f"{persona.name} {video_id}", "callback_id": video_id}
            _, sent = self.http.request("POST", "/v3/videos", what="create video", deadline=deadline, calls=calls,
                                        create=True, json=body, headers={"Idempotency-Key": key})
            generation_id = (sent.get("data") or {}).get("video_id")
            if not generation_id:
                raise ProviderError("provider_bad_output", "create answered without a video_id")
            return str(generation_id)

        def fetch(generation_id: str, deadline: Deadline, calls: CallLog) -> GenerationStatus:
            _, body = self.http.request("GET", f"/v3/videos/{generation_id}", what="video status",
                                        deadline=deadline, calls=calls)
            data = body.get("data") if isinstance(body.get("data"), dict) else {}
            raw = str(data.get("status") or "")
            return GenerationStatus(generation_state(raw, succeeded=SUCCEEDED, failed=FAILED), raw, data.get("video_url"),
                             data.get("failure_code"), data.get("failure_message"))

        return self.flow.run(video_id=video_id, out_path=out_path, create=create, fetch=fetch,
                             should_stop=should_stop)

    def _upload(self, path: Path, deadline: Deadline, calls: CallLog) -> str:
        files = {"file": (path.name, path.read_bytes(), media.sniff_mime(path))}
        _, body = self.http.request("POST", f"{self.upload_url}/v3/assets", what="asset upload",
                                    deadline=deadline, calls=calls, files=files)
        asset_id = (body.get("data") or {}).get("asset_id")
        if not asset_id:
            raise ProviderError("provider_bad_output", "asset upload answered without an asset_id")
        return str(asset_id)
