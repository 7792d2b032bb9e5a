"""Higgsfield Speak: a still of the persona + speech -> a talking video. Strategy 2.

    POST /files/generate-upload-url  {"content_type"} -> {public_url, upload_url, upload_headers?};
                                      then PUT the bytes to upload_url without our credentials
    POST /higgsfield-ai/speak         {image_url, audio_url, prompt, quality, duration}
                                      -> {status: queued, request_id, status_url, cancel_url}
    GET  status_url                   queued -> in_progress -> completed (video.url) | failed | nsfw
                                      | canceled; anything else: still running

Auth is `Authorization: Key {HIGGSFIELD_API_KEY_ID}:{HIGGSFIELD_API_KEY_SECRET}`. Speak accepts
WAV only and renders fixed 5, 10 or 15 s clips: speech is converted to 16-bit PCM WAV and given
the smallest bucket that holds it; speech over 15 s is rejected with a reason (splitting it into
several paid generations stitched together is left to a later change), so the chain moves on
to HeyGen. There are no idempotency keys: an ambiguous create is never repeated (generation.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import httpx

from node.personas import Persona
from providers import media
from providers._retry import CallLog, Deadline, GenerationStatus, generation_state
from providers.base import GenerationStore, MemoryGenerationStore, ProviderError, RemoteVideo
from providers.generation import GenerationFlow
from providers.http import ApiKey, HeaderAuth, ProviderHttp, ProviderLimits

DEFAULT_BASE_URL = "https://api.higgsfield.ai"  # higgsfield-client 0.2.0; docs still show platform.
MODEL_PATH = "/higgsfield-ai/speak"
#: seconds; the only durations Speak renders.
DURATION_BUCKETS_S = (5, 10, 15)
SUCCEEDED, FAILED = {"completed"}, {"failed", "nsfw", "canceled", "cancelled"}


#: Statuses whose meaning Higgsfield documents without a code in the body (PROVIDERS.md).
STATUS_CODES = {403: "insufficient_credits", 423: "model_blocked"}


def parse_error(response: httpx.Response | None, body: Any) -> tuple[str | None, str]:
    """FastAPI style: {"detail": "model_not_found"} or {"detail": [{"loc", "msg", ...}]}; a 403
    is "not enough credits" and a 423 a model the account may not use, whatever the body says."""
    status = response.status_code if response is not None else None
    if status in STATUS_CODES:
        detail = body.get("detail") if isinstance(body, dict) else None
        return STATUS_CODES[status], detail if isinstance(detail, str) else STATUS_CODES[status].replace("_", " ")
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("details") or body.get("message") or body.get("error")
        if isinstance(detail, list):
            msgs = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail if isinstance(d, dict)]
            return "validation_error", "; ".join(msgs)[:300]
        if isinstance(detail, str):
            return (detail if detail.replace("_", "").isalnum() else None), detail
    return None, "no error body"


def duration_bucket(seconds: float) -> int:
    for bucket in DURATION_BUCKETS_S:
        if seconds <= bucket + 0.05:
            return bucket
    raise ProviderError("audio_too_long_for_provider",
                        f"Higgsfield Speak renders clips of {', '.join(map(str, DURATION_BUCKETS_S))} s; this "
                        f"speech is {seconds:.1f} s and splitting is not supported", retryable=False,
                        provider_fault=False)


class HiggsfieldSpeak:
    name = "higgsfield"

    def __init__(self, key_id: ApiKey | None, key_secret: ApiKey | None, *, base_url: str = DEFAULT_BASE_URL,
                 quality: str = "high", limits: ProviderLimits | None = None,
                 store: GenerationStore | None = None, transport: httpx.BaseTransport | None = None, sleep=None):
        self._id, self._secret, self.quality = key_id, key_secret, quality
        auth = HeaderAuth("Authorization", lambda: f"Key {self._id.reveal()}:{self._secret.reveal()}")
        self.http = ProviderHttp(self.name, base_url, auth=auth, limits=limits or ProviderLimits(),
                                 parse_error=parse_error, transport=transport, **({"sleep": sleep} if sleep else {}))
        self.flow = GenerationFlow(self.http, store or MemoryGenerationStore(), idempotent_create=False)
        self._status_urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"HiggsfieldSpeak(base_url={self.http.base_url!r}, key_id={self._id!r}, key_secret={self._secret!r})"

    def unavailable_reason(self) -> str | None:
        unset = [n for n, k in (("HIGGSFIELD_API_KEY_ID", self._id), ("HIGGSFIELD_API_KEY_SECRET", self._secret))
                 if not k]
        if unset:
            return f"not configured: {' and '.join(unset)} not set"
        return self.http.circuit.reason()

    def generate(self, persona: Persona, portrait: Path, audio: Path, out_path: Path, *,
                 video_id: str, should_stop: Callable[[], bool] | None = None) -> RemoteVideo:
        duration = duration_bucket(media.audio_seconds(audio))  # before any network call or upload

        def create(deadline: Deadline, calls: CallLog) -> str:
            wav = media.to_wav_pcm16(audio, out_path.with_name(f"{out_path.stem}-speech.wav"))
            body = {"image_url": self._upload(portrait, "image/png", deadline, calls),
                    "audio_url": self._upload(wav, "audio/wav", deadline, calls),
                    "prompt": f"{persona.display_name} talking to the camera, natural head motion",
                    "quality": self.quality, "duration": duration}
            _, sent = self.http.request("POST", MODEL_PATH, what="submit", deadline=deadline, calls=calls,
                                        create=True, json=body)
            request_id = sent.get("request_id")
            if not request_id:
                raise ProviderError("provider_bad_output", "submit answered without a request_id")
            if sent.get("status_url"):  # always follow the server's URL: hosts have moved before
                self._status_urls[request_id] = sent["status_url"]
            return str(request_id)

        def fetch(request_id: str, deadline: Deadline, calls: CallLog) -> GenerationStatus:
            url = self._status_urls.get(request_id, f"/requests/{request_id}/status")
            _, body = self.http.request("GET", url, what="request status", deadline=deadline, calls=calls)
            raw = str(body.get("status") or "")
            video = body.get("video") if isinstance(body.get("video"), dict) else {}
            error = body.get("error")
            return GenerationStatus(generation_state(raw, succeeded=SUCCEEDED, failed=FAILED), raw, video.get("url"),
                             "nsfw" if raw == "nsfw" else None,
                             error if isinstance(error, str) else (str(error) if error else None))

        return self.flow.run(video_id=video_id, out_path=out_path, create=create, fetch=fetch,
                             should_stop=should_stop)

    def _upload(self, path: Path, content_type: str, deadline: Deadline, calls: CallLog) -> str:
        _, slot = self.http.request("POST", "/files/generate-upload-url", what="upload URL", deadline=deadline,
                                    calls=calls, json={"content_type": content_type})
        if not slot.get("upload_url") or not slot.get("public_url"):
            raise ProviderError("provider_bad_output", "generate-upload-url answered without URLs")
        headers = slot.get("upload_headers") or {"Content-Type": content_type}
        # The presigned PUT goes without our credentials (plain client).
        self.http.request("PUT", slot["upload_url"], what="upload", deadline=deadline, calls=calls,
                          expect_json=False, client=self.http.plain, content=path.read_bytes(), headers=headers)
        return slot["public_url"]
