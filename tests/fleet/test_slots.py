"""The slot plan (jobs per GPU, x264 thread shares) and the renderers a worker builds from it."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from node.encoder import VideoEncoder, codec_options
from node.records import JobState
from node.slots import CPU_CORES_PER_SLOT, MAX_SLOTS_PER_GPU, available_cores, plan_slots
from tests.conftest import ffprobe_json, make_speech, stream


def test_libx264_on_a_gpu_node_runs_several_jobs_per_gpu_each_with_its_share_of_the_cores():
    # Given the H200 node of GPU.md: 16 cores, one GPU without NVENC
    plan = plan_slots(cores=16, gpus=1, codec="libx264")
    # Then four jobs share the GPU's one Renderer, and each encode gets 4 threads, not 24
    assert (plan.slots, plan.devices, plan.x264_threads) == (4, ["auto"], 4)
    assert "libx264 bounds the node" in plan.reason


@pytest.mark.parametrize("cores, gpus, slots", [
    (64, 1, MAX_SLOTS_PER_GPU),     # never more than MAX_SLOTS_PER_GPU on one GPU
    (64, 8, 8 * 2),                 # 8 cores per GPU: 2 slots each
    (8, 4, 4),                      # 2 cores per GPU: still one job per GPU
    (2, 0, 1),                      # this CPU machine: one slot
    (12, 0, 12 // CPU_CORES_PER_SLOT),
])
def test_the_slot_count_follows_the_cores_each_gpu_has(cores, gpus, slots):
    assert plan_slots(cores=cores, gpus=gpus, codec="libx264").slots == slots


def test_on_a_node_without_gpu_the_models_get_each_slots_share_of_the_cores_too():
    assert plan_slots(cores=8, gpus=0, codec="libx264").torch_threads == 4  # two slots of 4 cores
    assert plan_slots(cores=2, gpus=0, codec="libx264", slots=2).torch_threads == 1
    assert plan_slots(cores=2, gpus=0, codec="libx264").torch_threads is None  # a lone slot: torch's default
    assert plan_slots(cores=16, gpus=1, codec="libx264").torch_threads is None  # the models are on the GPU


def test_nvenc_takes_the_encode_off_the_cpu_so_one_job_per_gpu():
    plan = plan_slots(cores=32, gpus=2, codec="h264_nvenc")
    assert (plan.slots, plan.devices, plan.x264_threads) == (2, ["cuda:0", "cuda:1"], None)


def test_slots_get_one_gpu_each_when_there_are_several():
    def devices(setting, slots, gpus):
        return plan_slots(cores=64, gpus=gpus, codec="libx264", torch_device=setting, slots=slots).devices

    assert devices("auto", 4, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert devices("auto", 2, 8) == ["cuda:0", "cuda:1"]
    assert devices("auto", 3, 2) == ["cuda:0", "cuda:1"]  # slot 2 shares GPU 0's renderer
    assert devices("auto", 1, 0) == ["auto"] and devices("auto", 2, 1) == ["auto"]
    assert devices("cpu", 4, 4) == ["cpu"]  # an explicit device is shared by every slot


def test_configured_counts_win_and_a_lone_job_keeps_ffmpegs_default_threads():
    assert plan_slots(cores=16, gpus=1, codec="libx264", slots=2).x264_threads == 8
    assert plan_slots(cores=16, gpus=1, codec="libx264", slots=3, x264_threads=2).x264_threads == 2
    assert plan_slots(cores=2, gpus=0, codec="libx264").x264_threads is None
    assert plan_slots(cores=16, gpus=1, codec="libx264", slots=1).reason == "1 slot(s) as configured"


def test_a_container_cpu_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("200000 100000\n")  # a 2-CPU limit
    assert available_cores(tmp_path) == min(2, available_cores(tmp_path / "absent"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == available_cores(tmp_path / "absent") >= 1


def test_libx264_threads_reach_ffmpeg_and_the_output_still_conforms(tmp_path, ffprobe):
    assert "threads" not in codec_options("libx264", 23, "medium")
    assert codec_options("h264_nvenc", 23, "medium", threads=2).get("threads") is None
    speech = make_speech(tmp_path / "s.wav", 0.4)
    frames = np.random.default_rng(0).integers(0, 255, (10, 96, 128, 3), dtype=np.uint8)
    with VideoEncoder(tmp_path / "o.mp4", 128, 96, Fraction(25), speech, 0.4, preset="ultrafast",
                      threads=1) as enc:
        enc.write(frames)
        enc.close()
    assert enc.args[enc.args.index("-threads") + 1] == "1"
    video = stream(ffprobe_json(tmp_path / "o.mp4"), "video")
    assert (video["codec_name"], video["profile"], video["level"]) == ("h264", "High", 40)


def test_a_multi_gpu_worker_shares_one_provider_set(settings):
    # Given a worker with one render slot per GPU on a 2-GPU node
    from node.encoder import EncoderChoice
    from node.worker_cli import slot_renderers

    plan = plan_slots(cores=16, gpus=2, codec="libx264", slots=4)
    renderers = slot_renderers(settings, plan, encoder=EncoderChoice("libx264", "test"))
    # Then each GPU has its Renderer, whose encodes get the plan's thread share ...
    assert [r.settings.torch_device for r in renderers] == ["cuda:0", "cuda:1"]
    assert {r.settings.x264_threads for r in renderers} == {4}
    assert all(r.encoder.reason == "test" for r in renderers)  # probed once, not per Renderer
    # ... but every provider client (its concurrency slots, its circuit breaker) is the process's one
    first, second = renderers
    for name, client in first.remote.items():
        assert second.remote[name] is client, name
    assert all(a is b for a, b in zip(first.tts, second.tts))


def test_two_slots_render_two_jobs_at_once_through_one_renderer(fleet_settings, media, start_worker, queue):
    # Given one worker with two slots sharing one Renderer (mock engine), each encode on 1 thread
    from node.pipeline import Renderer
    from node.worker import renderer_render
    from tests.fleet.conftest import job_request, wait_for

    settings = fleet_settings.model_copy(update={"x264_threads": 1})
    renderer = Renderer(settings)
    running, overlap = set(), threading.Event()
    lock = threading.Lock()
    render = renderer_render(renderer)

    def observed(job, output, progress, should_stop):
        with lock:
            running.add(job.video_id)
            if len(running) == 2:
                overlap.set()
        overlap.wait(10)  # both jobs must be inside a render at the same moment
        try:
            return render(job, output, progress, should_stop)
        finally:
            with lock:
                running.discard(job.video_id)

    start_worker(observed, concurrency=2)
    for vid in ("slot-a", "slot-b"):
        queue.submit(job_request(media, vid))
    # Then both finish, rendered side by side, each a conforming file
    records = [wait_for(lambda v=v: (r := queue.record(v)) is not None and r.terminal and r, 60, f"{v} to finish")
               for v in ("slot-a", "slot-b")]
    assert overlap.is_set()
    for record in records:
        assert record.state == JobState.succeeded, record
        video = stream(ffprobe_json(Path(record.output)), "video")
        assert (video["codec_name"], video["profile"]) == ("h264", "High")
