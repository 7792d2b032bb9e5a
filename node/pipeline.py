"""Render one job: validate media, make the speech, walk the strategy chain, encode.

`Renderer` is built once per process (engines keep their models loaded, the encoder is probed
once) and `render(job)` is called per job. Invalid input raises `InvalidInput`; everything else
ends in a `RenderResult`, succeeded or failed, with every attempt recorded.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from node.avatar_cache import AvatarCacheKeeper
from node.avatars import AVATAR_NAME_RE, BaseVideo, install_avatar_file, resolve_avatar, validate_video
from node.chain import (Attempt, EngineStep, FileRendition, FrameRendition, StepInputs, frames_of_file,
                        observe_attempts, plan_steps)
from node.config import Settings
from node.encoder import EncoderChoice, VideoEncoder, choose_encoder
from node.engines import LipSyncEngine, Speech, build_local_engines
from node.errors import Cancelled, InvalidInput, LipsyncError, MediaError, RenderFailed
from node.input_guard import is_url
from node.inputs import fetch_input
from node.job import Job, Strategy
from node.logs import debug_enabled, job_context
from node.media import decode_audio, probe, use_binaries
from node.personas import Persona, load_persona
from node.provider_set import Providers, build_providers
from node.sync import Candidate, SyncScoring, below_threshold, fix_offset, observe_sync
from providers.base import TextToSpeech

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (frames done, frames total)


@dataclass
class RenderResult:
    video_id: str
    status: str  # succeeded | failed
    output: str | None
    strategy: str | None
    providers: dict[str, str]
    duration_s: float | None
    attempts: list[Attempt]
    timings_s: dict[str, float]
    encoder: str | None = None
    error: dict[str, str] | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"video_id": self.video_id, "status": self.status, "output": self.output,
               "strategy": self.strategy, "providers": self.providers, "duration_s": self.duration_s,
               "attempts": [a.as_dict() for a in self.attempts], "timings_s": self.timings_s,
               "encoder": self.encoder}
        if self.error:
            out["error"] = self.error
        return out | self.extra


class Renderer:
    def __init__(self, settings: Settings, *, engines: dict[str, LipSyncEngine] | None = None,
                 tts: list[TextToSpeech] | None = None, encoder: EncoderChoice | None = None,
                 remote: dict | None = None, providers: Providers | None = None):
        self.settings = settings
        use_binaries(settings.ffmpeg_binary, settings.ffprobe_binary)
        self.engines = engines if engines is not None else build_local_engines(settings)
        # `providers`: the process's one set (its circuit breakers and concurrency slots span
        # jobs and GPUs); a worker passes it with generation ids on the Redis job record. A
        # Renderer alone builds its own, with ids in a file per job (PROVIDER_GENERATIONS_DIR).
        providers = providers or build_providers(settings)
        self.tts = tts if tts is not None else providers.tts  # [ElevenLabs via the audio cache,] espeak
        self.remote = remote if remote is not None else providers.remote
        self._encoder = encoder
        self.sync = SyncScoring(settings)
        self.avatars = AvatarCacheKeeper(settings)  # the fleet's avatar cache, and the local bound
        self._job = threading.local()  # the avatar this slot's job opened

    def batch_summary(self) -> str:
        """The one batch rule as it applies here, for the worker's start-up log."""
        engines = ", ".join(f"{name} {size} frames ({source})" for name in self.engines
                            for size, source in [self.settings.batch_size_for(name)])
        return (f"{engines}; other strategies {self.settings.lipsync_batch_size} frames (LIPSYNC_BATCH_SIZE); "
                "progress and the drain are checked after every batch")

    @property
    def encoder(self) -> EncoderChoice:
        if self._encoder is None:  # probed on first use, once per process
            self._encoder = choose_encoder(self.settings.video_encoder)
            log.info("video encoder: %s (%s)", self._encoder.codec, self._encoder.reason)
        return self._encoder

    def render(self, job: Job, output: Path | None = None, *, progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None) -> RenderResult:
        output = Path(output) if output else self.settings.output_dir / f"{job.video_id}.mp4"
        _check_writable(output)
        with job_context(job.video_id):
            workdir = self.settings.temp_dir / f"{job.video_id}-{uuid.uuid4().hex[:8]}"
            workdir.mkdir(parents=True, exist_ok=True)
            self._job.avatar_key, result = None, None
            try:
                result = self._render(job, output, workdir, progress, should_stop)
                return result
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
                if self._job.avatar_key:
                    self.avatars.finished(self._job.avatar_key, result is not None and result.status == "succeeded")

    def _render(self, job, output, workdir, progress, should_stop) -> RenderResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        attempts: list[Attempt] = []
        persona = load_persona(job.persona, self.settings.personas_dir, self.settings.environ())
        base = self._open_avatar(job.avatar or persona.avatar, workdir)
        self._job.avatar_key = base.key
        self.avatars.opened(base.key)
        speech = self._speech(job, persona, workdir, attempts, timings)
        frame_count = max(1, math.ceil(speech.duration_s * float(base.fps) - 1e-9))
        inputs = StepInputs(job, base, speech, frame_count, self.settings.lipsync_batch_size, workdir, persona,
                            should_stop)
        log.info("rendering %d frames at %s fps (%.2fs of speech from %s) on avatar %s",
                 frame_count, base.fps, speech.duration_s, speech.provider, base.source.name)

        candidates: list[Candidate] = []  # lip-synced outputs that scored below SYNC_MIN_CONFIDENCE
        for step in plan_steps(job, self.settings, self.engines, self.remote):
            if step.stage == Strategy.base_video.value and candidates:
                break  # the best lip-synced candidate wins over strategy 3
            reason = step.unavailable_reason()
            if reason:
                log.info("%s: skipped: %s", step.name, reason)
                attempts.append(Attempt(step.stage, step.name, "skipped", "unavailable", reason))
                continue
            t0, monitor = time.perf_counter(), None
            try:
                rendition = step.produce(inputs)
                monitor, sync = self._sync_monitor(step, base, speech, frame_count)
                stage_times = self._encode(rendition, speech, output, frame_count, progress, should_stop, monitor)
                if monitor is not None:  # waits for the scorer's last batch; counted as `sync`
                    t_sync = time.perf_counter()
                    sync = monitor.result()
                    stage_times["sync"] = round(stage_times["sync"] + time.perf_counter() - t_sync, 3)
            except Cancelled as e:
                attempts.append(Attempt(step.stage, step.name, "interrupted", e.code, e.message,
                                        round(time.perf_counter() - t0, 3)))
                raise
            except LipsyncError as e:
                self._record_failure(attempts, step, e.code, e.message, t0)
                continue
            except Exception as e:  # an engine bug must not take the chain down with it
                log.error("%s: unexpected %s", step.name, type(e).__name__, exc_info=debug_enabled())
                self._record_failure(attempts, step, "internal_error", f"{type(e).__name__}: {e}", t0)
                continue
            finally:
                if monitor is not None:
                    monitor.close()  # a failed or stopped step leaves no scoring thread behind
            done = Candidate(step.stage, step.name, output, stage_times, getattr(rendition, "report", None) or {},
                             sync, getattr(rendition, "note", None))
            observe_sync(done)
            low = below_threshold(sync, self.settings.sync_min_confidence)
            if low:
                done = done.keep_as_candidate(workdir / f"candidate-{len(candidates)}.mp4")
                candidates.append(done)
                self._record_failure(attempts, step, "low_sync_confidence", low, t0)
                continue
            attempts.append(Attempt(step.stage, step.name, "succeeded", reason=done.note,
                                    duration_s=round(time.perf_counter() - t0, 3)))
            return self._succeeded(job, done, speech, output, attempts, timings, started, frame_count)

        if candidates:
            best = max(candidates, key=lambda c: c.sync["confidence"])
            best.path.replace(output)
            log.warning("every lip-sync step scored below SYNC_MIN_CONFIDENCE; keeping the best, %s/%s",
                        best.stage, best.provider)
            return self._succeeded(job, replace(best, path=output), speech, output, attempts, timings, started,
                                   frame_count, fallback=f"every lip-synced output scored below SYNC_MIN_CONFIDENCE "
                                            f"({self.settings.sync_min_confidence:g}); the best, from "
                                            f"{best.provider} (confidence {best.sync['confidence']:.4f}), "
                                            "was kept over strategy 3")
        timings["total"] = round(time.perf_counter() - started, 3)
        log.error("all_strategies_failed: every step of the chain failed or was skipped")
        observe_attempts(attempts)
        return RenderResult(job.video_id, "failed", None, None, {"tts": speech.provider},
                            round(speech.duration_s, 3), attempts, timings, None,
                            {"code": "all_strategies_failed",
                             "message": "every strategy failed or was unavailable; see attempts"})

    def _succeeded(self, job: Job, done: Candidate, speech: Speech, output: Path, attempts: list[Attempt],
                   timings: dict[str, float], started: float, frame_count: int,
                   fallback: str | None = None) -> RenderResult:
        sync = fix_offset(done.sync, self.settings, output, speech)
        observe_attempts(attempts)
        timings |= done.stage_times
        if "avatar_prep_s" in done.report:  # inside the lipsync stage's time; also a stage of its own
            timings["avatar_prep"] = done.report["avatar_prep_s"]
        timings["total"] = round(time.perf_counter() - started, 3)
        kind = "lipsync" if done.stage == "lipsync" else "video"
        log.info("succeeded with %s/%s in %.2fs: %s", done.stage, done.provider, timings["total"], output)
        extra = {"frames": frame_count} | ({"lipsync_report": done.report} if done.report else {})
        if sync is not None:
            extra["sync"] = sync | ({"fallback": fallback} if fallback else {})
        return RenderResult(job.video_id, "succeeded", str(output), done.stage,
                            {"tts": speech.provider, kind: done.provider}, round(speech.duration_s, 3),
                            attempts, timings, self.encoder.codec, extra=extra)

    def _sync_monitor(self, step, base: BaseVideo, speech: Speech, frame_count: int):
        """(monitor, None) when this step's output is scored; (None, {skipped: why}) when it is a
        lip-synced step that cannot be; (None, None) for strategy 3."""
        if step.stage == Strategy.base_video.value:
            return None, None
        reason = self.sync.unavailable_reason()
        if reason:
            return None, {"skipped": reason}
        try:
            return self.sync.monitor(base, speech, frame_count, aligned=isinstance(step, EngineStep)), None
        except Exception as e:  # scoring must never cost a render
            log.warning("sync scoring unavailable: %s: %s", type(e).__name__, e, exc_info=debug_enabled())
            return None, {"skipped": f"scorer failed to start: {type(e).__name__}"}

    def prepare_avatar(self, path: Path, name: str) -> dict:
        """Install a base video as avatar `name` in AVATARS_DIR and build every ready engine's
        per-avatar cache now, so the first job on it starts rendering at once."""
        if not AVATAR_NAME_RE.match(name):
            raise InvalidInput("invalid_avatar_name", f"avatar name {name!r} must be 1 to 64 letters, digits, "
                               "'_' or '-', starting with a letter or digit")
        path = Path(path)
        if not path.is_file():
            raise InvalidInput("avatar_not_found", f"avatar file {path} does not exist")
        base = self._open_avatar(str(path))  # validates and decodes into the frame cache
        installed = install_avatar_file(path, Path(self.settings.avatars_dir), name)
        engines = {}
        for engine in self.engines.values():
            reason = engine.unavailable_reason()
            if not hasattr(engine, "prepare"):
                continue
            if reason:
                engines[engine.name] = {"prepared": False, "reason": reason}
                continue
            track = engine.prepare(base)
            engines[engine.name] = {"prepared": True, "faceless_frames": track.faceless_frames}
        return {"name": name, "path": str(installed), "frames": len(base), "fps": str(base.fps),
                "width": base.width, "height": base.height, "cache_key": base.key, "engines": engines}

    # --- inputs ------------------------------------------------------------------------------

    def _open_avatar(self, name: str, workdir: Path | None = None) -> BaseVideo:
        s = self.settings
        if is_url(name):  # fetched with the checks of node/inputs.py, then checked as any file
            name = str(fetch_input(name, workdir, "avatar", s))
        source = resolve_avatar(name, s.avatars_dir)
        try:
            info = probe(source.path)
        except MediaError as e:
            raise InvalidInput("avatar_unreadable", f"avatar {source.name} cannot be read: {e.message}") from e
        info = validate_video(info.video, source.name, s.max_video_side_px, s.min_video_fps, s.max_video_fps)
        try:
            return BaseVideo.open(source, info, s.avatar_cache_dir)
        except MediaError as e:
            raise InvalidInput("avatar_unreadable", f"avatar {source.name} cannot be decoded: {e.message}") from e

    def _speech(self, job: Job, persona: Persona, workdir: Path, attempts: list[Attempt],
                timings: dict[str, float]) -> Speech:
        t0 = time.perf_counter()
        if job.audio is not None:
            audio = fetch_input(job.audio, workdir, "audio", self.settings) if is_url(job.audio) else Path(job.audio)
            speech = self._load_speech(audio, "upload")
        else:
            speech = self._synthesize(job.text, persona, workdir, attempts)
        timings["tts"] = round(time.perf_counter() - t0, 3)
        return speech

    def _synthesize(self, text: str, persona: Persona, workdir: Path, attempts: list[Attempt]) -> Speech:
        for tts in self.tts:
            reason = tts.unavailable_reason()
            if reason:
                log.info("tts %s: skipped: %s", tts.name, reason)
                attempts.append(Attempt("tts", tts.name, "skipped", "unavailable", reason))
                continue
            t0 = time.perf_counter()
            try:
                spoken = tts.synthesize(text, persona, workdir)
                speech = self._load_speech(spoken.path, spoken.provider)
            except LipsyncError as e:
                log.warning("tts %s: failed: %s", tts.name, e)
                attempts.append(Attempt("tts", tts.name, "failed", e.code, e.message,
                                        round(time.perf_counter() - t0, 3)))
                continue
            except Exception as e:  # a remote TTS bug must not cost the job its offline fallback
                log.error("tts %s: unexpected %s", tts.name, type(e).__name__, exc_info=debug_enabled())
                attempts.append(Attempt("tts", tts.name, "failed", "internal_error", type(e).__name__,
                                        round(time.perf_counter() - t0, 3)))
                continue
            attempts.append(Attempt("tts", tts.name, "succeeded", reason=spoken.note,
                                    duration_s=round(time.perf_counter() - t0, 3)))
            return speech
        raise RenderFailed("no text-to-speech provider produced audio; see attempts", code="tts_failed")

    def _load_speech(self, path: Path, provider: str) -> Speech:
        limit = self.settings.max_audio_seconds
        try:
            info = probe(path)
            if info.audio_duration_s is None:
                raise MediaError(f"{path.name} has no audio stream", code="audio_unreadable")
            if info.audio_duration_s > limit + 1:  # checked before decoding a huge file
                raise InvalidInput("audio_too_long", f"audio is {info.audio_duration_s:.1f}s; the limit is "
                                   f"{limit:g}s (MAX_AUDIO_SECONDS)")
            samples = decode_audio(path, Speech.SAMPLE_RATE)
        except MediaError as e:
            raise InvalidInput("audio_unreadable", f"audio cannot be read: {e.message}") from e
        duration = len(samples) / Speech.SAMPLE_RATE
        if duration > limit:
            raise InvalidInput("audio_too_long", f"audio is {duration:.1f}s; the limit is {limit:g}s "
                               "(MAX_AUDIO_SECONDS)")
        if duration < 0.05 or not np.any(np.abs(samples) > 1e-4):
            raise InvalidInput("audio_empty", "audio is silent or shorter than 50 ms")
        return Speech(path, samples, duration, provider)

    # --- output --------------------------------------------------------------------------------

    def _encode(self, rendition: FrameRendition | FileRendition, speech: Speech, output: Path,
                frame_count: int, progress: Progress | None, should_stop, monitor=None) -> dict[str, float]:
        if isinstance(rendition, FileRendition):
            rendition = frames_of_file(rendition.path, frame_count)
        s = self.settings
        encoder = VideoEncoder(output, rendition.width, rendition.height, rendition.fps, speech.path,
                               speech.duration_s, codec=self.encoder.codec, crf=s.video_crf,
                               preset=s.x264_preset, threads=s.x264_threads,
                               audio_bitrate_kbps=s.audio_bitrate_kbps)
        produce_s = sync_s = 0.0
        with encoder:
            batches = iter(rendition.batches)
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                produce_s += time.perf_counter() - t0
                if batch is None:
                    break
                encoder.write(batch)
                if monitor is not None:  # scored on its own thread while the next batch is made
                    t0 = time.perf_counter()
                    monitor.add(batch)
                    sync_s += time.perf_counter() - t0
                if progress:
                    progress(min(encoder.frames_written, frame_count), frame_count)
                if should_stop and should_stop():  # a batch boundary: the drain point
                    raise Cancelled(f"stopped after {encoder.frames_written} of {frame_count} frames")
            if encoder.frames_written != rendition.frame_count:
                raise RenderFailed(f"produced {encoder.frames_written} frames, expected "
                                   f"{rendition.frame_count}", code="frame_count_mismatch")
            encoder.close()
        times = {"lipsync": round(produce_s, 3), "encode": round(encoder.blocked_s, 3)}
        return times | ({"sync": round(sync_s, 3)} if monitor is not None else {})

    @staticmethod
    def _record_failure(attempts: list[Attempt], step, code: str, message: str, t0: float) -> None:
        log.warning("%s: failed: %s: %s", step.name, code, message)
        attempts.append(Attempt(step.stage, step.name, "failed", code, message,
                                round(time.perf_counter() - t0, 3)))


def _check_writable(output: Path) -> None:
    """Fail before any work when the output cannot be written (a wrong -o is the user's input)."""
    if output.is_dir():
        raise InvalidInput("output_not_writable", f"output {output} is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInput("output_not_writable", f"cannot create {output.parent}: {e.strerror}") from e
    if not os.access(output.parent, os.W_OK):
        raise InvalidInput("output_not_writable", f"{output.parent} is not writable")
