"""The job: "this persona says this text (or this audio) over this avatar".

`parse_job(data, limits)` is the one way in (CLI, queue, API): it returns a frozen `Job` or raises
`InvalidInput` with a stable code and a sentence. Pydantic does the typing; every rejection is
mapped to one of our codes here, so clients never see pydantic's wording as the contract.
"""

from __future__ import annotations

import re
import secrets
from enum import Enum
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from node.errors import InvalidInput
from node.lanes import Priority

VIDEO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_IDEMPOTENCY_KEY_CHARS = 128


class Strategy(str, Enum):
    auto = "auto"  # lipsync, then full_video, then base_video
    lipsync = "lipsync"
    full_video = "full_video"
    base_video = "base_video"


class Engine(str, Enum):
    musetalk = "musetalk"
    wav2lip = "wav2lip"
    synclabs = "synclabs"
    mock = "mock"


class Job(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    # Descriptions and the extra schema keys document the wire format (node/assets/job.schema.json);
    # validation and its error codes are the validators' below, not the schema's.
    video_id: str = Field(description="The job's id: 1 to 64 letters, digits, '_' or '-', starting with a letter "
                          "or digit. A job submitted again with the same id and payload is the same job.",
                          json_schema_extra={"pattern": VIDEO_ID_RE.pattern})
    persona: str = Field("papa_noel", description="Who speaks: a persona file (voice, language, default avatar).")
    text: str | None = Field(None, description="What the persona says (MAX_TEXT_CHARS). Give text or audio.")
    audio: str | None = Field(None, description="A speech file instead of text: a path every node can read.")
    avatar: str | None = Field(None, description="The base video: a bundled name, a name in AVATARS_DIR, or a "
                               "path; default the persona's.")
    strategy: Strategy = Field(Strategy.auto, description="auto: local lip-sync, then full-video APIs, then the "
                               "base video with the speech; or only one of them.")
    engine: Engine | None = Field(None, description="Pin the lip-sync engine; default LIPSYNC_ENGINE_ORDER.")
    webhook_url: str | None = Field(None, description="http(s) URL POSTed the final state (and progress).")
    idempotency_key: str | None = Field(None, description="Same key, same job (1 to 128 printable characters); "
                                        "without video_id it also names the job.",
                                        json_schema_extra={"maxLength": MAX_IDEMPOTENCY_KEY_CHARS})
    #: None is normal and keeps the canonical payload of jobs that name no priority what it was
    #: before lanes existed.
    priority: Priority | None = Field(None, description="Lane: rush is claimed first, bulk is never starved; "
                                      "default normal (node/lanes.py).")

    @field_validator("video_id")
    @classmethod
    def _video_id(cls, v: str) -> str:
        if not VIDEO_ID_RE.match(v):
            raise PydanticCustomError("invalid_video_id", "video_id '{value}' must be 1 to 64 letters, "
                                      "digits, '_' or '-', starting with a letter or digit",
                                      {"value": v[:80]})
        return v

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        if not v:
            raise PydanticCustomError("text_empty", "text is empty")
        limit = (info.context or {}).get("max_text_chars")
        if limit and len(v) > limit:
            raise PydanticCustomError("text_too_long", "text has {n} characters; the limit is {limit} "
                                      "(MAX_TEXT_CHARS)", {"n": len(v), "limit": limit})
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is not None:
            url = urlparse(v)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise PydanticCustomError("invalid_webhook_url", "webhook_url must be an http(s) URL")
        return v

    @field_validator("idempotency_key")
    @classmethod
    def _idempotency_key(cls, v: str | None) -> str | None:
        if v is not None and not (0 < len(v) <= MAX_IDEMPOTENCY_KEY_CHARS and v.isprintable()):
            raise PydanticCustomError("invalid_idempotency_key", "idempotency_key must be 1 to "
                                      f"{MAX_IDEMPOTENCY_KEY_CHARS} printable characters")
        return v

    @model_validator(mode="after")
    def _speech(self) -> "Job":
        if self.text is None and self.audio is None:
            raise PydanticCustomError("text_or_audio_required", "a job needs text or audio")
        if self.text is not None and self.audio is not None:
            raise PydanticCustomError("text_and_audio_exclusive", "give text or audio, not both")
        if self.engine is not None and self.strategy not in (Strategy.auto, Strategy.lipsync):
            raise PydanticCustomError("engine_needs_lipsync", "engine applies only to the lipsync "
                                      "strategy (strategy auto or lipsync)")
        return self


# pydantic's built-in error types for a field, mapped to our codes.
_FIELD_CODES = {"strategy": "invalid_strategy", "engine": "invalid_engine", "video_id": "invalid_video_id",
                "persona": "invalid_persona", "text": "invalid_text", "audio": "invalid_audio",
                "avatar": "invalid_avatar", "webhook_url": "invalid_webhook_url",
                "idempotency_key": "invalid_idempotency_key", "priority": "invalid_priority"}


# The codes our own validators raise (PydanticCustomError types).
_JOB_CODES = {"invalid_video_id", "text_empty", "text_too_long", "invalid_webhook_url",
              "invalid_idempotency_key", "text_or_audio_required", "text_and_audio_exclusive",
              "engine_needs_lipsync"}


def new_video_id() -> str:
    return f"vid_{secrets.token_hex(8)}"


def parse_job(data: dict[str, Any], *, max_text_chars: int | None = None) -> Job:
    """A validated Job, or InvalidInput(code, sentence) for the first problem found."""
    if not isinstance(data, dict):
        raise InvalidInput("invalid_job", "a job must be a JSON object")
    data = {k: v for k, v in data.items() if v is not None}
    data.setdefault("video_id", new_video_id())
    try:
        return Job.model_validate(data, context={"max_text_chars": max_text_chars})
    except ValidationError as e:
        raise _to_invalid_input(e) from None


def _to_invalid_input(e: ValidationError) -> InvalidInput:
    err = e.errors(include_url=False)[0]
    field = str(err["loc"][0]) if err.get("loc") else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        return InvalidInput("unknown_field", f"unknown field {field!r}")
    if kind == "missing":
        return InvalidInput("missing_field", f"field {field!r} is required")
    if kind not in _JOB_CODES:  # a pydantic built-in error (wrong type, bad enum value, ...)
        code = _FIELD_CODES.get(field, "invalid_field")
        return InvalidInput(code, f"{field}: {err['msg']}")
    return InvalidInput(kind, err["msg"])
