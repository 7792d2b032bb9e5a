"""Chaos: 3 worker processes, 120 jobs, random SIGKILLs with restarts, one worker paused for twice
its lease, one Redis restart (AOF on). Every job must end succeeded with exactly one committed
attempt and a valid output; nothing lost or stuck; the paused worker's writes refused.

Deterministic enough never to flake: the randomness is seeded, the events are tied to progress
(jobs done) rather than wall time, every wait is bounded, every child is killed in a finally.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from node.cleanup import run_cleanup
from node.errors import BrokerError
from node.queue import RedisQueue
from node.records import JobState
from tests.conftest import ffprobe_json
from tests.fleet.conftest import RedisServer, job_request, kill_all, spawn_worker, wait_for

JOBS = 120
LEASE_S = 3.0
SEED = 20240604
#: (jobs done, event) in order; kills pick their victim with the seeded generator.
TIMELINE = [(8, "kill"), (20, "pause"), (40, "kill"), (55, "restart_redis"), (70, "kill"), (90, "kill")]


class Fleet:
    def __init__(self, settings, logs: Path):
        self.settings, self.logs = settings, logs
        self.slots: dict[str, tuple[str, object]] = {}  # slot -> (node id, process)
        self.all_procs: list = []
        self.generation = 0

    def start(self, slot: str) -> None:
        self.generation += 1
        node = f"{slot}-g{self.generation}"
        proc = spawn_worker(self.settings, node, self.logs / f"{node}.log")
        self.slots[slot] = (node, proc)
        self.all_procs.append(proc)

    def kill_mid_job_and_restart(self, queue: RedisQueue, slot: str) -> tuple[str, str, int]:
        """SIGKILL the slot's worker while it holds a job; returns (node, video_id, token) of it."""
        node, proc = self.slots[slot]
        held = pause_mid_job(queue, node, proc)  # stopped first, so it cannot finish the job meanwhile
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.start(slot)
        return node, *held


def done_count(queue: RedisQueue) -> int:
    try:
        return queue.client.zcard(queue.keys.finished)
    except Exception:  # Redis restarting: ask again
        return -1


def job_held_by(queue: RedisQueue, node: str) -> tuple[str, int] | None:
    """(video_id, token) of a job running under a lease of `node`, or None."""
    for vid, _ in queue.index("running"):
        record = queue.record(vid)
        if record and record.state is JobState.running and (record.lease_owner or "").startswith(f"{node}/"):
            return vid, record.token
    return None


def pause_mid_job(queue: RedisQueue, node: str, proc) -> tuple[str, int]:
    """SIGSTOP the node while it holds a running job; returns that job's (video_id, token)."""
    for _ in range(100):
        held = wait_for(lambda: job_held_by(queue, node), 20, f"{node} to hold a job", 0.01)
        proc.send_signal(signal.SIGSTOP)
        if job_held_by(queue, node) == held:
            return held
        proc.send_signal(signal.SIGCONT)  # it finished in between: try the next job
    pytest.fail(f"could not catch {node} in the middle of a job")


def test_chaos(tmp_path, settings, media, ffprobe):
    server = RedisServer(tmp_path / "redis", aof=True)
    server.start()
    s = settings.model_copy(update={
        "redis_url": server.url, "redis_key_prefix": "chaos:", "job_lock_timeout": LEASE_S,
        "inputs_dir": media["speech"].parent,
        "max_job_attempts": 20, "lipsync_batch_size": 1, "progress_interval_s": 0.05, "queue_block_ms": 100,
        "retry_base_delay_s": 0.1, "retry_max_delay_s": 0.5, "lipsync_engine_order": "mock"})
    queue = RedisQueue(s)
    rng = random.Random(SEED)
    fleet = Fleet(s, tmp_path)
    killed: list[tuple[str, str, int]] = []  # (node, video_id, token) of each job a kill interrupted
    paused, finished_before_restart = None, None
    try:
        # Given three workers and 120 jobs
        for slot in ("w0", "w1", "w2"):
            fleet.start(slot)
        ids = [f"chaos-{i:03d}" for i in range(JOBS)]
        for vid in ids:
            queue.submit(job_request(media, vid))

        # When workers are killed, one is paused past its lease, and Redis restarts, as jobs finish
        for threshold, event in TIMELINE:
            wait_for(lambda: done_count(queue) >= threshold, 120, f"{threshold} jobs done")
            if event == "kill":
                killed.append(fleet.kill_mid_job_and_restart(queue, rng.choice(sorted(fleet.slots))))
            elif event == "pause":
                node, proc = fleet.slots["w2"]
                held = pause_mid_job(queue, node, proc)
                time.sleep(2 * LEASE_S)
                proc.send_signal(signal.SIGCONT)
                paused = (node, *held)
            elif event == "restart_redis":
                finished_before_restart = set(queue.client.zrange(queue.keys.finished, 0, -1))
                server.restart()
        wait_for(lambda: done_count(queue) >= JOBS, 150, "every job to succeed", 0.2)

        # Then every job succeeded with exactly one committed attempt and a valid output
        for vid in ids:
            record = queue.record(vid)
            assert record.state is JobState.succeeded, record.as_dict()
            committed = [a for a in record.history if a.outcome == "succeeded"]
            assert len(committed) == 1 and committed[0].token == record.committed_token, record.as_dict()
            assert record.output == str(s.output_dir / vid / f"{record.committed_token}.mp4")
            duration = float(ffprobe_json(Path(record.output))["format"]["duration"])
            assert duration == pytest.approx(0.3, abs=0.05), vid
        # and nothing is left running, waiting, dead or unacked
        assert queue.index("running") == [] and queue.index("delayed") == [] and queue.index("dlq") == []
        wait_for(lambda: queue.pending_count() == 0, 2 * LEASE_S, "no pending entries")
        # and the paused worker's job was taken over, its late writes refused
        node, vid, token = paused
        history = {a.token: a for a in queue.record(vid).history}
        assert history[token].node == node and history[token].outcome == "lease_expired"
        assert queue.record(vid).committed_token > token
        refused = {k: v for k, v in queue.refusals().items() if k.startswith(f"{node}|")}
        assert sum(refused.values()) >= 1, queue.refusals()
        # and every job a SIGKILL interrupted was taken over after its lease ran out and committed once
        for node, vid, token in killed:
            history = {a.token: a for a in queue.record(vid).history}
            assert history[token].node == node and history[token].outcome == "lease_expired", history
            assert queue.record(vid).committed_token > token
        # and the Redis restart lost no finished job (AOF): each is still recorded as done
        assert finished_before_restart and finished_before_restart <= set(
            queue.client.zrange(queue.keys.finished, 0, -1))
        # and what killed or stale attempts left behind is exactly what cleanup removes
        run_cleanup(queue, s.model_copy(update={"temp_max_age_hours": 0}))
        for vid in ids:
            assert [p.name for p in (s.output_dir / vid).iterdir()] == [f"{queue.record(vid).committed_token}.mp4"]
        print(f"\nchaos: {JOBS} jobs, {len(killed)} kills mid-job, pause of {2 * LEASE_S:.0f}s, 1 Redis restart; "
              f"refused writes by the paused node: {refused}; all refusals: {queue.refusals()}")
    except (AssertionError, BrokerError, pytest.fail.Exception):
        for log in sorted(tmp_path.glob("w*.log")):
            print(f"--- {log.name}\n{log.read_text()[-2000:]}")
        raise
    finally:
        kill_all(fleet.all_procs)
        server.stop()
