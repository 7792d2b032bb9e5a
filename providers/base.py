"""The small protocols every provider implements; the strategy chain depends only on these.

    TextToSpeech     text + persona -> an audio file               (espeak-ng, ElevenLabs)
    LipSyncAPI       base video + audio -> a video file            (SyncLabs)
    FullVideoAPI     persona portrait + audio -> a video file      (Higgsfield, HeyGen)
    GenerationStore  (video_id, provider) -> the provider's generation id, so a retried job
                     resumes polling the generation it already paid for instead of creating another

`unavailable_reason()` says, without any network call, why a provider cannot run on this node
(no key, no binary, circuit open); None means it may be tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from node.errors import ProviderError  # the node's error tree; re-exported for provider modules
from node.personas import Persona

__all__ = ["OUTCOME_UNKNOWN", "FileGenerationStore", "FullVideoAPI", "GenerationStore", "LipSyncAPI",
           "MemoryGenerationStore", "ProviderError", "RemoteVideo", "SpeechFile", "TextToSpeech",
           "idempotency_key"]


@dataclass(frozen=True)
class SpeechFile:
    path: Path
    provider: str
    #: What happened on the way, for the job's attempts ("audio cache hit", "after 1 retry: ...").
    note: str | None = None


@dataclass(frozen=True)
class RemoteVideo:
    """A finished video downloaded from a provider into our own storage."""

    path: Path
    provider: str
    generation_id: str
    #: e.g. "resumed generation gen_1; after 2 retries: 429 rate_limit_exceeded, 503 http_503"
    note: str | None = None


@runtime_checkable
class TextToSpeech(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def synthesize(self, text: str, persona: Persona, out_dir: Path) -> SpeechFile: ...


@runtime_checkable
class LipSyncAPI(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def lipsync(self, video: Path, audio: Path, out_path: Path, *, video_id: str,
                should_stop: Callable[[], bool] | None = None) -> RemoteVideo: ...


@runtime_checkable
class FullVideoAPI(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def generate(self, persona: Persona, portrait: Path, audio: Path, out_path: Path, *,
                 video_id: str, should_stop: Callable[[], bool] | None = None) -> RemoteVideo: ...


# --- where a job's generation ids live --------------------------------------------------------

#: Stored instead of an id when a create call's outcome is unknown (timeout, 5xx) at a provider
#: without idempotency keys: a retried job must not create blindly and pay twice.
OUTCOME_UNKNOWN = "outcome-unknown"


def idempotency_key(video_id: str, provider: str) -> str:
    """The create call's Idempotency-Key: the same for every attempt of one job at one provider,
    so the provider answers a repeated create with the generation it already made. Hex only,
    which fits both Sync's [A-Za-z0-9._~-]{1,128} and HeyGen's [A-Za-z0-9_:.-]{1,255}."""
    return "lsn-" + hashlib.sha256(f"{video_id}\0{provider}".encode()).hexdigest()[:40]


class GenerationStore(Protocol):
    """The provider's generation id per (job, provider). The queue's job record implements this
    in Redis; `FileGenerationStore` is the single-host default."""

    def get(self, video_id: str, provider: str) -> str | None: ...

    def put(self, video_id: str, provider: str, generation_id: str) -> None: ...


class MemoryGenerationStore:
    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get(self, video_id: str, provider: str) -> str | None:
        with self._lock:
            return self._ids.get((video_id, provider))

    def put(self, video_id: str, provider: str, generation_id: str) -> None:
        with self._lock:
            self._ids[(video_id, provider)] = generation_id


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class FileGenerationStore:
    """One small JSON file per (video_id, provider), replaced atomically: survives a crashed
    process, so the next attempt of the job on this host resumes the same generation."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, video_id: str, provider: str) -> Path:
        return self.folder / f"{_SAFE_NAME.sub('_', video_id)}.{_SAFE_NAME.sub('_', provider)}.json"

    def get(self, video_id: str, provider: str) -> str | None:
        try:
            data = json.loads(self._path(video_id, provider).read_text())
        except (OSError, ValueError):
            return None  # absent or torn: no generation known
        return data.get("generation_id") if isinstance(data, dict) else None

    def put(self, video_id: str, provider: str, generation_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(video_id, provider)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"video_id": video_id, "provider": provider,
                                   "generation_id": generation_id}))
        os.replace(tmp, path)
