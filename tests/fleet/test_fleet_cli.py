"""`submit`, `status`, `dlq`, `cleanup` as a user runs them: real processes, exit codes, one JSON
object on stdout. A worker with the real renderer runs in this test process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.pipeline import Renderer
from node.worker import renderer_render
from tests.conftest import REPO, ffprobe_json
from node.records import JobState
from tests.fleet.conftest import wait_for, worker_env


@pytest.fixture
def cli(fleet_settings, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=worker_env(fleet_settings), timeout=120)
    return run


@pytest.fixture
def running_worker(fleet_settings, start_worker):
    return start_worker(renderer_render(Renderer(fleet_settings)))


def test_submit_wait_exits_like_render(cli, media, running_worker, ffprobe):
    # Given a running node, when a job is submitted with --wait --json
    proc = cli("submit", "--audio", str(media["speech"]), "--avatar", str(media["avatar"]), "--strategy",
               "lipsync", "--engine", "mock", "--video-id", "cli-ok", "--priority", "rush", "--wait", "--json")
    # Then it exits 0 with one JSON object: the finished job
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["video_id"] == "cli-ok" and result["state"] == "succeeded" and result["lane"] == "rush"
    assert float(ffprobe_json(Path(result["output"]))["format"]["duration"]) == pytest.approx(0.3, abs=0.05)
    assert [a["outcome"] for a in result["history"]] == ["succeeded"]
    # and `status` reports the same job
    status = cli("status", "cli-ok", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["output"] == result["output"]
    human = cli("status", "cli-ok")
    assert "state      succeeded (attempts 1 of 3)" in human.stdout and result["output"] in human.stdout
    assert "lane       rush" in human.stdout


def test_submit_rejects_invalid_input_and_conflicts_with_exit_2(cli, media):
    proc = cli("submit", "--text", "", "--video-id", "cli-empty")
    assert proc.returncode == 2 and proc.stderr.startswith("error: text_empty: ")
    first = cli("submit", "--text", "hola", "--video-id", "cli-twice")
    again = cli("submit", "--text", "hola", "--video-id", "cli-twice", "--json")
    other = cli("submit", "--text", "adiós", "--video-id", "cli-twice")
    assert first.returncode == 0 and first.stdout.strip() == "cli-twice"
    assert json.loads(again.stdout) == {"video_id": "cli-twice", "state": "queued", "created": False}
    assert other.returncode == 2 and "error: idempotency_conflict: " in other.stderr
    lane = cli("submit", "--text", "hola", "--priority", "urgent")
    assert lane.returncode == 2 and "urgent" in lane.stderr
    missing = cli("status", "nobody", "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["code"] == "job_not_found"


def test_a_dead_job_through_the_dlq_commands(cli, media, running_worker, queue):
    # Given a job that dies at once (its avatar does not exist): --wait exits 2, like render
    proc = cli("submit", "--audio", str(media["speech"]), "--avatar", str(media["avatar"].parent / "nonexistent.mp4"), "--video-id",
               "cli-dead", "--wait")
    assert proc.returncode == 2 and "error: avatar_not_found: " in proc.stderr
    # When the operator looks at the DLQ
    listed = json.loads(cli("dlq", "list", "--json").stdout)
    shown = cli("dlq", "show", "cli-dead")
    # Then the job is there with its error history
    assert [(r["video_id"], r["state"], r["error"]["code"]) for r in listed] == [("cli-dead", "dead",
                                                                                   "avatar_not_found")]
    assert "avatar_not_found" in shown.stdout and "#1" in shown.stdout
    # When it is retried, singly and with --all, it runs again each time with its count reset
    # (and dies again: the avatar is still missing), its history growing
    for args, tries in ((["cli-dead"], 2), (["--all"], 3)):
        retry = cli("dlq", "retry", *args)
        assert retry.returncode == 0 and "requeued cli-dead" in retry.stdout
        record = wait_for(lambda: (r := queue.record("cli-dead")).state is JobState.dead and len(r.history) == tries
                          and r, 15, f"attempt {tries}")
        assert record.attempts == 1
    # When it is purged: not with a 7-day threshold, yes without one
    assert "0 job(s) purged" in cli("dlq", "purge", "--older-than", "7d").stdout
    assert "1 job(s) purged" in cli("dlq", "purge").stdout
    assert queue.record("cli-dead") is None and cli("status", "cli-dead").returncode == 2
    assert cli("dlq", "purge", "--older-than", "soon").returncode == 2


def test_cleanup_dry_run_prints_one_json_object(cli):
    proc = cli("cleanup", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and set(report) >= {"temp_paths", "orphan_outputs", "job_records"}


def test_an_unreachable_redis_exits_1_with_a_code(fleet_settings, tmp_path):
    from tests.fleet.conftest import free_port

    env = worker_env(fleet_settings, REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0",
                     REDIS_SOCKET_TIMEOUT_S="0.5")
    proc = subprocess.run([sys.executable, "-m", "node.cli", "status", "x"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: queue_unavailable: ")
    assert "hunter2" not in proc.stderr
