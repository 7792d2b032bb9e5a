"""The fleet's figures in Redis: the results stream written with each finished render, live slots,
the backlog in seconds an autoscaler reads, and `lipsync-node metrics`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from node import fleet_stats
from node.errors import RenderFailed
from node.fleet_stats import CHARS_PER_SPEECH_SECOND, DEFAULT_AUDIO_JOB_S, estimate_speech_s
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.conftest import REPO
from tests.fleet.conftest import job_request, wait_for, worker_env

TEXT_10S = "x" * int(10 * CHARS_PER_SPEECH_SECOND)  # ten seconds of speech by the estimate


def test_queued_speech_is_estimated_from_text_or_the_fleets_audio_mean():
    assert estimate_speech_s(json.dumps({"text": TEXT_10S}).encode(), 7.0) == pytest.approx(10.0)
    assert estimate_speech_s(json.dumps({"audio": "/srv/a.wav"}).encode(), 7.0) == 7.0
    assert estimate_speech_s(b"not json", 7.0) == 0.0


def test_backlog_is_queued_speech_over_the_fleets_measured_rate(queue, media):
    # Given three 10 s text jobs and an audio job queued, no node alive, nothing rendered yet
    for k in range(3):
        queue.submit({"video_id": f"t{k}", "text": TEXT_10S, "priority": ["rush", None, "bulk"][k]})
    queue.submit(job_request(media, "a0"))
    cold = fleet_stats.backlog(queue)
    # Then it is what one slot at the assumed speed would need (a scaler at zero still sees work)
    assert (cold.queued_jobs, cold.live_slots) == (4, 0)
    assert cold.queued_speech_s == pytest.approx(30 + DEFAULT_AUDIO_JOB_S)
    assert cold.seconds == pytest.approx(cold.queued_speech_s / fleet_stats.DEFAULT_SLOT_SPEED)
    # When two nodes with 2 and 1 slots are alive and renders took half their speech's length
    fleet_stats.renew_node(queue, "n1", 2)
    fleet_stats.renew_node(queue, "n2", 1)
    for speech_s in (6.0, 14.0):
        queue.client.xadd(queue.keys.results, {"node": "n1", "outcome": "succeeded", "strategy": "lipsync",
                                               "provider": "wav2lip", "speech_s": speech_s,
                                               "timings": json.dumps({"total": speech_s / 2})})
    warm = fleet_stats.backlog(queue)
    # Then the audio job is counted at the fleet's mean (10 s) and 3 slots render 2 s per second each
    assert warm.live_slots == 3 and warm.slot_speed == pytest.approx(2.0)
    assert warm.seconds == pytest.approx((30 + 10) / (3 * 2.0))
    assert fleet_stats.published_backlog(queue)["backlog_seconds"] == pytest.approx(warm.seconds, abs=0.1)
    # A node that stopped no longer counts
    fleet_stats.forget_node(queue, "n1")
    assert fleet_stats.live_slots(queue) == 1


def test_every_finished_render_lands_in_the_results_stream_with_its_outcome(queue, media, start_worker,
                                                                             fleet_settings):
    # Given a worker rendering for real (mock engine), one job that succeeds and one that fails for good
    render = renderer_render(Renderer(fleet_settings))

    def render_or_fail(job, output, progress, should_stop):
        if job.video_id == "bad":
            raise RenderFailed("engine broke")
        return render(job, output, progress, should_stop)

    settings = fleet_settings.model_copy(update={"max_job_attempts": 1})
    worker = start_worker(render_or_fail, settings)
    queue.submit(job_request(media, "good"))
    queue.submit(job_request(media, "bad"))
    for vid in ("good", "bad"):
        wait_for(lambda v=vid: (r := queue.record(v)) and r.terminal, 30, vid)
    rows = fleet_stats.recent_results(queue, 3600)
    by_outcome = {r["outcome"]: r for r in rows}
    # Then each attempt's line is there, written with its outcome in the same step
    assert set(by_outcome) == {"succeeded", "failed"} and len(rows) == 2
    good = by_outcome["succeeded"]
    assert (good["node"], good["strategy"], good["provider"]) == (worker.node_id, "lipsync", "mock")
    assert good["speech_s"] == pytest.approx(0.3, abs=0.05) and {"tts", "encode", "total"} <= set(good["timings"])
    assert by_outcome["failed"]["strategy"] == "none"
    # and the worker's housekeeping counts its slots as live
    wait_for(lambda: fleet_stats.live_slots(queue) == 1, 10, "the node to register")


def test_metrics_command_summarises_the_fleet_from_redis(queue, media, start_worker, fleet_settings):
    start_worker(renderer_render(Renderer(fleet_settings)), concurrency=2)
    for k in range(3):
        queue.submit(job_request(media, f"m{k}"))
    for k in range(3):
        wait_for(lambda v=f"m{k}": queue.record(v).state is JobState.succeeded, 30, f"m{k}")
    queue.submit({"video_id": "later", "text": TEXT_10S, "priority": "bulk", "strategy": "base_video"})

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "node.cli", "metrics", *args], cwd=REPO,
                              env=worker_env(fleet_settings), capture_output=True, text=True, timeout=60)

    # the worker may claim "later" at any moment; the summary still holds three finished renders
    proc = cli("--json", "--window", "1h")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["outcomes"]["succeeded"] >= 3 and report["success_rate"] == 1.0
    assert report["strategies"]["lipsync"] >= 3 and report["providers"]["mock"] >= 3
    assert set(report["stage_s"]["encode"]) == {"p50", "p95", "n"} and report["stage_s"]["encode"]["n"] >= 3
    assert sum(report["per_node"].values()) == report["renders"]
    assert {"queued_jobs", "backlog_seconds", "live_slots", "slot_speed"} <= set(report["backlog"])
    human = cli("--window", "30m")
    assert human.returncode == 0 and "succeeded" in human.stdout and "backlog" in human.stdout
    bad = cli("--window", "soon")
    assert bad.returncode == 2 and "invalid_duration" in bad.stderr
