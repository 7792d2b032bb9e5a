"""Fleet commands: `worker`, `submit`, `status`, `dlq ...`, `cleanup` (registered in node/cli.py).

Exit codes follow `render`: 0 success, 1 failed (or Redis unreachable), 2 invalid input
(`error: <code>: <sentence>` on stderr). With `--json`, stdout carries exactly one JSON value.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from node.cli_common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, fail, load_settings
from node.errors import InvalidInput, LipsyncError
from node.job import Engine, Strategy
from node.lanes import Priority
from node.records import JobRecord, JobState, iso_ms

log = logging.getLogger(__name__)

#: seconds between status polls of `submit --wait`.
WAIT_POLL_S = 0.25

dlq_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="The dead-letter queue: failed and dead jobs with their error history.")


def _queue(settings):
    from node.queue import RedisQueue

    return RedisQueue(settings)


def _guard(fn, as_json: bool = False):
    """Run fn(); map our errors to the exit codes (Redis down = 1, bad input = 2)."""
    try:
        return fn()
    except InvalidInput as e:
        fail(EXIT_INVALID, e.code, e.message, as_json)
    except LipsyncError as e:
        fail(EXIT_FAILED, e.code, e.message, as_json)


# --- worker -----------------------------------------------------------------------------------------


def slot_renderers(settings, plan, generations=None, encoder=None) -> list:
    """One Renderer per device of the slot plan (node/slots.py), all sharing the process's one
    provider set: a provider's concurrency slots and circuit breaker are per process, whatever the
    number of GPUs. Every Renderer's encodes get the plan's x264 thread share."""
    from node.pipeline import Renderer
    from node.provider_set import build_providers

    providers = build_providers(settings, store=generations)
    return [Renderer(settings.model_copy(update={"torch_device": d, "x264_threads": plan.x264_threads}),
                     providers=providers, encoder=encoder) for d in plan.devices]


def run_worker(settings, render, *, concurrency: int, node_id: str | None = None, hooks=(),
               warm_up=None) -> int:
    """Run a worker until SIGTERM/SIGINT, then drain; returns the process exit code (0).

    With HEALTH_PORT (or METRICS_PORT) the node serves /healthz, /readyz and /metrics; `warm_up`
    (loading the models) runs on a thread while the node reports STARTING."""
    from node.queue import RedisQueue
    from node.redis_conn import redact_url
    from node.webhooks import WebhookSender
    from node.worker import Worker

    webhooks = WebhookSender(settings.webhook_secret, timeout_s=settings.webhook_timeout_s,
                             max_attempts=settings.webhook_max_attempts,
                             base_delay_s=settings.webhook_retry_base_delay_s)
    queue = RedisQueue(settings)
    hooks = list(hooks)
    port = settings.health_port or settings.metrics_port
    if port:
        from node.metrics import PrometheusHooks

        hooks.append(PrometheusHooks())
    worker = Worker(queue, settings, render, concurrency=concurrency, node_id=node_id,
                    hooks=hooks, webhooks=webhooks, models_ready=warm_up is None)
    if port:
        _serve_endpoints(settings, worker, queue, port)
    if warm_up is not None:
        threading.Thread(target=_warm, args=(warm_up, worker), name="warm-up", daemon=True).start()
    deadline_timer: list[threading.Timer] = []

    def on_signal(signum, _frame) -> None:
        if worker.draining:  # a second signal: stop at the next batch boundary
            worker.stop_now()
            return
        log.info("%s: draining (at most %.0fs, SHUTDOWN_TIMEOUT)", signal.Signals(signum).name,
                 settings.shutdown_timeout)
        worker.drain()
        timer = threading.Timer(settings.shutdown_timeout, worker.stop_now)
        timer.daemon = True
        timer.start()
        deadline_timer.append(timer)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("node %s on %s (prefix %s)", worker.node_id, redact_url(settings.redis_url), settings.redis_key_prefix)
    worker.start()
    while not worker.join(timeout=0.5):
        pass
    for timer in deadline_timer:
        timer.cancel()
    left = webhooks.close(timeout_s=10.0)
    if left:
        log.warning("%d webhook event(s) not delivered before exit", left)
    log.info("node %s stopped", worker.node_id)
    return EXIT_OK


def _serve_endpoints(settings, worker, queue, port: int) -> None:
    from prometheus_client import start_http_server

    from node.health_server import ReadinessChecks, serve_health

    serve_health(worker.status, ReadinessChecks(settings, queue.client.ping), port, queue=queue)
    if settings.metrics_port and settings.health_port and settings.metrics_port != settings.health_port:
        start_http_server(settings.metrics_port)  # metrics alone on their own port as before


def _warm(warm_up, worker) -> None:
    """Load the models, then report READY; a failure to load on the GPU makes the node DEFUNCT."""
    from node.node_state import is_device_fault

    try:
        warm_up()
    except Exception as e:  # noqa: BLE001 - an engine that cannot load is reported, the node goes on
        if is_device_fault(e):
            worker.status.mark_defunct(f"warm-up: {type(e).__name__}: {e}"[:300])
            worker.drain()
            return
        log.warning("warm-up: %s: %s (engines load on their first job)", type(e).__name__, e)
    worker.status.models_loaded()
    log.info("models loaded: %s", worker.status.state().value)


def warm_renderers(renderers) -> None:
    """Load every ready local engine of every Renderer (one per GPU), as the first job would."""
    for renderer in renderers:
        for engine in renderer.engines.values():
            if engine.unavailable_reason() is None and hasattr(engine, "load"):
                engine.load()


def worker(
    concurrency: Optional[int] = typer.Option(None, min=1, help="Jobs at once (default: RENDER_SLOTS, else derived from cores, GPUs and encoder)."),
    node_id: Optional[str] = typer.Option(None, "--node-id", help="Name in leases and attempts (default NODE_ID "
                                          "or hostname-pid)."),
) -> None:
    """Take jobs from REDIS_URL and render them until SIGTERM/SIGINT (then drain, exit 0)."""
    settings = load_settings()
    from node.queue import RedisGenerationStore
    from node.worker import renderer_render

    # Built once: models stay loaded for every job. Provider generation ids live on the job
    # record, so a retry on another node resumes a remote generation instead of paying twice.
    # The slot plan: several jobs per GPU while libx264 bounds the node, one Renderer per GPU.
    from node.encoder import choose_encoder
    from node.slots import available_cores, gpu_count, plan_slots

    encoder = choose_encoder(settings.video_encoder)
    plan = plan_slots(cores=available_cores(), gpus=gpu_count(), codec=encoder.codec,
                      torch_device=settings.torch_device, slots=concurrency or settings.render_slots,
                      x264_threads=settings.x264_threads)
    log.info("slots: %d on %s, x264 threads %s each (%s)", plan.slots, ", ".join(plan.devices),
             plan.x264_threads or "ffmpeg's default", plan.reason)
    renderers = slot_renderers(settings, plan, RedisGenerationStore(settings), encoder)
    log.info("encoder: %s (%s); batches: %s", encoder.codec, encoder.reason, renderers[0].batch_summary())
    render = [renderer_render(r) for r in renderers]
    raise typer.Exit(run_worker(settings, render, concurrency=plan.slots, node_id=node_id,
                                warm_up=lambda: warm_renderers(renderers)))


# --- submit and status ---------------------------------------------------------------------------------


def submit(
    persona: str = typer.Option("papa_noel", help="Persona name."),
    text: Optional[str] = typer.Option(None, help="What the persona says."),
    audio: Optional[Path] = typer.Option(None, help="Speech file instead of text (a path every node can read)."),
    avatar: Optional[str] = typer.Option(None, help="Bundled avatar name, a name in AVATARS_DIR, or a file."),
    strategy: Strategy = typer.Option(Strategy.auto, help="Which strategies to try."),
    engine: Optional[Engine] = typer.Option(None, help="Pin the lip-sync engine (strategy 1)."),
    video_id: Optional[str] = typer.Option(None, "--video-id", help="Job id (default: generated)."),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", help="Same key, same job."),
    webhook_url: Optional[str] = typer.Option(None, "--webhook-url", help="POSTed the final status."),
    priority: Optional[Priority] = typer.Option(None, help="Lane: rush is claimed first, bulk is never starved "
                                                "(default normal)."),
    wait: bool = typer.Option(False, "--wait", help="Block until the job ends; exit like `render`."),
    timeout: Optional[float] = typer.Option(None, help="With --wait: give up after this many seconds (exit 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Enqueue a job and print its id."""
    settings = load_settings()
    # paths are resolved here: the node that renders runs elsewhere (another cwd, maybe a shared mount)
    if avatar and Path(avatar).exists():
        avatar = str(Path(avatar).resolve())
    request = {"video_id": video_id, "persona": persona, "text": text,
               "audio": str(audio.resolve()) if audio else None, "avatar": avatar, "strategy": strategy.value, "engine": engine.value if engine else None,
               "webhook_url": webhook_url, "idempotency_key": idempotency_key,
               "priority": priority.value if priority else None}
    queue = _guard(lambda: _queue(settings), as_json)
    submitted = _guard(lambda: queue.submit(request), as_json)
    if not wait:
        if as_json:
            print(json.dumps({"video_id": submitted.video_id, "state": submitted.state, "created": submitted.created}))
        else:
            typer.echo(submitted.video_id)
        return
    if not as_json:
        typer.echo(submitted.video_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = _guard(lambda: queue.record(submitted.video_id), as_json)
        if record is None:
            fail(EXIT_FAILED, "job_not_found", f"job {submitted.video_id} disappeared (cleaned up?)", as_json)
        if record.terminal:
            break
        if deadline is not None and time.monotonic() > deadline:
            fail(EXIT_FAILED, "wait_timeout", f"job {submitted.video_id} is still {record.state.value} after "
                  f"{timeout:g}s", as_json, video_id=submitted.video_id)
        time.sleep(WAIT_POLL_S)
    if as_json:
        print(json.dumps(record.as_dict(), ensure_ascii=False))
    elif record.state is JobState.succeeded:
        typer.echo(f"{record.output}  (succeeded after {record.attempts} attempt(s))")
    if record.state is not JobState.succeeded:
        err = record.error or {"code": "failed", "message": "the job failed"}
        if not as_json:
            typer.echo(f"error: {err.get('code')}: {err.get('message')}", err=True)
        raise typer.Exit(EXIT_FAILED if err.get("retryable", True) else EXIT_INVALID)


def status(
    video_id: str = typer.Argument(..., help="The job's video_id."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """A job's state, progress (frames, fps, ETA), attempts and result."""
    settings = load_settings()
    record = _guard(lambda: _queue(settings).record(video_id), as_json)
    if record is None:
        fail(EXIT_INVALID, "job_not_found", f"no job {video_id!r} in this queue", as_json)
    if as_json:
        print(json.dumps(record.as_dict(), ensure_ascii=False))
    else:
        typer.echo(format_record(record, settings.max_job_attempts))


def format_record(r: JobRecord, max_attempts: int) -> str:
    lines = [f"video_id   {r.video_id}", f"state      {r.state.value} (attempts {r.attempts} of {max_attempts})",
             f"lane       {r.lane}"]
    if r.progress and r.state is JobState.running:
        p = r.progress
        eta = f", ETA {p['eta_s']:.1f}s" if p.get("eta_s") is not None else ""
        lines.append(f"progress   {p['done']}/{p['total']} frames, {p['fps']:.1f} fps{eta}")
    if r.lease_owner:
        lines.append(f"node       {r.lease_owner}")
    if r.next_attempt_ms:
        lines.append(f"next try   {iso_ms(r.next_attempt_ms)}")
    if r.output:
        lines.append(f"output     {r.output}")
    if r.error and r.state is not JobState.succeeded:
        lines.append(f"error      {r.error.get('code')}: {r.error.get('message')}")
    if r.entry_raw is not None:
        lines.append(f"entry      {r.entry_raw[:300]}")
    if r.history:
        lines.append("attempts")
        for a in r.history:
            end = iso_ms(a.ended_ms) or "..."
            code = f"  {a.error_code}" if a.error_code else ""
            lines.append(f"  #{a.token:<3} {a.node:<24} {iso_ms(a.started_ms)} -> {end}  {a.outcome}{code}")
    return "\n".join(lines)


# --- dlq ------------------------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """Failed and dead jobs, oldest first."""
    settings = load_settings()
    queue = _guard(lambda: _queue(settings), as_json)
    rows = []
    for vid, dead_ms in _guard(lambda: queue.index("dlq"), as_json):
        record = _guard(lambda: queue.record(vid), as_json)
        if record is not None:
            rows.append({"video_id": vid, "state": record.state.value, "since": iso_ms(dead_ms),
                         "attempts": len(record.history), "error": record.error})
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        err = row["error"] or {}
        typer.echo(f"{row['video_id']:<40} {row['state']:<7} {row['since']}  tries={row['attempts']}  "
                   f"{err.get('code')}: {str(err.get('message'))[:80]}")
    if not rows:
        typer.echo("the DLQ is empty", err=True)


@dlq_app.command("show")
def dlq_show(video_id: str = typer.Argument(...),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """One DLQ job with its full error history."""
    status(video_id, as_json)


@dlq_app.command("retry")
def dlq_retry(video_id: Optional[str] = typer.Argument(None),
              all_: bool = typer.Option(False, "--all", help="Retry every job in the DLQ.")) -> None:
    """Put a job (or all) back on the queue with its attempt count reset."""
    if bool(video_id) == all_:
        fail(EXIT_INVALID, "invalid_arguments", "give a video_id or --all")
    settings = load_settings()
    queue = _guard(lambda: _queue(settings))
    ids = [video_id] if video_id else [vid for vid, _ in _guard(lambda: queue.index("dlq"))]
    retried = 0
    for vid in ids:
        try:
            queue.dlq_retry(vid)
            retried += 1
            typer.echo(f"requeued {vid}")
        except InvalidInput as e:
            if not all_:
                fail(EXIT_INVALID, e.code, e.message)
            typer.echo(f"skipped {vid}: {e.code}: {e.message}", err=True)
        except LipsyncError as e:
            fail(EXIT_FAILED, e.code, e.message)
    if all_:
        typer.echo(f"{retried} job(s) requeued")


@dlq_app.command("purge")
def dlq_purge(older_than: str = typer.Option("0s", "--older-than", help="Only jobs dead-lettered longer ago "
                                             "than this: 7d, 12h, 30m, 45s.")) -> None:
    """Delete DLQ jobs (records and keys) for good."""
    try:
        age_s = parse_duration(older_than)
    except ValueError as e:
        fail(EXIT_INVALID, "invalid_duration", str(e))
    settings = load_settings()
    queue = _guard(lambda: _queue(settings))
    cutoff_ms = _guard(queue.server_time_ms) - int(age_s * 1000)
    purged = 0
    for vid, _ in _guard(lambda: queue.index("dlq", max_ms=cutoff_ms)):
        purged += _guard(lambda: queue.delete_job(vid, index="dlq", cutoff_ms=cutoff_ms, states=("failed", "dead")))
    typer.echo(f"{purged} job(s) purged")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """'7d' / '12h' / '30m' / '45s' / '90' (seconds) -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 30m or 45s")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


# --- cleanup --------------------------------------------------------------------------------------------


def cleanup(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would go."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """What the scheduled cleanup does, now: old temp files, orphaned outputs, old records, the stream."""
    settings = load_settings()
    from node.cleanup import run_cleanup

    report = _guard(lambda: run_cleanup(_queue(settings), settings, dry_run=dry_run), as_json)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    verb = "would delete" if dry_run else "deleted"
    for label, items in (("temp", report.temp_paths), ("orphan output", report.orphan_outputs),
                         ("job record", report.job_records), ("consumer", report.consumers)):
        for item in items:
            typer.echo(f"{verb} {label}: {item}")
    typer.echo(f"{verb} {len(report.temp_paths)} temp path(s), {len(report.orphan_outputs)} orphan output(s), "
               f"{len(report.job_records)} job record(s), {report.stream_entries} stream entr(ies), "
               f"{len(report.consumers)} consumer(s)")
