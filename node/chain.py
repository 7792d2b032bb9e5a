"""The strategy chain: which steps a job tries, in which order, and what each produces.

    1 lipsync     local engines (LIPSYNC_ENGINE_ORDER: musetalk, wav2lip) and the SyncLabs API
    2 full_video  Higgsfield, then HeyGen (FULL_VIDEO_PROVIDER_ORDER)
    3 base_video  the speech over the base video, looped forth and back: always succeeds

A step is skipped with a recorded reason when it cannot run here (no weights, no key, the
provider's circuit open), and a failure is recorded before the chain moves on. Steps produce either frames (local engines; the
pipeline encodes them as they come) or a finished file (remote APIs; the pipeline re-encodes it
to the output contract with our audio).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from node.avatars import BaseVideo
from node.config import Settings
from node.engines.base import LipSyncEngine, Speech
from node.errors import RenderFailed
from node.job import Job, Strategy
from node.media import iter_video_frames, probe
from node.personas import Persona
from providers import media as provider_media
from providers import metrics
from providers.base import FullVideoAPI, LipSyncAPI


@dataclass
class Attempt:
    stage: str  # tts | lipsync | full_video | base_video
    provider: str
    outcome: str  # skipped | failed | succeeded | interrupted
    code: str | None = None
    reason: str | None = None
    duration_s: float | None = None  # seconds; None for a skipped step

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class FrameRendition:
    """Frames to encode: `frame_count` frames of width x height at fps, in uint8 BGR batches."""

    width: int
    height: int
    fps: Fraction
    frame_count: int
    batches: Iterator[np.ndarray] = field(repr=False)
    report: dict = field(default_factory=dict)  # filled by the engine when its last batch is out


@dataclass(frozen=True)
class FileRendition:
    """A finished video from a remote API, re-encoded to the output contract by the pipeline."""

    path: Path
    note: str | None = None  # what happened on the way (retries, resumed generation), for attempts


@dataclass(frozen=True)
class StepInputs:
    job: Job
    base: BaseVideo
    speech: Speech
    frame_count: int
    batch_size: int
    workdir: Path
    persona: Persona | None = None  # the full-video providers animate the persona
    should_stop: Callable[[], bool] | None = None  # drain/lost lease: remote polling stops too


class Step(Protocol):
    stage: str
    name: str

    def unavailable_reason(self) -> str | None: ...

    def produce(self, inputs: StepInputs) -> FrameRendition | FileRendition: ...


class EngineStep:
    """Strategy 1 with a local engine."""

    stage = Strategy.lipsync.value

    def __init__(self, engine: LipSyncEngine, batch_size: int):
        self.engine, self.name, self.batch_size = engine, engine.name, batch_size

    def unavailable_reason(self) -> str | None:
        return self.engine.unavailable_reason()

    def produce(self, inputs: StepInputs) -> FrameRendition:
        base, report = inputs.base, {}
        batches = self.engine.frames(base, inputs.speech, inputs.frame_count, self.batch_size, report)
        return FrameRendition(base.width, base.height, base.fps, inputs.frame_count, batches, report)


class BaseVideoStep:
    """Strategy 3: the base video looped forth and back under the speech. Needs nothing."""

    stage, name = Strategy.base_video.value, "base_video"

    def unavailable_reason(self) -> str | None:
        return None

    def produce(self, inputs: StepInputs) -> FrameRendition:
        base, count = inputs.base, inputs.frame_count
        indices = base.pingpong_indices(count)
        batches = (base.take(indices[i:i + inputs.batch_size]) for i in range(0, count, inputs.batch_size))
        return FrameRendition(base.width, base.height, base.fps, count, batches)


class RemoteStep:
    """A provider name in the configuration that no client serves (a typo, or a provider that
    cannot do this strategy): always skipped, with the reason."""

    def __init__(self, stage: str, name: str, reason: str):
        self.stage, self.name, self._reason = stage, name, reason

    def unavailable_reason(self) -> str | None:
        return self._reason

    def produce(self, inputs: StepInputs) -> FileRendition:  # pragma: no cover - never available
        raise NotImplementedError(self.name)


class LipSyncApiStep:
    """Strategy 1 with a remote lip-sync API (SyncLabs): base video + speech -> a video file."""

    stage = Strategy.lipsync.value

    def __init__(self, client: LipSyncAPI):
        self.client, self.name = client, client.name

    def unavailable_reason(self) -> str | None:
        return self.client.unavailable_reason()

    def produce(self, inputs: StepInputs) -> FileRendition:
        video = provider_media.video_of(inputs.base.source.path, inputs.workdir / f"{self.name}-base.mp4",
                                        inputs.speech.duration_s)
        result = self.client.lipsync(video, inputs.speech.path, inputs.workdir / f"{self.name}-out.mp4",
                                     video_id=inputs.job.video_id, should_stop=inputs.should_stop)
        return FileRendition(result.path, result.note)


class FullVideoApiStep:
    """Strategy 2 with a full-video API (Higgsfield, HeyGen): a still of the persona's avatar +
    speech -> a video file."""

    stage = Strategy.full_video.value

    def __init__(self, client: FullVideoAPI):
        self.client, self.name = client, client.name

    def unavailable_reason(self) -> str | None:
        return self.client.unavailable_reason()

    def produce(self, inputs: StepInputs) -> FileRendition:
        portrait = provider_media.portrait_of(inputs.base.source.path, inputs.workdir / f"{self.name}-portrait.png")
        result = self.client.generate(inputs.persona, portrait, inputs.speech.path,
                                      inputs.workdir / f"{self.name}-out.mp4", video_id=inputs.job.video_id,
                                      should_stop=inputs.should_stop)
        return FileRendition(result.path, result.note)


def _remote_step(stage: str, name: str, remote: dict) -> Step:
    """The step for a configured provider name; the client itself says when it lacks its keys."""
    client = remote.get(name)
    if stage == Strategy.lipsync.value and isinstance(client, LipSyncAPI):
        return LipSyncApiStep(client)
    if stage == Strategy.full_video.value and isinstance(client, FullVideoAPI):
        return FullVideoApiStep(client)
    if client is None:
        return RemoteStep(stage, name, f"unknown provider {name!r} in the configuration")
    return RemoteStep(stage, name, f"{name} cannot serve the {stage} strategy")


def plan_steps(job: Job, settings: Settings, engines: dict[str, LipSyncEngine],
               remote: dict | None = None) -> list[Step]:
    """The ordered steps for `job`: `--strategy` picks strategies, `--engine` pins strategy 1.
    `remote`: provider name -> client (node.provider_set); built from settings when None."""
    if remote is None:
        from node.provider_set import build_providers  # clients connect lazily: this is cheap

        remote = build_providers(settings).remote
    strategies = ([Strategy.lipsync, Strategy.full_video, Strategy.base_video]
                  if job.strategy is Strategy.auto else [job.strategy])
    steps: list[Step] = []
    for strategy in strategies:
        if strategy is Strategy.lipsync:
            names = [job.engine.value] if job.engine else settings.lipsync_engines
            for name in names:
                if name in engines:
                    steps.append(EngineStep(engines[name], settings.batch_size_for(name)[0]))
                else:
                    steps.append(_remote_step(strategy.value, name, remote))
        elif strategy is Strategy.full_video:
            steps += [_remote_step(strategy.value, name, remote) for name in settings.full_video_providers]
        else:
            steps.append(BaseVideoStep())
    return steps


def observe_attempts(attempts: list[Attempt]) -> None:
    """Count every recorded step by strategy (stage), provider and outcome (metrics)."""
    for a in attempts:
        metrics.CHAIN_STEPS.labels(a.stage, a.provider, a.outcome).inc()


def frames_of_file(path: Path, frame_count: int) -> FrameRendition:
    """A provider's video as frames, padded with its last frame if shorter than the speech."""
    info = probe(path).video
    if info is None:
        raise RenderFailed(f"provider output {path.name} has no video stream", code="provider_bad_output")

    def batches():
        sent, last = 0, None
        for batch in iter_video_frames(path, info.width, info.height, fps=info.fps):
            batch = batch[: frame_count - sent]
            if len(batch):
                sent, last = sent + len(batch), batch[-1]
                yield batch
            if sent >= frame_count:
                return
        if last is None:
            raise RenderFailed(f"provider output {path.name} has no frames", code="provider_bad_output")
        while sent < frame_count:
            n = min(16, frame_count - sent)
            sent += n
            yield np.repeat(last[None], n, axis=0)

    return FrameRendition(info.width, info.height, info.fps, frame_count, batches())
