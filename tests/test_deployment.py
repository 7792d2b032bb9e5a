"""The compose file and the GPU image run a worker that drains safely and reports its health."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from node.config import Settings
from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yml"


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|m)", value).groups()
    return float(number) * (60 if unit == "m" else 1)


def test_compose_runs_workers_that_drain_and_report_readiness():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    # Redis keeps the queue across restarts
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    worker = services["worker"]
    # A worker, not a one-shot command, on a GPU
    assert worker["command"] == ["worker"]
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    # Stopped with SIGTERM and given longer than the drain (SHUTDOWN_TIMEOUT) before a kill
    assert worker["stop_signal"] == "SIGTERM"
    shutdown = float(worker["environment"].get("SHUTDOWN_TIMEOUT", Settings(_env_file=None).shutdown_timeout))
    assert _seconds(worker["stop_grace_period"]) > shutdown
    # Health on /readyz of the port the worker serves, Redis started first
    port = worker["environment"]["HEALTH_PORT"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # An S3-compatible store for local trials is optional, with its bucket made and no baked-in password
    assert services["minio"]["profiles"] == services["minio-bucket"]["profiles"] == ["s3"]
    assert "?" in services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    # Prometheus is optional and scrapes that same port
    assert services["prometheus"]["profiles"] == ["monitoring"]
    scrape = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["port"] == int(port) and scrape["dns_sd_configs"][0]["names"] == ["worker"]


def test_the_gpu_image_runs_a_worker_as_a_user_with_a_healthcheck():
    dockerfile = (REPO / "Dockerfile.cuda").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.replace("\\\n", " ").splitlines()
                    if line and not line.startswith("#")]
    by_name = {}
    for name, rest in instructions:
        by_name.setdefault(name, []).append(rest.strip())
    assert by_name["USER"] == ["lipsync"] and by_name["STOPSIGNAL"] == ["SIGTERM"]
    assert "/readyz" in by_name["HEALTHCHECK"][0] and by_name["CMD"][-1] == '["worker"]'
    assert '["/data"]' in by_name["VOLUME"]


def test_docker_compose_accepts_the_file_where_compose_is_installed():
    # The structure is checked above everywhere; where the compose plugin exists it checks too.
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if has_compose:
        proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    else:
        assert yaml.safe_load(COMPOSE.read_text())["services"]
