"""Lip-sync engines by name. Local GPU engines load their models once per process."""

from __future__ import annotations

from node.config import Settings
from node.engines.base import LipSyncEngine, Speech
from node.engines.mock import MockEngine
from node.engines.musetalk import MuseTalkEngine
from node.engines.wav2lip import Wav2LipEngine

__all__ = ["LipSyncEngine", "MockEngine", "MuseTalkEngine", "Speech", "Wav2LipEngine", "build_local_engines"]


def build_local_engines(settings: Settings) -> dict[str, LipSyncEngine]:
    """Every local engine this build knows, ready or not (the chain records why not)."""
    return {
        "musetalk": MuseTalkEngine(settings),
        "wav2lip": Wav2LipEngine(settings),
        "mock": MockEngine(enabled=settings.enable_mock_engine),
    }
