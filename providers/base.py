"""The small protocols every provider implements; the strategy chain depends only on these.

    TextToSpeech     text + persona -> an audio file      (espeak-ng, ElevenLabs)
    LipSyncAPI       base video + audio -> a video file   (SyncLabs)          [providers issue]
    FullVideoAPI     persona + audio -> a video file      (Higgsfield, HeyGen) [providers issue]

`unavailable_reason()` says, without any network call, why a provider cannot run on this node
(no key, no binary); None means it may be tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from node.personas import Persona


class ProviderError(Exception):
    """A provider call failed; `code` is stable, the message never contains a secret."""

    def __init__(self, code: str, message: str, *, retryable: bool = True):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable = code, message, retryable


@dataclass(frozen=True)
class SpeechFile:
    path: Path
    provider: str


@runtime_checkable
class TextToSpeech(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def synthesize(self, text: str, persona: Persona, out_dir: Path) -> SpeechFile: ...


@runtime_checkable
class LipSyncAPI(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def lipsync(self, video: Path, audio: Path, out_path: Path) -> Path: ...


@runtime_checkable
class FullVideoAPI(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def generate(self, persona: Persona, audio: Path, out_path: Path) -> Path: ...
