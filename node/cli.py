"""`lipsync-node` command line.

Exit codes: 0 success, 1 every strategy failed, 2 invalid input (code and sentence on stderr).
With `--json`, stdout carries exactly one JSON object and nothing else; logs go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from node import fleet_cli, worker_cli
from node.cli_common import EXIT_FAILED, EXIT_INVALID, fail, load_settings
from node.errors import Cancelled, InvalidInput, LipsyncError
from node.job import Engine, Strategy, parse_job

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-hosted render node for lip-synced talking-head videos.")


@app.command()
def render(
    persona: str = typer.Option("papa_noel", help="Persona name (a file in node/personas or PERSONAS_DIR)."),
    text: Optional[str] = typer.Option(None, help="What the persona says."),
    audio: Optional[str] = typer.Option(None, help="Use this speech instead of text-to-speech (a file, or an "
                                        "https:// or s3:// URL)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output MP4 (default OUTPUT_DIR/ID.mp4)."),
    avatar: Optional[str] = typer.Option(None, help="Bundled avatar name, a name in AVATARS_DIR, or a file."),
    strategy: Strategy = typer.Option(Strategy.auto, help="Which strategies to try."),
    engine: Optional[Engine] = typer.Option(None, help="Pin the lip-sync engine (strategy 1)."),
    video_id: Optional[str] = typer.Option(None, "--video-id", help="Job id (default: generated)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON result object on stdout."),
) -> None:
    """Render one video now, in this process."""
    settings = load_settings()
    request = {"video_id": video_id, "persona": persona, "text": text,
               "audio": audio, "avatar": avatar,
               "strategy": strategy.value, "engine": engine.value if engine else None}
    try:
        job = parse_job(request, max_text_chars=settings.max_text_chars)
    except InvalidInput as e:
        fail(EXIT_INVALID, e.code, e.message, as_json, video_id=video_id)

    from node.pipeline import Renderer  # heavy imports only once the input is known to be valid

    renderer = Renderer(settings)
    try:
        with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
            result = renderer.render(job, output, progress=progress)
    except InvalidInput as e:
        fail(EXIT_INVALID, e.code, e.message, as_json, video_id=job.video_id)
    except (LipsyncError, Cancelled) as e:
        fail(EXIT_FAILED, e.code, e.message, as_json, video_id=job.video_id)
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    elif result.status == "succeeded":
        typer.echo(f"{result.output}  ({result.strategy}/{_provider(result)}, "
                   f"{result.duration_s:.2f}s of video in {result.timings_s['total']:.2f}s)")
    if result.status != "succeeded":
        if not as_json:
            typer.echo(f"error: {result.error['code']}: {result.error['message']}", err=True)
        raise typer.Exit(EXIT_FAILED)


@app.command()
def health(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    local: bool = typer.Option(False, "--local", help="A node that only runs `render`: do not check Redis."),
    verify: bool = typer.Option(False, "--verify", help="Check every weight file's sha256 (slow), not only sizes."),
) -> None:
    """What this node can do: binaries, disk, Redis, weights, engines (with licences), providers,
    encoder. Exits 0 only when the node can render (1 when it cannot)."""
    settings = load_settings()
    from node.health import node_health

    report = node_health(settings, check_redis=not local, verify=verify)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="lipsync-node health")
        for col in ("component", "name", "ready", "detail", "licence"):
            table.add_column(col)
        for row in report["components"]:
            table.add_row(row["kind"], row["name"], "yes" if row["ready"] else "no",
                          row.get("reason") or "", row.get("licence") or "")
        Console().print(table)
        Console().print(f"encoder: {report['encoder']['codec']} ({report['encoder']['reason']})")
        Console().print("this node can render" if report["ready"] else "this node cannot render: see the rows marked no")
    if not report["ready"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def personas() -> None:
    """List the personas this node knows."""
    settings = load_settings()
    from node.personas import list_personas

    for name in list_personas(settings.personas_dir):
        typer.echo(name)


avatar_app = typer.Typer(help="Avatars: base videos prepared ahead of their first job.", no_args_is_help=True)
app.add_typer(avatar_app, name="avatar")


@avatar_app.command("prepare")
def avatar_prepare(
    path: Path = typer.Argument(..., help="A base video (or image) of the persona."),
    name: str = typer.Option(..., "--name", help="The avatar name jobs will use (--avatar NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Install PATH as avatar NAME in AVATARS_DIR and build the engines' caches now
    (decoded frames, face boxes, crops), so the first job on it skips all of that."""
    settings = load_settings()
    from node.pipeline import Renderer

    try:
        summary = Renderer(settings).prepare_avatar(path, name)
    except InvalidInput as e:
        fail(EXIT_INVALID, e.code, e.message, as_json)
    if as_json:
        print(json.dumps(summary))
        return
    typer.echo(f"{summary['name']}: {summary['path']} ({summary['width']}x{summary['height']}, "
               f"{summary['frames']} frames at {summary['fps']} fps)")
    for engine, state in summary["engines"].items():
        detail = f"{state['faceless_frames']} frames without a face" if state["prepared"] else state["reason"]
        typer.echo(f"  {engine}: {'prepared' if state['prepared'] else 'skipped'} ({detail})")


@avatar_app.command("list")
def avatar_list() -> None:
    """Bundled avatars and those in AVATARS_DIR."""
    settings = load_settings()
    from node.avatars import list_avatars

    for name, path in list_avatars(settings.avatars_dir):
        typer.echo(f"{name}\t{path}")


def _provider(result) -> str:
    return result.providers.get("lipsync") or result.providers.get("video") or "?"


class _progress_bar:
    """A rich progress bar on a TTY; a no-op callback otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self._bar, self._task = enabled, None, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        # stderr, like the logs: stdout stays for results
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task("frames", total=None)
        return self._update

    def _update(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- fleet commands (node/worker_cli.py, node/fleet_cli.py): worker, submit, status, dlq, cleanup, metrics ---------------------
app.command("worker")(worker_cli.worker)
app.command("submit")(fleet_cli.submit)
app.command("status")(fleet_cli.status)
app.command("cleanup")(fleet_cli.cleanup)
app.command("metrics")(fleet_cli.metrics)
app.command("api")(fleet_cli.api)
app.command("schema")(fleet_cli.schema)
app.command("migrate-keys")(fleet_cli.migrate_keys)
app.add_typer(fleet_cli.dlq_app, name="dlq")

if __name__ == "__main__":  # pragma: no cover
    app()
