"""Managed and clustered Redis: the fleet on a real local 3-master Redis Cluster (started here with
`redis-server --cluster-enabled yes` x3 and `redis-cli --cluster create`), and a primary failover on
a replicated pair with REDIS_WAIT_REPLICAS=1: no acknowledged job lost, none committed twice."""

from __future__ import annotations

import random
import socket
import subprocess
import time

import pytest
import redis
from redis.crc import key_slot

from node import fleet_stats
from node.errors import InvalidInput, RenderFailed
from node.lanes import LANES
from node.queue import Keys, RedisQueue
from node.records import JobState
from node.worker import Worker
from tests.conftest import require_tool
from tests.fleet.conftest import RedisServer, job_request, wait_for
from tests.fleet.test_worker import failing_first, writes_output


def _cluster_port(rng: random.Random) -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = rng.randint(20000, 29999)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory):
    cli = require_tool("redis-cli")
    rng = random.Random()
    root = tmp_path_factory.mktemp("cluster")
    nodes = []
    for k in range(3):
        port = _cluster_port(rng)
        node = RedisServer(root / str(k), port=port, extra=(
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", "2000"))
        node.start()
        nodes.append(node)
    try:
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        first = redis.Redis(port=nodes[0].port)
        wait_for(lambda: first.cluster("info")["cluster_state"] == "ok", 30, "the cluster to be ok")
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
def cluster_settings(fleet_settings, cluster_url):
    return fleet_settings.model_copy(update={"redis_url": cluster_url})


def test_every_key_of_a_fleet_is_in_one_slot():
    keys = Keys("lipsync:")
    names = [keys.job("v1"), keys.idem("k"), keys.lock("cleanup"), keys.running, keys.delayed, keys.dlq,
             keys.finished, keys.refusals, keys.results, *keys.streams.values(), keys.nodes, keys.node_slots,
             keys.backlog, keys.job("entry:1-0")]
    assert keys.prefix == "{lipsync}:" and len({key_slot(n.encode()) for n in names}) == 1
    assert Keys("{shard-7}:jobs:").prefix == "{shard-7}:jobs:"  # an operator's own tag is kept


def test_a_fleet_runs_on_a_three_master_cluster(cluster_settings, media):
    # Given a queue and a worker on the cluster: jobs in every lane, one that fails once, one invalid
    queue = RedisQueue(cluster_settings)
    assert len(queue.client.get_primaries()) == 3
    calls = failing_first(1, RenderFailed("once"))

    def render(job, output, progress, should_stop):
        if job.video_id == "c-dead":
            raise InvalidInput("avatar_not_found", "no such avatar")
        return calls(job, output, progress, should_stop)

    worker = Worker(queue, cluster_settings, render, node_id="c1", concurrency=2).start()
    try:
        for k, lane in enumerate(LANES):
            queue.submit(job_request(media, f"c-{lane.value}", priority=lane.value))
        queue.submit(job_request(media, "c-dead"))
        done = {v: wait_for(lambda v=v: (r := queue.record(v)) and r.terminal and r, 30, v)
                for v in ["c-rush", "c-normal", "c-bulk", "c-dead"]}
        # Then claims, retries (delayed set, promote), fenced commits and the DLQ all work there
        for lane in LANES:
            record = done[f"c-{lane.value}"]
            assert record.state is JobState.succeeded and record.attempts == 2 and record.lane == lane.value
        assert done["c-dead"].state is JobState.dead
        queue.dlq_retry("c-dead")
        assert wait_for(lambda: queue.record("c-dead").terminal, 30, "the retried job")
        # and the fleet's figures (pipelines, streams) are readable on the cluster
        assert fleet_stats.recent_results(queue, 3600) and fleet_stats.backlog(queue).queued_jobs == 0
    finally:
        worker.stop_now()
        assert worker.join(10)
    # When the worker restarts, a job submitted meanwhile is taken by the new one
    queue.submit(job_request(media, "c-after-restart"))
    again = Worker(RedisQueue(cluster_settings), cluster_settings, writes_output, node_id="c2").start()
    try:
        record = wait_for(lambda: (r := queue.record("c-after-restart")) and r.terminal and r, 30, "the job")
        assert record.state is JobState.succeeded and record.history[-1].node == "c2"
    finally:
        again.stop_now()
        assert again.join(10)


def test_a_primary_failover_loses_no_acknowledged_job_and_commits_none_twice(fleet_settings, media, tmp_path):
    # Given a primary with a replica, and commits acknowledged only once the replica has them
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    settings = fleet_settings.model_copy(update={"redis_url": primary.url, "redis_wait_replicas": 1,
                                                 "job_lock_timeout": 1.0})
    wait_for(lambda: redis.Redis(port=primary.port).info("replication")["connected_slaves"] == 1, 20, "the replica")
    queue = RedisQueue(settings)
    jobs = [f"f{k}" for k in range(30)]

    def slow(job, output, progress, should_stop):
        time.sleep(0.05)
        return writes_output(job, output, progress, should_stop)

    old = Worker(queue, settings, slow, node_id="before", concurrency=2).start()
    try:
        for vid in jobs:
            queue.submit(job_request(media, vid))  # acknowledged: on the replica too
        wait_for(lambda: len(queue.index("finished")) >= 10, 30, "some commits on the primary")
        acknowledged = {vid: queue.record(vid).committed_token for vid, _ in queue.index("finished")}
        # When the primary dies mid-run and the replica is promoted
        primary.proc.kill()
        primary.proc.wait(10)
        promoted = redis.Redis(port=replica.port)
        promoted.replicaof("NO", "ONE")
    finally:
        old.stop_now()  # its slots give up on the dead primary; not joined (a final write may be retrying)
    new_settings = settings.model_copy(update={"redis_url": replica.url, "redis_wait_replicas": 0})
    new_queue = RedisQueue(new_settings)
    new = Worker(new_queue, new_settings, slow, node_id="after", concurrency=2).start()
    try:
        # Then every job succeeds on the promoted replica, the acknowledged commits as they were
        records = {vid: wait_for(lambda v=vid: (r := new_queue.record(v)) and r.state is JobState.succeeded and r,
                                 60, vid) for vid in jobs}
        for vid, token in acknowledged.items():
            assert records[vid].committed_token == token, vid
        for vid, record in records.items():
            assert [h.outcome for h in record.history].count("succeeded") == 1, (vid, record.history)
    finally:
        new.stop_now()
        assert new.join(10)
        replica.stop()
        primary.stop()


def test_a_write_no_replica_confirms_is_kept_and_said(fleet_settings, media, caplog):
    # Given REDIS_WAIT_REPLICAS=1 on a server without replicas
    settings = fleet_settings.model_copy(update={"redis_wait_replicas": 1, "redis_wait_timeout_s": 0.2})
    queue = RedisQueue(settings)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="node.queue"):
        result = queue.submit(job_request(media, "unreplicated"))
    # Then WAIT ran (it waited out its timeout), the write stands, and the log says how many confirmed
    assert result.created and time.monotonic() - started >= 0.2
    assert "submit: 0 of 1 replicas confirmed the write within 0.2s" in caplog.text


def test_migrate_keys_moves_a_fleet_of_before_the_hash_tag(fleet_settings, media, start_worker, tmp_path):
    import json
    import sys

    from tests.conftest import REPO
    from tests.fleet.conftest import worker_env

    # Given jobs queued under the old, untagged key names (a fleet before this upgrade)
    legacy = RedisQueue(fleet_settings)
    legacy.keys = Keys(fleet_settings.redis_key_prefix, hash_tag=False)
    legacy._by_stream = {name.encode(): lane for lane, name in legacy.keys.streams.items()}
    for vid, lane in (("old-1", None), ("old-2", "rush")):
        legacy.submit(job_request(media, vid, priority=lane))
    assert legacy.client.exists(f"{fleet_settings.redis_key_prefix}job:old-1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "node.cli", "migrate-keys", "--json", *args], cwd=REPO,
                              env=worker_env(fleet_settings), capture_output=True, text=True, timeout=60)

    # When the operator runs migrate-keys (a dry run first)
    dry = json.loads(cli("--dry-run").stdout)
    assert dry["dry_run"] and dry["moved"] >= 4 and legacy.client.exists(f"{fleet_settings.redis_key_prefix}job:old-1")
    moved = json.loads(cli().stdout)
    assert moved["moved"] == dry["moved"] and all(k.startswith("{") for k in moved["keys"])
    # Then today's workers see and render those jobs, in their lanes
    queue = RedisQueue(fleet_settings)
    start_worker(writes_output)
    for vid, lane in (("old-1", "normal"), ("old-2", "rush")):
        record = wait_for(lambda v=vid: (r := queue.record(v)) and r.terminal and r, 20, vid)
        assert record.state is JobState.succeeded and record.lane == lane
    assert json.loads(cli().stdout)["moved"] == 0  # nothing left to move


def test_a_sentinel_url_finds_the_current_primary(fleet_settings, media, tmp_path):
    # Given a primary watched by a Sentinel (redis-server --sentinel)
    primary = RedisServer(tmp_path / "p")
    primary.start()
    sentinel_port = _cluster_port(random.Random())
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor fleet 127.0.0.1 {primary.port} 1\n")
    sentinel = subprocess.Popen([require_tool("redis-server"), str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = redis.Redis(port=sentinel_port, socket_connect_timeout=0.5)
        wait_for(lambda: _answers(lambda: probe.sentinel_get_master_addr_by_name("fleet")), 20, "the sentinel")
        # When the fleet's REDIS_URL names the Sentinel and the service
        settings = fleet_settings.model_copy(update={"redis_url": f"redis+sentinel://127.0.0.1:{sentinel_port}/fleet/0"})
        queue = RedisQueue(settings)
        queue.submit(job_request(media, "via-sentinel"))
        # Then the job is on the primary the Sentinel named
        direct = redis.Redis(port=primary.port)
        assert direct.exists(Keys(settings.redis_key_prefix).job("via-sentinel"))
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        primary.stop()


def _answers(fn):
    try:
        return fn()
    except redis.RedisError:
        return None
