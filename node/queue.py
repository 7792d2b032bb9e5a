"""The Redis broker: a stream of job entries, job records in hashes, leases with fencing tokens.

Key schema (every key starts with REDIS_KEY_PREFIX in a hash tag, `p` below: "lipsync:" becomes
"{lipsync}:", so a fleet's keys share one cluster slot and every script's keys one node):

    {p}stream            stream  entries {payload: job JSON} of the normal lane, read by the
                                 consumer group "nodes"
    {p}stream:rush       stream  the same for the rush and bulk lanes (node/lanes.py)
    {p}stream:bulk       stream
    {p}job:{video_id}    hash    the job record: state, payload, token, lease, attempt:{token}, ...
    {p}idem:{key}        string  idempotency key -> video_id
    {p}running           zset    video_id -> lease expiry (ms)
    {p}delayed           zset    video_id -> when its retry is due (ms)
    {p}dlq               zset    video_id (or entry:{stream id}) -> when it was dead-lettered (ms)
    {p}finished          zset    video_id -> when it succeeded (ms); cleanup ages records by it
    {p}refusals          hash    "{node}|{kind}" -> fenced writes refused (holders that lost a lease)
    {p}results           stream  one entry per finished render, written by finish.lua
    {p}nodes, {p}node_slots, {p}backlog   live slots and the backlog (node/fleet_stats.py)
    {p}lock:{name}       string  cleanup schedule locks

Every state change is one Lua script in node/lua/ (its header lists its KEYS, ARGV and keys), so a
node may die at any instruction and Redis stays consistent. An entry is acked only in the same
script that commits its outcome. Each claim bumps the job's fencing token; every later write
names its token and is refused once another claim has superseded it.

redis-py errors are translated at this boundary into node.errors' BrokerError and
QueueUnavailable; JobConflict and JobNotFound are the queue's InvalidInput cases. This module is
the job path; what operators and housekeeping ask (records, DLQ retry, trimming, depths) is
node/queue_admin.py, the provider generation ids node/generations.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

import redis

from node.config import Settings
from node.entries import canonical_payload, idempotent_video_id
from node.errors import InvalidInput, JobConflict
from node.input_guard import Allowlist, check_url
from node.job import Job, parse_job
from node.lanes import LANES, Priority, lane_of, lane_order
from node.queue_admin import GROUP, QueueAdmin
from node.redis_conn import as_bytes, as_str, as_strs, connect, redis_errors, stream_fields

log = logging.getLogger(__name__)

#: Finished renders kept in {p}results (trimmed approximately, in finish.lua): about a busy day.
RESULTS_MAXLEN = 100_000
#: bytes of a malformed entry kept in its dead-letter record.
DEAD_ENTRY_KEEP_BYTES = 4096

_SCRIPT_NAMES = ("read", "submit", "claim", "heartbeat", "finish", "promote", "dead_letter", "unread",
                 "dlq_retry", "delete_job", "trim_stream")
# Read once at import; registered once per queue (redis-py reloads them after a Redis restart).
_LUA = {name: resources.files("node").joinpath(f"lua/{name}.lua").read_text() for name in _SCRIPT_NAMES}


class Fenced(str, Enum):
    written = "written"    # the write went through
    replayed = "replayed"  # this token had already written it (a lost reply, sent again)
    refused = "refused"    # another claim holds the job now: discard the work


_FENCED = {0: Fenced.refused, 1: Fenced.written, 2: Fenced.replayed}  # the scripts' replies


@dataclass(frozen=True)
class Entry:
    entry_id: str
    fields: dict[bytes, bytes]
    lane: Priority = Priority.normal  # the stream it was read from


@dataclass(frozen=True)
class Claim:
    """A job this node holds: its fencing token and the lease it must keep alive."""

    video_id: str
    entry_id: str
    token: int
    attempts: int  # including this one
    owner: str  # the consumer (node/slot) holding the lease
    node_id: str
    job: Job
    claimed_at: float  # time.monotonic() when the claim was sent; the lease runs from here
    lane: Priority = Priority.normal


@dataclass(frozen=True)
class ClaimOutcome:
    kind: str  # claimed | busy | skipped | exhausted | conflict
    claim: Claim | None = None


@dataclass(frozen=True)
class SubmitResult:
    video_id: str
    state: str
    created: bool


def tagged(prefix: str) -> str:
    """REDIS_KEY_PREFIX with a hash tag: "lipsync:" -> "{lipsync}:", so every key of the fleet
    hashes to one cluster slot (a prefix that already has a {tag} is kept as it is)."""
    if re.search(r"\{[^}]+\}", prefix):
        return prefix
    name = prefix.rstrip(":") or prefix
    return "{" + name + "}" + prefix[len(name):]


class Keys:
    def __init__(self, prefix: str, *, hash_tag: bool = True):
        """`hash_tag=False` only for `migrate-keys`, which reads the names of before the tag."""
        self.prefix = prefix = tagged(prefix) if hash_tag else prefix
        self.stream, self.running, self.delayed = f"{prefix}stream", f"{prefix}running", f"{prefix}delayed"
        self.dlq, self.finished, self.refusals = f"{prefix}dlq", f"{prefix}finished", f"{prefix}refusals"
        self.results = f"{prefix}results"
        # the fleet's live slots and published backlog (node/fleet_stats.py)
        self.nodes, self.node_slots, self.backlog = f"{prefix}nodes", f"{prefix}node_slots", f"{prefix}backlog"
        # The normal lane keeps the stream name it had before lanes, so entries queued then are read.
        self.streams = {lane: self.stream if lane is Priority.normal else f"{prefix}stream:{lane.value}"
                        for lane in LANES}

    def job(self, video_id: str) -> str:
        return f"{self.prefix}job:{video_id}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"


class RedisQueue(QueueAdmin):
    """One fleet's queue on one Redis. Thread-safe (redis-py pools connections)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.keys = Keys(settings.redis_key_prefix)
        self.client = client if client is not None else connect(settings)
        self._scripts = {name: self.client.register_script(src) for name, src in _LUA.items()}
        self._group_ready = False
        self._turns: dict[str, int] = {}  # consumer -> entries it has read (its lane-order turn)
        self._by_stream = {name.encode(): lane for lane, name in self.keys.streams.items()}

    def _run(self, name: str, keys: list[str], args: list[Any], *, durable: bool = False) -> Any:
        """Run a script. `durable` (a write a client is told about: a submit, a commit): with
        REDIS_WAIT_REPLICAS, also WAIT on the same connection until that many replicas have it,
        so a failover after the reply cannot lose it (README: what replication can lose)."""
        replicas = self.settings.redis_wait_replicas if durable else 0
        with redis_errors():
            if not replicas:
                return self._scripts[name](keys=keys, args=args)
            pipe = self.client.pipeline(transaction=False)  # one connection: WAIT covers its writes
            self._scripts[name](keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, int(self.settings.redis_wait_timeout_s * 1000))
            reply, acked = pipe.execute()
        if int(acked) < replicas:
            log.warning("%s: %d of %d replicas confirmed the write within %.1fs", name, int(acked), replicas,
                        self.settings.redis_wait_timeout_s)
        return reply

    def ensure_group(self) -> None:
        """Create each lane's stream and its consumer group if missing (from id 0: entries written
        before the group existed are read too)."""
        with redis_errors():
            for stream in self.keys.streams.values():
                try:
                    self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
        self._group_ready = True

    # --- producers -------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> SubmitResult:
        """Validate and enqueue a job; the same id (or idempotency key) and payload return the
        existing job, a different payload raises JobConflict."""
        request = dict(request)
        key = request.get("idempotency_key")
        if key and not request.get("video_id"):
            request["video_id"] = idempotent_video_id(str(key))
        job = parse_job(request, max_text_chars=self.settings.max_text_chars)
        if job.webhook_url:  # refused now, with a clear error, rather than dropped at delivery
            check_url(job.webhook_url, Allowlist.parse(self.settings.url_allowlist))
        payload = canonical_payload(job)
        if len(payload.encode()) > self.settings.queue_max_payload_bytes:
            raise InvalidInput("payload_too_large", f"the job is {len(payload.encode())} bytes of JSON; the "
                               f"limit is {self.settings.queue_max_payload_bytes} (QUEUE_MAX_PAYLOAD_BYTES)")
        if not self._group_ready:
            self.ensure_group()
        sha = hashlib.sha256(payload.encode()).hexdigest()
        lane = lane_of(job.priority)
        kind, vid, state = as_strs(self._run(
            "submit", [self.keys.job(job.video_id), self.keys.idem(key or ""), self.keys.streams[lane]],
            [job.video_id, payload, sha, key or "", lane.value], durable=True))
        if kind == "conflict":
            raise JobConflict(f"job {vid!r} already exists ({state}) with a different payload; "
                              "use another video_id or idempotency_key")
        if kind == "key_conflict":
            raise JobConflict(f"idempotency_key already names job {vid!r}")
        return SubmitResult(vid, state, created=kind == "created")

    # --- consumers -------------------------------------------------------------------------------

    def read(self, consumer: str, *, block_ms: int) -> list[Entry]:
        """The next new entry for this consumer, lanes looked at in its turn's order (node/lanes.py),
        waiting up to block_ms for one when every lane is empty."""
        if not self._group_ready:
            self.ensure_group()
        turn = self._turns.get(consumer, 0)
        order = lane_order(turn)
        with redis_errors():
            try:
                reply = self._scripts["read"](keys=[self.keys.streams[lane] for lane in order],
                                              args=[GROUP, consumer])
                if reply:
                    entries = [Entry(as_str(reply[1]), stream_fields(reply[2]), order[int(reply[0]) - 1])]
                else:  # every lane empty: wait on all of them at once
                    blocked = self.client.xreadgroup(GROUP, consumer, {self.keys.streams[lane]: ">" for lane in order},
                                                     count=1, block=block_ms)
                    entries = [Entry(as_str(eid), fields, self._by_stream[as_bytes(stream)])
                               for stream, rows in (blocked or []) for eid, fields in rows]
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self._group_ready = False  # Redis lost its data; recreate the groups next time
                return []
        if not entries:
            return []
        self._turns[consumer] = turn + 1
        # Entries that reached several lanes during the wait: keep the first in this turn's order,
        # give the others straight back so other slots need not wait for this one's render.
        entries.sort(key=lambda e: order.index(e.lane))
        for extra in entries[1:]:
            self._give_back(extra)
        return entries[:1]

    def _give_back(self, entry: Entry) -> None:
        try:
            video_id = json.loads(entry.fields[b"payload"])["video_id"]
        except (KeyError, ValueError, TypeError):
            return  # malformed: left pending, XAUTOCLAIM brings it to a slot that dead-letters it
        self.unread(entry, str(video_id))

    def reclaim(self, consumer: str) -> list[Entry]:
        """An entry whose holder went silent for a whole lease (XAUTOCLAIM), now this consumer's;
        lanes in priority order."""
        idle_ms = int(self.settings.job_lock_timeout * 1000)
        for lane in LANES:
            with redis_errors():
                try:
                    reply = self.client.xautoclaim(self.keys.streams[lane], GROUP, consumer, idle_ms, "0-0", count=1)
                except redis.ResponseError as e:
                    if "NOGROUP" not in str(e):
                        raise
                    self._group_ready = False
                    return []
            # entries trimmed while pending come back as None; trimming never drops pending ones
            entries = [Entry(as_str(eid), fields, lane) for eid, fields in reply[1] if fields is not None]
            if entries:
                return entries
        return []

    def claim(self, entry: Entry, job: Job, *, owner: str, node_id: str) -> ClaimOutcome:
        payload = canonical_payload(job)
        sha = hashlib.sha256(payload.encode()).hexdigest()
        sent = time.monotonic()
        reply = as_strs(self._run(
            "claim", [self.keys.job(job.video_id), self.keys.streams[entry.lane], self.keys.running, self.keys.dlq],
            [entry.entry_id, GROUP, owner, node_id, int(self.settings.job_lock_timeout * 1000), payload, sha,
             self.settings.max_job_attempts, job.video_id, entry.lane.value]))
        if reply[0] != "claimed":
            return ClaimOutcome(reply[0])
        return ClaimOutcome("claimed", Claim(job.video_id, entry.entry_id, int(reply[1]), int(reply[2]),
                                             owner, node_id, job, sent, entry.lane))

    def heartbeat(self, claim: Claim, *, extend: bool = True, progress: dict | None = None) -> Fenced:
        """Extend the lease and/or write progress: written; replayed = this token already
        finished the job (nothing to keep alive); refused = the lease is lost."""
        lease_ms = int(self.settings.job_lock_timeout * 1000) if extend else 0
        return _FENCED[int(self._run(
            "heartbeat", [self.keys.job(claim.video_id), self.keys.streams[claim.lane], self.keys.running,
                          self.keys.refusals],
            [claim.token, claim.owner, lease_ms, GROUP, json.dumps(progress) if progress else "",
             claim.node_id]))]

    def finish(self, claim: Claim, outcome: str, *, result: dict | None = None, error: dict | None = None,
               delay_s: float = 0.0, summary: dict | None = None) -> Fenced:
        """End this attempt: outcome succeeded | retry | failed | dead | released (fenced).
        `summary`: the render's line in the fleet's results stream (node/fleet_stats.py)."""
        k = self.keys
        code, _state = self._run(
            "finish", [k.job(claim.video_id), k.streams[claim.lane], k.running, k.delayed, k.dlq, k.finished,
                       k.refusals, k.results],
            [claim.token, claim.owner, GROUP, outcome, json.dumps(result) if result else "",
             json.dumps(error) if error else "", int(delay_s * 1000), claim.node_id,
             json.dumps(summary) if summary else "", RESULTS_MAXLEN], durable=True)
        return _FENCED[int(code)]

    def dead_letter(self, entry: Entry, code: str, message: str) -> str:
        """A malformed entry into the DLQ (as entry:{id}), acked; returns the record id."""
        record_id = f"entry:{entry.entry_id}"
        raw = json.dumps({k.decode(errors="replace"): v[:DEAD_ENTRY_KEEP_BYTES].decode(errors="replace")
                          for k, v in entry.fields.items()}, ensure_ascii=False)[:DEAD_ENTRY_KEEP_BYTES]
        error = json.dumps({"code": code, "message": message, "retryable": False})
        self._run("dead_letter", [self.keys.job(record_id), self.keys.streams[entry.lane], self.keys.dlq],
                  [entry.entry_id, GROUP, record_id, raw, error])
        return record_id

    def unread(self, entry: Entry, video_id: str) -> bool:
        """Give back an entry read but not claimed (draining): any node can read it at once."""
        return bool(self._run("unread", [self.keys.job(video_id), self.keys.streams[entry.lane]],
                              [entry.entry_id, GROUP]))

    def promote_due(self, limit: int = 100) -> int:
        """Move retries that are due back onto the stream; returns how many this call moved."""
        with redis_errors():
            due = self.client.zrangebyscore(self.keys.delayed, "-inf", int(time.time() * 1000), start=0, num=limit)
        moved = 0
        for vid in map(as_str, due):
            moved += int(self._run("promote", [self.keys.job(vid), self.keys.delayed, *self._lane_streams()], [vid]))
        return moved

    def _lane_streams(self) -> list[str]:
        """The lanes' streams in the order the promote and dlq_retry scripts take them."""
        return [self.keys.streams[lane] for lane in LANES]
