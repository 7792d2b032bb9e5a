"""The process's providers, built from Settings once: name -> client, and the TTS order.

Built once per process, never per Renderer: each client holds its provider's concurrency slots
and circuit breaker, and a multi-GPU worker (one Renderer per GPU) must not multiply the limits
the plan allows. The node composes them here, so `providers/` never imports the pipeline's
modules (the audio cache wraps ElevenLabs on this side).

    tts      [ElevenLabs through the audio cache, if ELEVENLABS_API_KEY is set] + [espeak-ng]
    remote   synclabs (LipSyncAPI), higgsfield and heygen (FullVideoAPI); each is built even
             without its keys, and then says "not configured: X not set" when asked

Clients open no connection until used, so building them is cheap (`lipsync-node health` too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import httpx

from node.cache import AudioCache, CachedTTS
from node.config import Settings
from providers._retry import RetryPolicy
from providers.base import FileGenerationStore, FullVideoAPI, GenerationStore, LipSyncAPI, TextToSpeech
from providers.elevenlabs import ElevenLabsTTS
from providers.espeak import EspeakTTS
from providers.heygen import HeyGenVideo
from providers.higgsfield import HiggsfieldSpeak
from providers.http import ApiKey, ProviderLimits
from providers.synclabs import SyncLabsLipSync


@dataclass
class Providers:
    tts: list[TextToSpeech]
    remote: dict[str, LipSyncAPI | FullVideoAPI]
    elevenlabs: ElevenLabsTTS


def limits_for(settings: Settings, name: str) -> ProviderLimits:
    s = settings
    return ProviderLimits(
        timeout=httpx.Timeout(s.provider_read_timeout_s, connect=s.provider_connect_timeout_s),
        deadline_s=getattr(s, f"{name}_deadline_s"),
        retry=RetryPolicy(max_attempts=s.provider_max_tries, base_s=s.provider_retry_base_s,
                          cap_s=s.provider_retry_cap_s),
        poll_base_s=s.provider_poll_base_s, poll_cap_s=s.provider_poll_cap_s,
        concurrency=getattr(s, f"{name}_concurrency"),
        circuit_failures=s.provider_circuit_failures, circuit_cooldown_s=s.provider_circuit_cooldown_s,
    )


def build_providers(settings: Settings, *, store: GenerationStore | None = None,
                    transport: httpx.BaseTransport | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> Providers:
    s = settings
    store = store or FileGenerationStore(s.provider_generations_dir or s.temp_dir / "generations")
    common = {"transport": transport, "sleep": sleep}
    elevenlabs = ElevenLabsTTS(ApiKey.from_secret(s.elevenlabs_api_key), base_url=s.elevenlabs_base_url,
                               limits=limits_for(s, "elevenlabs"), **common)
    tts: list[TextToSpeech] = []
    if elevenlabs.configured_reason() is None:
        cache = AudioCache(s.audio_cache_dir, s.audio_cache_max_size_mb * 1024 * 1024)
        tts.append(CachedTTS(elevenlabs, cache))
    tts.append(EspeakTTS(s.espeak_binary))
    remote = {
        "synclabs": SyncLabsLipSync(ApiKey.from_secret(s.synclabs_api_key), base_url=s.synclabs_base_url,
                                    model=s.synclabs_model, limits=limits_for(s, "synclabs"), store=store, **common),
        "higgsfield": HiggsfieldSpeak(ApiKey.from_secret(s.higgsfield_api_key_id),
                                      ApiKey.from_secret(s.higgsfield_api_key_secret), base_url=s.higgsfield_base_url,
                                      limits=limits_for(s, "higgsfield"), store=store, **common),
        "heygen": HeyGenVideo(ApiKey.from_secret(s.heygen_api_key), base_url=s.heygen_base_url,
                              upload_url=s.heygen_upload_url, limits=limits_for(s, "heygen"), store=store, **common),
    }
    return Providers(tts=tts, remote=remote, elevenlabs=elevenlabs)
