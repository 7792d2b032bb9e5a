"""Provider fixtures: the loopback mocks, fast limits, and settings that point a node at them.

Waits are recorded and shortened (`FastSleep`): a test asserts the delay a client *asked* for
(Retry-After honoured, backoff growing) without spending it; deadlines stay real time.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from node.personas import load_persona
from providers._retry import RetryPolicy
from providers.base import MemoryGenerationStore
from providers.http import ApiKey, ProviderLimits
from tests.conftest import make_speech, make_video, require_tool
from tests.mocks import ElevenLabsMock, HeyGenMock, HiggsfieldMock, SyncMock


class FastSleep:
    """Records every requested wait and sleeps at most `cap_s` of it."""

    def __init__(self, cap_s: float = 0.02):
        self.cap_s, self.waits = cap_s, []

    def __call__(self, seconds: float) -> None:
        self.waits.append(round(seconds, 3))
        time.sleep(min(seconds, self.cap_s))


def fast_limits(**overrides) -> ProviderLimits:
    values = dict(timeout=httpx.Timeout(2.0, connect=1.0), deadline_s=6.0,
                  retry=RetryPolicy(max_attempts=4, base_s=0.05, cap_s=0.2),
                  poll_base_s=0.01, poll_cap_s=0.05, concurrency=2, circuit_failures=3, circuit_cooldown_s=60.0)
    values.update(overrides)
    return ProviderLimits(**values)


@pytest.fixture
def sleep() -> FastSleep:
    return FastSleep()


@pytest.fixture
def store() -> MemoryGenerationStore:
    return MemoryGenerationStore()


@pytest.fixture
def persona():
    return load_persona("papa_noel", environ={})


# Inputs are read-only for the clients, so they are made once per session (ffmpeg is slow-ish).
@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("provider-media")


@pytest.fixture(scope="session")
def speech(media_dir: Path) -> Path:
    return make_speech(media_dir / "speech.wav", seconds=1.2)


@pytest.fixture(scope="session")
def avatar(media_dir: Path) -> Path:
    require_tool("ffmpeg")
    return make_video(media_dir / "avatar.mp4", seconds=0.4)


@pytest.fixture(scope="session")
def portrait(media_dir: Path, avatar: Path) -> Path:
    from providers.media import portrait_of

    return portrait_of(avatar, media_dir / "portrait.png")


@pytest.fixture
def el_mock():
    with ElevenLabsMock() as mock:
        yield mock


@pytest.fixture
def sync_mock():
    with SyncMock() as mock:
        yield mock


@pytest.fixture
def hf_mock():
    with HiggsfieldMock() as mock:
        yield mock


@pytest.fixture
def heygen_mock():
    with HeyGenMock() as mock:
        yield mock


def key(value: str) -> ApiKey:
    return ApiKey(value)


def provider_settings(settings, *, el=None, sync=None, hf=None, heygen=None, **overrides):
    """`settings` pointed at the given mocks (others unconfigured), with test-sized limits."""
    values = dict(provider_connect_timeout_s=1.0, provider_read_timeout_s=2.0, provider_max_tries=3,
                  provider_retry_base_s=0.05, provider_retry_cap_s=0.2, provider_poll_base_s=0.01,
                  provider_poll_cap_s=0.05, provider_circuit_failures=3, provider_circuit_cooldown_s=60.0,
                  elevenlabs_deadline_s=5.0, synclabs_deadline_s=6.0, higgsfield_deadline_s=6.0,
                  heygen_deadline_s=6.0)
    if el is not None:
        values |= dict(elevenlabs_base_url=el.url, elevenlabs_api_key=el.api_key)
    if sync is not None:
        values |= dict(synclabs_base_url=sync.url, synclabs_api_key=sync.api_key)
    if hf is not None:
        key_id, secret = hf.auth.removeprefix("Key ").split(":", 1)
        values |= dict(higgsfield_base_url=hf.url, higgsfield_api_key_id=key_id, higgsfield_api_key_secret=secret)
    if heygen is not None:
        values |= dict(heygen_base_url=heygen.url, heygen_upload_url=heygen.url, heygen_api_key=heygen.api_key)
    values |= overrides
    # model_copy skips validation: wrap secrets the way the env would.
    from pydantic import SecretStr

    for name in ("elevenlabs_api_key", "synclabs_api_key", "heygen_api_key", "higgsfield_api_key_id",
                 "higgsfield_api_key_secret"):
        if isinstance(values.get(name), str):
            values[name] = SecretStr(values[name])
    return settings.model_copy(update=values)
