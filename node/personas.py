"""Personas as data: one TOML file each, bundled in node/personas/ or in PERSONAS_DIR."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import InvalidInput

BUNDLED_DIR = Path(__file__).parent / "personas"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ElevenLabsVoice:
    voice_id: str
    model_id: str = "eleven_multilingual_v2"
    output_format: str = "mp3_44100_128"
    stability: float = 0.5
    similarity_boost: float = 0.75
    style: float = 0.0
    use_speaker_boost: bool = True


@dataclass(frozen=True)
class OfflineVoice:
    voice: str
    speed_wpm: int = 160
    pitch: int = 50


@dataclass(frozen=True)
class Persona:
    name: str
    display_name: str
    language: str
    avatar: str
    elevenlabs: ElevenLabsVoice
    offline: OfflineVoice
    source: Path = field(compare=False)


def load_persona(name: str, personas_dir: Path | None = None,
                 environ: dict[str, str] | None = None) -> Persona:
    """The persona `name`; raises InvalidInput(unknown_persona) listing the known ones."""
    if not _NAME_RE.match(name or ""):
        raise InvalidInput("unknown_persona", f"persona {name!r} is not a valid persona name")
    for folder in ([personas_dir] if personas_dir else []) + [BUNDLED_DIR]:
        path = folder / f"{name}.toml"
        if path.is_file():
            return _parse(path, os.environ if environ is None else environ)
    known = ", ".join(list_personas(personas_dir)) or "none"
    raise InvalidInput("unknown_persona", f"persona {name!r} does not exist (known: {known})")


def list_personas(personas_dir: Path | None = None) -> list[str]:
    folders = [BUNDLED_DIR] + ([personas_dir] if personas_dir and personas_dir.is_dir() else [])
    return sorted({p.stem for folder in folders for p in folder.glob("*.toml")})


def _parse(path: Path, environ) -> Persona:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    voice = dict(data.get("elevenlabs", {}))
    env_name = voice.pop("voice_id_env", None)
    if env_name and environ.get(env_name):
        voice["voice_id"] = environ[env_name]
    return Persona(
        name=data["name"], display_name=data.get("display_name", data["name"]),
        language=data["language"], avatar=data.get("avatar", "demo"),
        elevenlabs=ElevenLabsVoice(**voice), offline=OfflineVoice(**data.get("offline", {"voice": data["language"]})),
        source=path,
    )
