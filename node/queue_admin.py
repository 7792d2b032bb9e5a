"""What operators and housekeeping ask of the queue, beside the job path of node/queue.py: records
and indexes, the DLQ retry, deletions, stream trimming, depths, consumers, locks, the server clock.
`RedisQueue` inherits these; they use its keys, client and scripts."""

from __future__ import annotations

import redis

from node.errors import InvalidInput, JobNotFound
from node.records import JobRecord
from node.redis_conn import as_str, redis_errors

#: The consumer group every node reads the stream with (node/queue.py).
GROUP = "nodes"


class QueueAdmin:
    def record(self, video_id: str) -> JobRecord | None:
        with redis_errors():
            h = self.client.hgetall(self.keys.job(video_id))
        return JobRecord.from_hash({as_str(k): as_str(v) for k, v in h.items()}) if h else None

    def index(self, name: str, *, max_ms: float = float("inf")) -> list[tuple[str, int]]:
        """Members of a zset index (dlq, finished, running, delayed) scored up to max_ms, oldest first."""
        with redis_errors():
            rows = self.client.zrangebyscore(getattr(self.keys, name), "-inf",
                                             "+inf" if max_ms == float("inf") else int(max_ms), withscores=True)
        return [(as_str(m), int(s)) for m, s in rows]

    def dlq_retry(self, video_id: str) -> None:
        code = int(self._run("dlq_retry", [self.keys.job(video_id), self.keys.dlq, *self._lane_streams()], [video_id]))
        if code == -1:
            raise InvalidInput("not_retryable", f"{video_id} is a malformed queue entry; fix it and submit a job")
        if code == 0:
            if self.record(video_id) is None:
                raise JobNotFound(video_id)
            raise InvalidInput("not_in_dlq", f"job {video_id!r} is not failed or dead")

    def delete_job(self, video_id: str, *, index: str, cutoff_ms: int, states: tuple[str, ...]) -> bool:
        """Delete a record still in one of `states` and finished at or before cutoff_ms."""
        with redis_errors():
            key = self.client.hget(self.keys.job(video_id), "idempotency_key")
        return bool(self._run("delete_job", [self.keys.job(video_id), self.keys.idem(as_str(key or b"")),
                                             getattr(self.keys, index)],
                              [video_id, cutoff_ms, ",".join(states)]))

    def trim_stream(self, *, dry_run: bool = False) -> tuple[int, dict[str, str]]:
        """Drop entries every group is done with; returns (entries dropped, MINID kept per lane)."""
        dropped, kept = 0, {}
        for lane, stream in self.keys.streams.items():
            n, minid = self._run("trim_stream", [stream], ["1" if dry_run else "0"])
            dropped, kept[lane.value] = dropped + int(n), as_str(minid)
        return dropped, kept

    def pending_count(self) -> int:
        total = 0
        with redis_errors():
            for stream in self.keys.streams.values():
                try:
                    total += int(self.client.xpending(stream, GROUP)["pending"])
                except redis.ResponseError:  # no stream or group yet
                    pass
        return total

    def undelivered(self, lane, limit: int = 0) -> tuple[int, list]:
        """(how many entries of `lane` no slot has read yet, the first `limit` of them)."""
        stream = self.keys.streams[lane]
        try:
            group = next((g for g in self.client.xinfo_groups(stream) if as_str(g["name"]) == GROUP), None)
        except redis.ResponseError:  # no stream yet
            group = None
        if group is None:
            return 0, []
        lag = group.get("lag")
        # Redis cannot tell the lag after deletions inside the stream: the entries are counted then
        count = limit if lag is not None else max(limit, 100_000)
        rows = self.client.xrange(stream, f"({as_str(group['last-delivered-id'])}", "+", count=count) if count else []
        return (int(lag) if lag is not None else len(rows)), rows[:limit]

    def depths(self) -> dict[tuple[str, str], int]:
        """Jobs by where they are: ("queued", lane) not yet read by any slot, and ("delayed",
        "all"), ("running", "all"), ("dlq", "all")."""
        with redis_errors():
            out = {("queued", lane.value): self.undelivered(lane)[0] for lane in self.keys.streams}
            for name in ("delayed", "running", "dlq"):
                out[(name, "all")] = int(self.client.zcard(getattr(self.keys, name)))
        return out

    def idle_consumers(self, min_idle_ms: int) -> list[str]:
        """Consumers (node/slot names) with nothing pending in any lane, silent for at least min_idle_ms."""
        busy, idle = set(), set()
        with redis_errors():
            for stream in self.keys.streams.values():
                try:
                    rows = self.client.xinfo_consumers(stream, GROUP)
                except redis.ResponseError:  # no stream or group yet
                    continue
                for c in rows:
                    quiet = int(c["pending"]) == 0 and int(c["idle"]) >= min_idle_ms
                    (idle if quiet else busy).add(as_str(c["name"]))
        return sorted(idle - busy)

    def delete_consumer(self, name: str) -> None:
        with redis_errors():
            for stream in self.keys.streams.values():
                try:
                    self.client.xgroup_delconsumer(stream, GROUP, name)
                except redis.ResponseError:  # no stream or group yet
                    pass

    def refusals(self) -> dict[str, int]:
        """Fenced writes refused, by "{node}|{kind}" (kind: commit, finish, progress, heartbeat)."""
        with redis_errors():
            return {as_str(k): int(v) for k, v in self.client.hgetall(self.keys.refusals).items()}

    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take a lock for ttl_s unless someone holds it; never released early (a schedule slot)."""
        with redis_errors():
            return bool(self.client.set(self.keys.lock(name), owner, nx=True, px=max(1, int(ttl_s * 1000))))

    def server_time_ms(self) -> int:
        with redis_errors():
            seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000
