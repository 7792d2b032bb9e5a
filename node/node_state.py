"""The node's state, as Cog names its health states, and what liveness and readiness mean here.

    STARTING  the process is up, its models are still loading
    READY     it can take a job now (a slot is free)
    BUSY      every slot is rendering
    DRAINING  SIGTERM/SIGINT: no new claims, running jobs finish
    DEFUNCT   it cannot render again without a restart: a GPU fault (a CUDA error leaves the
              context unusable) or a loop that stopped ticking

Liveness (`/healthz`) fails only when DEFUNCT, so an orchestrator restarts the process; readiness
(`/readyz`) holds only when READY and the node's dependencies answer (node/health_server.py).
Every worker loop ticks on each pass, and a rendering slot on each rendered batch. A loop silent
for longer than LOOP_STALL_TIMEOUT_S is wedged; a slot inside a job gets RENDER_STALL_TIMEOUT_S,
since speech synthesis or a new avatar's preparation may legitimately take minutes before the
first batch.
"""

from __future__ import annotations

import threading
import time
from enum import Enum
from typing import Callable


class NodeState(str, Enum):
    starting = "STARTING"
    ready = "READY"
    busy = "BUSY"
    draining = "DRAINING"
    defunct = "DEFUNCT"


#: Words in an exception that mean the GPU context is gone: after one of these every later CUDA
#: call fails too (an out-of-memory error is not among them: the next job may fit).
DEVICE_FAULT_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error",
                        "CUDA driver", "NVML")


def is_device_fault(exc: BaseException) -> bool:
    """Whether an exception out of a render means this process can no longer use its GPU."""
    text = f"{type(exc).__name__}: {exc}"
    return "OutOfMemory" not in text and any(marker in text for marker in DEVICE_FAULT_MARKERS)


class NodeStatus:
    """What the worker tells the health endpoints: thread-safe, cheap to read on every probe."""

    def __init__(self, slots: int, *, stall_timeout_s: float, render_stall_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.slots, self.stall_timeout_s, self._clock = slots, stall_timeout_s, clock
        self.render_stall_timeout_s = max(stall_timeout_s, render_stall_timeout_s or stall_timeout_s)
        self._lock = threading.Lock()
        self._busy = 0
        self._rendering: set[str] = set()  # loops inside a job
        self._ready = False
        self._draining = False
        self._defunct: str | None = None
        self._ticks: dict[str, float] = {}

    # --- written by the worker ------------------------------------------------------------------

    def models_loaded(self) -> None:
        self._ready = True

    def tick(self, loop: str) -> None:
        self._ticks[loop] = self._clock()

    def loop_ended(self, loop: str) -> None:
        self._ticks.pop(loop, None)

    def job_started(self, loop: str) -> None:
        with self._lock:
            self._busy += 1
            self._rendering.add(loop)
        self.tick(loop)

    def job_ended(self, loop: str) -> None:
        with self._lock:
            self._busy -= 1
            self._rendering.discard(loop)
        self.tick(loop)

    def drain(self) -> None:
        self._draining = True

    def mark_defunct(self, reason: str) -> None:
        if self._defunct is None:
            self._defunct = reason

    # --- read by the endpoints and metrics ------------------------------------------------------

    @property
    def busy(self) -> int:
        return self._busy

    def defunct_reason(self) -> str | None:
        if self._defunct:
            return self._defunct
        now = self._clock()
        rendering = set(self._rendering)
        stalled = sorted(loop for loop, at in list(self._ticks.items())
                         if now - at > (self.render_stall_timeout_s if loop in rendering else self.stall_timeout_s))
        if stalled:
            return f"loop(s) {', '.join(stalled)} silent for too long (LOOP_STALL_TIMEOUT_S, RENDER_STALL_TIMEOUT_S)"
        return None

    def state(self) -> NodeState:
        if self.defunct_reason():
            return NodeState.defunct
        if self._draining:
            return NodeState.draining
        if not self._ready:
            return NodeState.starting
        return NodeState.busy if self._busy >= self.slots else NodeState.ready

    def as_dict(self) -> dict:
        return {"state": self.state().value, "slots": self.slots, "busy": self._busy,
                "defunct_reason": self.defunct_reason()}
