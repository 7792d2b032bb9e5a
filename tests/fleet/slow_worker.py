"""`python -m tests.fleet.slow_worker SECONDS_PER_BATCH NODE_ID`: the `worker` command's own
`run_worker` (signals, drain, exit code) around the real Renderer, each batch slowed down by its
progress callback, so a test can signal the node in the middle of a render."""

from __future__ import annotations

import sys
import time

from node.cli_common import load_settings
from node.worker_cli import run_worker
from node.pipeline import Renderer
from node.worker import renderer_render


def main() -> int:
    seconds_per_batch, node_id = float(sys.argv[1]), sys.argv[2]
    settings = load_settings()
    render = renderer_render(Renderer(settings))

    def slow_render(job, output, progress, should_stop):
        def slowed(done: int, total: int) -> None:
            time.sleep(seconds_per_batch)
            progress(done, total)
        return render(job, output, slowed, should_stop)

    return run_worker(settings, slow_render, concurrency=1, node_id=node_id)


if __name__ == "__main__":
    sys.exit(main())
