"""What `status` and the DLQ show: a job record read back from its Redis hash.

The hash is written only by the Lua scripts in node/lua/ (see node/queue.py for the key schema);
this module turns it into typed values and the one JSON shape `status --json` prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class JobState(str, Enum):
    queued = "queued"        # on the stream, waiting for a node
    running = "running"      # a node holds its lease (and the current fencing token)
    retrying = "retrying"    # failed transiently; in the delayed set until its next attempt is due
    succeeded = "succeeded"  # output committed by the holder of the current token
    failed = "failed"        # transient errors used up MAX_JOB_ATTEMPTS; in the DLQ
    dead = "dead"            # a permanent error (invalid input, malformed entry); in the DLQ at once


#: States a job never leaves on its own (only `dlq retry` moves failed/dead ones back).
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.dead})


@dataclass(frozen=True)
class AttemptRecord:
    """One claim of the job by a node: when, where, and how it ended."""

    token: int
    node: str
    started_ms: int | None
    ended_ms: int | None
    outcome: str  # running | succeeded | failed | released | lease_expired
    error_code: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"], out["ended_at"] = iso_ms(self.started_ms), iso_ms(self.ended_ms)
        return out


@dataclass(frozen=True)
class JobRecord:
    video_id: str
    state: JobState
    attempts: int  # attempts that counted (a drain release does not)
    token: int  # the current fencing token (0 = never claimed)
    created_ms: int | None
    updated_ms: int | None
    finished_ms: int | None
    next_attempt_ms: int | None
    lease_owner: str | None
    progress: dict | None  # {done, total, fps, eta_s}
    result: dict | None
    error: dict | None  # {code, message, retryable}
    history: tuple[AttemptRecord, ...]
    job: dict | None  # the submitted job (None for a malformed entry)
    entry_raw: str | None  # a malformed entry as received, truncated
    committed_token: int | None
    lane: str = "normal"  # rush | normal | bulk (node/lanes.py); records from before lanes: normal

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> "JobRecord":
        history = []
        for key, value in h.items():
            if key.startswith("attempt:"):
                a = _json(value) or {}
                history.append(AttemptRecord(int(a.get("token") or key.split(":", 1)[1]), a.get("node", "?"),
                                             a.get("started_ms"), a.get("ended_ms"), a.get("outcome", "?"),
                                             a.get("error_code"), a.get("message")))
        history.sort(key=lambda a: a.token)
        return cls(
            video_id=h["video_id"], state=JobState(h["state"]), attempts=int(h.get("attempts") or 0),
            token=int(h.get("token") or 0), created_ms=_int(h.get("created_ms")),
            updated_ms=_int(h.get("updated_ms")), finished_ms=_int(h.get("finished_ms")),
            next_attempt_ms=_int(h.get("next_attempt_ms")), lease_owner=h.get("lease_owner") or None,
            progress=_json(h.get("progress")), result=_json(h.get("result")), error=_json(h.get("error")),
            history=tuple(history), job=_json(h.get("payload")), entry_raw=h.get("entry_raw"),
            committed_token=_int(h.get("committed_token")), lane=h.get("lane") or "normal",
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def output(self) -> str | None:
        return (self.result or {}).get("output")

    def as_dict(self) -> dict[str, Any]:
        """The `status --json` object."""
        out = {"video_id": self.video_id, "state": self.state.value, "lane": self.lane, "attempts": self.attempts,
               "token": self.token, "created_at": iso_ms(self.created_ms),
               "updated_at": iso_ms(self.updated_ms), "finished_at": iso_ms(self.finished_ms),
               "next_attempt_at": iso_ms(self.next_attempt_ms), "node": self.lease_owner,
               "progress": self.progress, "history": [a.as_dict() for a in self.history],
               "output": self.output, "result": self.result, "error": self.error, "job": self.job}
        if self.entry_raw is not None:
            out["entry_raw"] = self.entry_raw
        return out


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds (Redis TIME) as an ISO 8601 UTC string."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "", "0") else None


def _json(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None
