"""Lip-sync engines by name. Local GPU engines load their models once per process."""

from __future__ import annotations

from typing import Iterator

from node.config import Settings
from node.engines.base import LipSyncEngine, Speech
from node.engines.mock import MockEngine
from node.engines.wav2lip import Wav2LipEngine
from node.weights import LICENCES, missing_weights_reason

__all__ = ["LipSyncEngine", "Speech", "MockEngine", "Wav2LipEngine", "build_local_engines"]


class _EngineWithoutCode:
    """A local engine whose weights the node checks, but whose model code is not in this build
    yet: it is skipped with a reason that says which of the two is missing."""

    def __init__(self, name: str, settings: Settings):
        self.name, self.licence, self._weights_dir = name, LICENCES[name], settings.weights_dir

    def unavailable_reason(self) -> str | None:
        return (missing_weights_reason(self.name, self._weights_dir)
                or f"the {self.name} engine's model code is not in this build yet")

    def frames(self, *args, **kwargs) -> Iterator:  # pragma: no cover - never ready
        raise NotImplementedError(self.name)


def build_local_engines(settings: Settings) -> dict[str, LipSyncEngine]:
    """Every local engine this build knows, ready or not (the chain records why not)."""
    return {
        "musetalk": _EngineWithoutCode("musetalk", settings),
        "wav2lip": Wav2LipEngine(settings),
        "mock": MockEngine(enabled=settings.enable_mock_engine),
    }
