"""Errors with a stable `code` (what clients and the DLQ match on) and a `retryable` flag.

    LipsyncError                   code, retryable, message (never contains a secret)
    ├── InvalidInput               bad job field or unusable media; never retried
    │   ├── JobConflict            idempotency_conflict: the id or key names another payload
    │   └── JobNotFound            job_not_found
    ├── Unavailable                an engine/provider cannot run here (no weights, no key): skip it
    ├── RenderFailed               an engine/provider ran and failed; the chain moves on
    │   ├── MediaError             ffmpeg/ffprobe failed on something we produced
    │   └── ProviderError          a remote provider call failed (providers/ raise it; it also
    │                              says whether the provider was at fault, for its circuit breaker)
    ├── AllStrategiesFailed        nothing in the chain produced a video
    ├── BrokerError                Redis answered with an error we did not expect
    │   └── QueueUnavailable       Redis cannot be reached now (retryable)
    └── Cancelled                  stopped at a batch boundary (drain, lost lease): requeue it

Lower-layer errors (subprocess, httpx, redis) are translated where they happen, `raise ... from e`.
One tree for the node and its providers: the pipeline catches `LipsyncError` and nothing else.
"""

from __future__ import annotations


class LipsyncError(Exception):
    code: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(LipsyncError):
    """The job itself is wrong; retrying cannot help."""

    code = "invalid_input"
    retryable = False

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class Unavailable(LipsyncError):
    """An engine or provider is not set up on this node (weights, keys, code): skipped."""

    code = "unavailable"


class RenderFailed(LipsyncError):
    """An engine or provider tried and failed."""

    code = "render_failed"
    retryable = True


class MediaError(RenderFailed):
    code = "media_error"


class ProviderError(RenderFailed):
    """A provider call failed; `code` is stable, the message never contains a secret.

    `retryable`: a later attempt of the job may succeed. `provider_fault`: the provider (not the
    job's input, not our own stop) failed, so the failure counts towards opening its circuit."""

    code = "provider_error"

    def __init__(self, code: str, message: str, *, retryable: bool = True, provider_fault: bool = True):
        super().__init__(message, code=code, retryable=retryable)
        self.provider_fault = provider_fault


class AllStrategiesFailed(LipsyncError):
    code = "all_strategies_failed"
    retryable = True


class Cancelled(LipsyncError):
    """The render was stopped at a batch boundary (drain, lost lease); not a failure of the job."""

    code = "cancelled"
    retryable = True


class BrokerError(LipsyncError):
    code = "broker_error"


class QueueUnavailable(BrokerError):
    code = "queue_unavailable"
    retryable = True


class JobConflict(InvalidInput):
    def __init__(self, message: str):
        super().__init__("idempotency_conflict", message)


class JobNotFound(InvalidInput):
    def __init__(self, video_id: str):
        super().__init__("job_not_found", f"no job {video_id!r} in this queue")
