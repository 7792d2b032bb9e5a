"""The `worker` command: the slot plan, one Renderer per GPU, the health endpoints, the drain.

Exit code 0 after a drain (SIGTERM/SIGINT); a second signal or SHUTDOWN_TIMEOUT stops running jobs
at their next batch boundary and requeues them.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import typer

from node.cli_common import EXIT_OK, load_settings

log = logging.getLogger(__name__)


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
    from node.input_guard import Allowlist
    from node.metrics import PrometheusHooks
    from node.queue import RedisQueue
    from node.redis_conn import redact_url
    from node.webhooks import WebhookSender
    from node.worker import Worker, default_node_id

    webhooks = WebhookSender(settings.webhook_secret, timeout_s=settings.webhook_timeout_s,
                             max_attempts=settings.webhook_max_attempts,
                             base_delay_s=settings.webhook_retry_base_delay_s,
                             allowlist=Allowlist.parse(settings.url_allowlist))
    queue = RedisQueue(settings)
    node_id = node_id or settings.node_id or default_node_id()
    hooks = list(hooks)
    port = settings.health_port or settings.metrics_port
    if port:
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
    # Built once: models stay loaded for every job. Provider generation ids live on the job
    # record, so a retry on another node resumes a remote generation instead of paying twice.
    # The slot plan: several jobs per GPU while libx264 bounds the node, one Renderer per GPU.
    from node.encoder import choose_encoder
    from node.generations import RedisGenerationStore
    from node.slots import available_cores, gpu_count, plan_slots
    from node.worker import renderer_render

    encoder = choose_encoder(settings.video_encoder)
    plan = plan_slots(cores=available_cores(), gpus=gpu_count(), codec=encoder.codec,
                      torch_device=settings.torch_device, slots=concurrency or settings.render_slots,
                      x264_threads=settings.x264_threads)
    log.info("slots: %d on %s, x264 threads %s each (%s)", plan.slots, ", ".join(plan.devices),
             plan.x264_threads or "ffmpeg's default", plan.reason)
    if plan.torch_threads:  # process-wide: the slots' model calls then share the cores evenly
        import torch

        torch.set_num_threads(plan.torch_threads)
    renderers = slot_renderers(settings, plan, RedisGenerationStore(settings), encoder)
    log.info("encoder: %s (%s); batches: %s", encoder.codec, encoder.reason, renderers[0].batch_summary())
    render = [renderer_render(r) for r in renderers]
    raise typer.Exit(run_worker(settings, render, concurrency=plan.slots, node_id=node_id,
                                warm_up=lambda: warm_renderers(renderers)))
