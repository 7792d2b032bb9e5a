"""ElevenLabs text-to-speech through the official SDK (`elevenlabs` 2.x, pinned <3).

The persona gives voice, model, output format and voice settings. The SDK's `convert` streams
and never retries, so retries come from `_retry` (429 variants read from `detail.code` and the
legacy `detail.status`); the SDK's own retry is off (`max_retries: 0`). The base URL is a
setting (ELEVENLABS_BASE_URL), which is how the tests reach the loopback mock.

Output is normalised to a file ffmpeg reads: mp3/wav/opus as sent, headerless pcm/ulaw/alaw
wrapped in a WAV container; then probed, so bytes that are not audio never reach the pipeline
or the cache.
"""

from __future__ import annotations

import logging
import uuid
import wave
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from node.personas import Persona
from providers import media
from providers._retry import (AttemptFailed, CallLog, Deadline, call_with_retry, classify_status,
                              classify_transport_error)
from providers.base import ProviderError, SpeechFile
from providers.http import ApiKey, ProviderHttp, ProviderLimits

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.elevenlabs.io"


def parse_error(response: httpx.Response | None, body: Any) -> tuple[str | None, str]:
    """ElevenLabs' envelopes: {"detail": {code|status, message}}, the 422 FastAPI list, or text."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = detail.get("code") or detail.get("status")
        # Both names are read: the newer `code` may be generic while `status` is specific.
        if detail.get("status") and detail.get("code") and detail["status"] != detail["code"]:
            code = f"{detail['code']}/{detail['status']}"
        return code, str(detail.get("message") or code or "error")
    if isinstance(detail, list):
        msgs = [f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail if isinstance(d, dict)]
        return "validation_error", "; ".join(msgs)[:300] or "validation error"
    if isinstance(detail, str):
        return detail, detail
    return None, "no error body"


class ElevenLabsTTS:
    name = "elevenlabs"

    def __init__(self, api_key: ApiKey | None, *, base_url: str = DEFAULT_BASE_URL,
                 limits: ProviderLimits | None = None, transport: httpx.BaseTransport | None = None,
                 sleep=None):
        self._key = api_key
        self.http = ProviderHttp(self.name, base_url, auth=None, limits=limits or ProviderLimits(),
                                 parse_error=parse_error, transport=transport,
                                 **({"sleep": sleep} if sleep else {}))
        self._sdk = None

    def __repr__(self) -> str:
        return f"ElevenLabsTTS(base_url={self.http.base_url!r}, api_key={self._key!r})"

    def configured_reason(self) -> str | None:
        return None if self._key else "not configured: ELEVENLABS_API_KEY not set"

    def unavailable_reason(self) -> str | None:
        return self.configured_reason() or self.http.circuit.reason()

    def cache_identity(self, text: str, persona: Persona) -> dict:
        """Everything that changes the audio; the audio cache hashes this."""
        return {"provider": self.name, **asdict(persona.elevenlabs), "text": text}

    def synthesize(self, text: str, persona: Persona, out_dir: Path) -> SpeechFile:
        reason = self.unavailable_reason()
        if reason:
            raise ProviderError("tts_unavailable", reason, retryable=False, provider_fault=False)
        voice = persona.elevenlabs
        deadline, calls = Deadline(self.http.limits.deadline_s), CallLog()
        with self.http.guard(deadline):
            audio = call_with_retry(lambda: self._convert(text, persona, deadline), provider=self.name,
                                    what="text-to-speech", policy=self.http.limits.retry,
                                    deadline=deadline, calls=calls, sleep=self.http.sleep)
            path = _normalise(audio, voice.output_format, Path(out_dir) / f"elevenlabs-{uuid.uuid4().hex[:12]}")
            media.check_audio(path, self.name)
        return SpeechFile(path=path, provider=self.name, note=calls.note())

    def _client(self):
        if self._sdk is None:
            from elevenlabs import ElevenLabs

            # Our httpx client: explicit timeouts and the injectable transport; the SDK adds the
            # xi-api-key header itself. api_key is always passed: the SDK's default reads the
            # environment at import time.
            http = httpx.Client(timeout=self.http.limits.timeout, transport=self.http.transport,
                                follow_redirects=True)
            self._sdk = ElevenLabs(api_key=self._key.reveal(), base_url=self.http.base_url, httpx_client=http)
        return self._sdk

    def _convert(self, text: str, persona: Persona, deadline: Deadline) -> bytes:
        from elevenlabs import VoiceSettings
        from elevenlabs.core.api_error import ApiError

        voice = persona.elevenlabs
        # timeout_in_seconds is handed to httpx as is; an httpx.Timeout keeps the connect/read
        # phases apart, where the SDK's float would set every phase to the same value.
        options = {"max_retries": 0, "timeout_in_seconds": _bounded(self.http.limits.timeout, deadline)}
        try:
            chunks = self._client().text_to_speech.convert(
                voice.voice_id, text=text, model_id=voice.model_id, output_format=voice.output_format,
                voice_settings=VoiceSettings(stability=voice.stability, similarity_boost=voice.similarity_boost,
                                             style=voice.style, use_speaker_boost=voice.use_speaker_boost),
                request_options=options)
            return b"".join(chunks)  # the SDK sends nothing until this iterates
        except ApiError as e:
            headers = {k.lower(): v for k, v in (e.headers or {}).items()}
            code, message = parse_error(None, e.body)
            raise AttemptFailed(classify_status(e.status_code or 0, code, message,
                                                headers.get("retry-after"))) from None
        except httpx.HTTPError as e:
            raise AttemptFailed(classify_transport_error(e)) from None


def _bounded(timeout: httpx.Timeout, deadline: Deadline) -> httpx.Timeout:
    left = max(deadline.remaining(), 0.05)
    return httpx.Timeout(connect=min(timeout.connect or left, left), read=min(timeout.read or left, left),
                         write=min(timeout.write or left, left), pool=min(timeout.pool or left, left))


def _normalise(audio: bytes, output_format: str, stem: Path) -> Path:
    """Bytes as sent -> a file ffmpeg can read, named by its real format."""
    if not audio:
        raise ProviderError("tts_bad_output", "ElevenLabs sent an empty body")
    codec, _, rest = output_format.partition("_")
    rate = int(rest.split("_")[0]) if rest.split("_")[0].isdigit() else 44100
    if codec == "pcm":  # raw 16-bit little-endian mono without a header
        path = stem.with_suffix(".wav")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(audio[: len(audio) // 2 * 2])
        return path
    if codec in ("ulaw", "alaw"):
        raw = stem.with_suffix(f".{codec}")
        raw.write_bytes(audio)
        path = stem.with_suffix(".wav")
        media._ffmpeg(["-f", "mulaw" if codec == "ulaw" else "alaw", "-ar", str(rate), "-ac", "1",
                       "-i", str(raw), str(path)], "wrapping telephone audio")
        raw.unlink(missing_ok=True)
        return path
    suffix = {"mp3": ".mp3", "wav": ".wav", "opus": ".ogg"}.get(codec, ".bin")
    path = stem.with_suffix(suffix)
    path.write_bytes(audio)
    return path
