"""Fleet fixtures: a real redis-server on a free loopback port, isolated queues, tiny jobs.

redis-server skips locally when it is absent and fails under CI=true (like `require_tool`).
One server serves the session; each test gets its own REDIS_KEY_PREFIX, so tests never see each
other's keys. Tests that restart Redis start their own server with AOF on.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from node.config import Settings
from node.queue import RedisQueue
from node.worker import Worker
from tests.conftest import REPO, make_speech, make_video, require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child on 127.0.0.1:port, data in `workdir`; restartable on the same port."""

    def __init__(self, workdir: Path, *, aof: bool = False, port: int | None = None, extra: tuple[str, ...] = ()):
        self.binary = require_tool("redis-server")
        self.workdir, self.aof, self.port, self.extra = workdir, aof, port or free_port(), list(extra)
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--protected-mode", "yes", "--loglevel", "warning", *self.extra]
        if self.aof:  # every write fsynced before the reply: a restart loses nothing acknowledged
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean shutdown: the AOF is complete
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_prefixes = itertools.count()


@pytest.fixture
def fleet_settings(settings: Settings, redis_server: RedisServer, tmp_path_factory) -> Settings:
    """The shared tmp-path settings, on the session's Redis under a prefix of this test's own.
    Queued jobs may name files anywhere under the session's temporary root (INPUTS_DIR) and post
    webhooks to loopback receivers (URL_ALLOWLIST)."""
    return settings.model_copy(update={
        "inputs_dir": tmp_path_factory.getbasetemp(), "url_allowlist": "127.0.0.1",
        "redis_url": redis_server.url, "redis_key_prefix": f"t{next(_prefixes)}-{uuid.uuid4().hex[:6]}:",
        "lipsync_engine_order": "mock", "job_lock_timeout": 2.0, "queue_block_ms": 100,
        "retry_base_delay_s": 0.05, "retry_max_delay_s": 0.2, "progress_interval_s": 0.05,
    })


@pytest.fixture
def queue(fleet_settings: Settings) -> RedisQueue:
    q = RedisQueue(fleet_settings)
    yield q
    q.client.close()


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 64x48 avatar and 0.3 s of speech: a render takes a few tenths of a second."""
    folder = tmp_path_factory.mktemp("media")
    return {"avatar": make_video(folder / "avatar.mp4", 64, 48, seconds=0.4),
            "speech": make_speech(folder / "speech.wav", seconds=0.3, bursts=[(0.05, 0.25)]),
            "long_speech": make_speech(folder / "long.wav", seconds=6.0, bursts=[(0.5, 5.5)])}


def job_request(media: dict[str, Path], video_id: str, *, speech: str = "speech", **extra) -> dict:
    return {"video_id": video_id, "audio": str(media[speech]), "avatar": str(media["avatar"]),
            "strategy": "lipsync", "engine": "mock", **extra}


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll until predicate() is truthy; fail the test (never hang) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class RunningWorker:
    """An in-process Worker that is always stopped at the end of the test."""

    def __init__(self, worker: Worker):
        self.worker = worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.worker.stop_now()
        assert self.worker.join(timeout_s), "worker threads did not stop"


@pytest.fixture
def start_worker(queue: RedisQueue, fleet_settings: Settings):
    """start_worker(render, **kwargs) -> Worker running in threads of this process."""
    running: list[RunningWorker] = []

    def start(render, settings: Settings | None = None, **kwargs) -> Worker:
        s = settings or fleet_settings
        q = queue if settings is None else RedisQueue(s)
        r = RunningWorker(Worker(q, s, render, **kwargs))
        running.append(r)
        return r.worker

    yield start
    for r in running:
        r.stop()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `lipsync-node worker` child process using `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_KEY_ID", "_KEY_SECRET"))}
    env.update(REDIS_URL=settings.redis_url, REDIS_KEY_PREFIX=settings.redis_key_prefix,
               OUTPUT_DIR=str(settings.output_dir), TEMP_DIR=str(settings.temp_dir),
               AVATAR_CACHE_DIR=str(settings.avatar_cache_dir), WEIGHTS_DIR=str(settings.weights_dir),
               ENABLE_MOCK_ENGINE="true", LIPSYNC_ENGINE_ORDER="mock", VIDEO_ENCODER="libx264",
               X264_PRESET="ultrafast", JOB_LOCK_TIMEOUT=str(settings.job_lock_timeout),
               QUEUE_BLOCK_MS=str(settings.queue_block_ms), PROGRESS_INTERVAL_S=str(settings.progress_interval_s),
               RETRY_BASE_DELAY_S=str(settings.retry_base_delay_s),
               RETRY_MAX_DELAY_S=str(settings.retry_max_delay_s), MAX_JOB_ATTEMPTS=str(settings.max_job_attempts),
               URL_ALLOWLIST=settings.url_allowlist, MODEL_CACHE_DIR=str(settings.model_cache_dir),
               PYTHONPATH=str(REPO))
    if settings.inputs_dir:
        env["INPUTS_DIR"] = str(settings.inputs_dir)
    env.update(extra)
    return env


def spawn_worker(settings: Settings, node_id: str, log_path: Path, **extra_env: str) -> subprocess.Popen:
    """A real `lipsync-node worker` process; the caller must kill it in a finally."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "node.cli", "worker", "--concurrency", "1",
                                 "--node-id", node_id], cwd=REPO, env=worker_env(settings, **extra_env),
                                stdout=log, stderr=log)
    finally:
        log.close()


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


# --- an S3-protocol server on loopback (moto's server mode) -----------------------------------------

BUCKET = "renders"
CANARY_SECRET = "s3-canary-secret-0b7e"


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer  # the dev extra; a missing one fails, never skips

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    yield f"http://127.0.0.1:{server._port}"
    server.stop()


@pytest.fixture
def s3_settings(fleet_settings, s3_endpoint, monkeypatch, tmp_path):
    """Fleet settings on S3, with canary credentials from the environment (boto3's chain)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "canary-akid", "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    bucket = f"{BUCKET}-{fleet_settings.redis_key_prefix.strip(':').lower()}"
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return fleet_settings.model_copy(update={"storage_type": "s3", "s3_bucket": bucket,
                                             "s3_endpoint_url": s3_endpoint, "s3_presign_ttl_s": 600})
