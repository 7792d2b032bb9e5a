"""Sync (sync.so) lip-sync: base video + speech -> a lip-synced video. Strategy 1, after the
local engines.

    POST /v2/generate        multipart: video and audio files (<= 20 MB each), model, options;
                             header Idempotency-Key (one per job, see base.idempotency_key)
    GET  /v2/generate/{id}   PENDING -> PROCESSING -> COMPLETED | FAILED | REJECTED
                             (anything else: still running); outputUrl is signed, downloaded at once

`sync_mode: bounce` ping-pongs the base video until the speech ends, as strategy 3 does locally,
so a short base video works. Errors come as {"statusCode", "errorCode", "message", "error"}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import httpx

from providers import media
from providers._retry import CallLog, Deadline, GenerationStatus, generation_state
from providers.base import GenerationStore, MemoryGenerationStore, ProviderError, RemoteVideo, idempotency_key
from providers.generation import GenerationFlow
from providers.http import ApiKey, HeaderAuth, ProviderHttp, ProviderLimits

DEFAULT_BASE_URL = "https://api.sync.so"
DEFAULT_MODEL = "lipsync-2"
#: bytes per file in a multipart create; larger files need Sync's asset upload (not done here).
MAX_MULTIPART_BYTES = 20 * 1024 * 1024
SUCCEEDED, FAILED = {"completed"}, {"failed", "rejected"}


def parse_error(response: httpx.Response | None, body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, list):
            message = "; ".join(map(str, message))
        code = body.get("errorCode") or body.get("error_code")
        return code, str(message or body.get("error") or code or "error")
    return None, "no error body"


class SyncLabsLipSync:
    name = "synclabs"

    def __init__(self, api_key: ApiKey | None, *, base_url: str = DEFAULT_BASE_URL, model: str = DEFAULT_MODEL,
                 limits: ProviderLimits | None = None, store: GenerationStore | None = None,
                 transport: httpx.BaseTransport | None = None, sleep=None):
        self._key, self.model = api_key, model
        auth = HeaderAuth("x-api-key", lambda: self._key.reveal())
        self.http = ProviderHttp(self.name, base_url, auth=auth, limits=limits or ProviderLimits(),
                                 parse_error=parse_error, transport=transport, **({"sleep": sleep} if sleep else {}))
        self.flow = GenerationFlow(self.http, store or MemoryGenerationStore(), idempotent_create=True)

    def __repr__(self) -> str:
        return f"SyncLabsLipSync(base_url={self.http.base_url!r}, api_key={self._key!r})"

    def unavailable_reason(self) -> str | None:
        if not self._key:
            return "not configured: SYNCLABS_API_KEY not set"
        return self.http.circuit.reason()

    def lipsync(self, video: Path, audio: Path, out_path: Path, *, video_id: str,
                should_stop: Callable[[], bool] | None = None) -> RemoteVideo:
        for path in (video, audio):
            if path.stat().st_size > MAX_MULTIPART_BYTES:
                raise ProviderError("input_too_large", f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; Sync "
                                    f"takes at most {MAX_MULTIPART_BYTES // 2**20} MB per uploaded file",
                                    retryable=False, provider_fault=False)
        key = idempotency_key(video_id, self.name)

        def create(deadline: Deadline, calls: CallLog) -> str:
            with open(video, "rb") as v, open(audio, "rb") as a:
                files = {"video": (video.name, v.read(), media.sniff_mime(video)),
                         "audio": (audio.name, a.read(), media.sniff_mime(audio))}
            data = {"model": self.model, "options": json.dumps({"sync_mode": "bounce"})}
            _, body = self.http.request("POST", "/v2/generate", what="create generation", deadline=deadline,
                                        calls=calls, create=True, data=data, files=files,
                                        headers={"Idempotency-Key": key})
            if not body.get("id"):
                raise ProviderError("provider_bad_output", "create answered without a generation id")
            return str(body["id"])

        def fetch(generation_id: str, deadline: Deadline, calls: CallLog) -> GenerationStatus:
            _, body = self.http.request("GET", f"/v2/generate/{generation_id}", what="generation status",
                                        deadline=deadline, calls=calls)
            raw = str(body.get("status") or "")
            return GenerationStatus(generation_state(raw, succeeded=SUCCEEDED, failed=FAILED), raw, body.get("outputUrl"),
                             body.get("error_code") or body.get("errorCode"), body.get("error"))

        return self.flow.run(video_id=video_id, out_path=out_path, create=create, fetch=fetch,
                             should_stop=should_stop)
