"""What every `lipsync-node` command shares: exit codes, settings loading, the error exit.

`node/cli.py` (render, health, avatars), `node/worker_cli.py` (worker) and `node/fleet_cli.py`
(submit, status, dlq, cleanup, metrics) import this module; none imports another's internals.
"""

from __future__ import annotations

import json

import typer
from pydantic import ValidationError

from node.config import Settings, get_settings
from node.logs import configure_logging

__all__ = ["EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "fail", "load_settings"]

#: 0 success; 1 the work failed (every strategy, or Redis unreachable); 2 invalid input.
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def load_settings() -> Settings:
    """The process's settings with logging configured; a bad setting exits 2 with its name."""
    try:
        settings = get_settings()
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = str(err["loc"][0]).upper() if err.get("loc") else "?"
        fail(EXIT_INVALID, "invalid_setting", f"{field}: {err['msg']}")
    configure_logging(settings.log_level, settings.use_json_logging)
    return settings


def fail(exit_code: int, code: str, message: str, as_json: bool = False, **extra) -> None:
    """Exit with `error: <code>: <sentence>` on stderr (and one JSON object on stdout with --json)."""
    if as_json:
        print(json.dumps({"status": "failed", "error": {"code": code, "message": message}, **extra}))
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)
