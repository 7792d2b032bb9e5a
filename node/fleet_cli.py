"""Fleet client commands: `submit`, `status`, `dlq ...`, `cleanup`, `metrics` (registered in
node/cli.py; the `worker` process is node/worker_cli.py).

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

from node.cli_common import EXIT_FAILED, EXIT_INVALID, fail, load_settings
from node.errors import InvalidInput, LipsyncError
from node.input_guard import is_url
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


# --- submit and status ---------------------------------------------------------------------------------


def submit(
    persona: str = typer.Option("papa_noel", help="Persona name."),
    text: Optional[str] = typer.Option(None, help="What the persona says."),
    audio: Optional[str] = typer.Option(None, help="Speech instead of text: an https:// or s3:// URL, or a "
                                        "path inside INPUTS_DIR (or AVATARS_DIR) on every node."),
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
    if audio and not is_url(audio):
        audio = str(Path(audio).resolve())
    request = {"video_id": video_id, "persona": persona, "text": text,
               "audio": audio, "avatar": avatar, "strategy": strategy.value, "engine": engine.value if engine else None,
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
    from node.storage import build_store, with_output_url

    shown = _guard(lambda: with_output_url(record.as_dict(), build_store(settings)), as_json)
    if as_json:
        print(json.dumps(shown, ensure_ascii=False))
    else:
        typer.echo(format_record(record, settings.max_job_attempts))
        if shown.get("output_url"):
            typer.echo(f"output url {shown['output_url']}")


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


# --- metrics ---------------------------------------------------------------------------------------


def metrics(window: str = typer.Option("1h", "--window", help="How far back: 7d, 12h, 30m, 45s."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout.")) -> None:
    """The fleet over a window, from Redis: per-stage p50/p95, strategies and providers, success
    and failure rates, renders per node, queue depth and the backlog in seconds."""
    try:
        window_s = parse_duration(window)
    except ValueError as e:
        fail(EXIT_INVALID, "invalid_duration", str(e), as_json)
    settings = load_settings()
    from node.fleet_stats import summary

    queue = _guard(lambda: _queue(settings), as_json)
    report = _guard(lambda: summary(queue, window_s), as_json)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
        return
    rate = "n/a" if report["success_rate"] is None else f"{100 * report['success_rate']:.1f}%"
    lines = [f"last {window}: {report['renders']} renders, {rate} succeeded, "
             f"{report['speech_s']:.0f} s of video",
             "outcomes   " + _pairs(report["outcomes"]),
             "strategies " + _pairs(report["strategies"]),
             "providers  " + _pairs(report["providers"]),
             "per node   " + _pairs(report["per_node"])]
    for stage, p in report["stage_s"].items():
        lines.append(f"{stage:<10} p50 {p['p50']:.2f}s  p95 {p['p95']:.2f}s  (n={p['n']})")
    lines.append("queue      " + _pairs(report["queue"]))
    b = report["backlog"]
    lines.append(f"backlog    {b['backlog_seconds']:.0f} s ({b['queued_jobs']} jobs, ~{b['queued_speech_s']:.0f} s of "
                 f"speech, {b['live_slots']} live slots at {b['slot_speed']:.2f} s of video per second each)")
    typer.echo("\n".join(lines))


def _pairs(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


# --- api and schema --------------------------------------------------------------------------------


def api() -> None:
    """Serve POST /v1/jobs and GET /v1/jobs/{id} on API_HOST:API_PORT for clients that cannot reach
    Redis (bearer token API_TOKEN; never without one). Runs until SIGTERM/SIGINT."""
    settings = load_settings()
    from node.api import serve_api

    token = settings.api_token.get_secret_value() if settings.api_token else ""
    server = _guard(lambda: serve_api(_queue(settings), token, settings.api_port, settings.api_host))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


def schema() -> None:
    """Print the JSON Schema of a job (a stream entry's payload, a POST /v1/jobs body)."""
    from node.entries import SCHEMA_PATH

    typer.echo(SCHEMA_PATH.read_text(), nl=False)


def migrate_keys(dry_run: bool = typer.Option(False, "--dry-run", help="Only list the keys that would move."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Move this fleet's keys to their hash-tagged names (once, after upgrading, fleet stopped)."""
    settings = load_settings()
    from node.migrate import migrate_keys as migrate

    queue = _guard(lambda: _queue(settings), as_json)
    moved = _guard(lambda: migrate(queue.client, settings.redis_key_prefix, dry_run=dry_run), as_json)
    if as_json:
        print(json.dumps({"dry_run": dry_run, "moved": len(moved), "keys": [new for _, new in moved]}))
    else:
        typer.echo(f"{len(moved)} key(s) {'would move' if dry_run else 'moved'} to the hash-tagged names")
