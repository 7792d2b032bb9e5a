"""The Redis broker: a stream of job entries, job records in hashes, leases with fencing tokens.

Key schema (every key starts with REDIS_KEY_PREFIX, `p` below):

    {p}stream            stream  entries {payload: job JSON}, read by the consumer group "nodes"
    {p}job:{video_id}    hash    the job record: state, payload, token, lease, attempt:{token}, ...
    {p}idem:{key}        string  idempotency key -> video_id
    {p}running           zset    video_id -> lease expiry (ms)
    {p}delayed           zset    video_id -> when its retry is due (ms)
    {p}dlq               zset    video_id (or entry:{stream id}) -> when it was dead-lettered (ms)
    {p}finished          zset    video_id -> when it succeeded (ms); cleanup ages records by it
    {p}refusals          hash    "{node}|{kind}" -> fenced writes refused (holders that lost a lease)
    {p}lock:{name}       string  cleanup schedule locks

Every state change is one Lua script in node/lua/ (its header lists its KEYS, ARGV and keys), so a
node may die at any instruction and Redis stays consistent. An entry is acked only in the same
script that commits its outcome. Each claim bumps the job's fencing token; every later write
names its token and is refused once another claim has superseded it.

redis-py errors are translated at this boundary into node.errors' BrokerError and
QueueUnavailable; JobConflict and JobNotFound are the queue's InvalidInput cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from node.config import Settings
from node.errors import BrokerError, InvalidInput, JobConflict, JobNotFound, QueueUnavailable
from node.job import Job, parse_job
from node.records import JobRecord

#: The consumer group every node reads the stream with.
GROUP = "nodes"
#: bytes of a malformed entry kept in its dead-letter record.
DEAD_ENTRY_KEEP_BYTES = 4096

_SCRIPT_NAMES = ("submit", "claim", "heartbeat", "finish", "promote", "dead_letter", "unread",
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


@dataclass(frozen=True)
class ClaimOutcome:
    kind: str  # claimed | busy | skipped | exhausted | conflict
    claim: Claim | None = None


@dataclass(frozen=True)
class SubmitResult:
    video_id: str
    state: str
    created: bool


class Keys:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.stream, self.running, self.delayed = f"{prefix}stream", f"{prefix}running", f"{prefix}delayed"
        self.dlq, self.finished, self.refusals = f"{prefix}dlq", f"{prefix}finished", f"{prefix}refusals"

    def job(self, video_id: str) -> str:
        return f"{self.prefix}job:{video_id}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"


def connect(settings: Settings) -> redis.Redis:
    """A client with explicit timeouts and no hidden retries: the callers decide what to retry,
    and every script they call is safe to send again."""
    timeout = settings.redis_socket_timeout_s + settings.queue_block_ms / 1000  # blocking reads
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                socket_connect_timeout=settings.redis_socket_timeout_s,
                                retry=Retry(NoBackoff(), 0), health_check_interval=30)


def redact_url(url: str) -> str:
    """REDIS_URL for logs: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise QueueUnavailable(f"Redis unreachable: {type(e).__name__}: {e}") from e
    except redis.RedisError as e:
        raise BrokerError(f"Redis error: {type(e).__name__}: {e}") from e


def canonical_payload(job: Job) -> str:
    """The job as the queue stores and compares it: sorted keys, no None fields, no spaces."""
    return json.dumps(job.model_dump(mode="json", exclude_none=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def idempotent_video_id(key: str) -> str:
    """The video_id a submit with only an idempotency key gets: the same key, the same job."""
    return "idem_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def decode_entry(fields: dict[bytes, bytes], *, max_payload_bytes: int, max_text_chars: int) -> Job:
    """The Job in a stream entry, or InvalidInput with the code it is dead-lettered under."""
    if set(fields) != {b"payload"}:
        names = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise InvalidInput("malformed_entry", f"a queue entry has exactly one field, payload (got: {names[:200]})")
    raw = fields[b"payload"]
    if len(raw) > max_payload_bytes:
        raise InvalidInput("payload_too_large", f"payload is {len(raw)} bytes; the limit is {max_payload_bytes} "
                           "(QUEUE_MAX_PAYLOAD_BYTES)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput("invalid_json", f"payload is not UTF-8 JSON: {e}"[:300]) from None
    if isinstance(data, dict) and "video_id" not in data:
        # parse_job would invent one, and a redelivered entry would then become a second job
        raise InvalidInput("missing_field", "a queue entry's payload needs a video_id")
    return parse_job(data, max_text_chars=max_text_chars)


class RedisQueue:
    """One fleet's queue on one Redis. Thread-safe (redis-py pools connections)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.keys = Keys(settings.redis_key_prefix)
        self.client = client if client is not None else connect(settings)
        self._scripts = {name: self.client.register_script(src) for name, src in _LUA.items()}
        self._group_ready = False

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with _redis_errors():
            return self._scripts[name](keys=keys, args=args)

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (from id 0: entries written before
        the group existed are read too)."""
        with _redis_errors():
            try:
                self.client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
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
        payload = canonical_payload(job)
        if len(payload.encode()) > self.settings.queue_max_payload_bytes:
            raise InvalidInput("payload_too_large", f"the job is {len(payload.encode())} bytes of JSON; the "
                               f"limit is {self.settings.queue_max_payload_bytes} (QUEUE_MAX_PAYLOAD_BYTES)")
        if not self._group_ready:
            self.ensure_group()
        sha = hashlib.sha256(payload.encode()).hexdigest()
        kind, vid, state = _strs(self._run(
            "submit", [self.keys.job(job.video_id), self.keys.idem(key or ""), self.keys.stream],
            [job.video_id, payload, sha, key or ""]))
        if kind == "conflict":
            raise JobConflict(f"job {vid!r} already exists ({state}) with a different payload; "
                              "use another video_id or idempotency_key")
        if kind == "key_conflict":
            raise JobConflict(f"idempotency_key already names job {vid!r}")
        return SubmitResult(vid, state, created=kind == "created")

    # --- consumers -------------------------------------------------------------------------------

    def read(self, consumer: str, *, block_ms: int, count: int = 1) -> list[Entry]:
        """New entries for this consumer (XREADGROUP >), waiting up to block_ms for one."""
        if not self._group_ready:
            self.ensure_group()
        with _redis_errors():
            try:
                reply = self.client.xreadgroup(GROUP, consumer, {self.keys.stream: ">"}, count=count,
                                               block=block_ms)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self._group_ready = False  # Redis lost its data; recreate the group next time
                return []
        return [Entry(_str(eid), fields) for _, entries in (reply or []) for eid, fields in entries]

    def reclaim(self, consumer: str, *, count: int = 1) -> list[Entry]:
        """Entries whose holder went silent for a whole lease (XAUTOCLAIM), now this consumer's."""
        idle_ms = int(self.settings.job_lock_timeout * 1000)
        with _redis_errors():
            try:
                reply = self.client.xautoclaim(self.keys.stream, GROUP, consumer, idle_ms, "0-0", count=count)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self._group_ready = False
                return []
        # entries trimmed while pending come back as None; trimming never drops pending ones
        return [Entry(_str(eid), fields) for eid, fields in reply[1] if fields is not None]

    def claim(self, entry: Entry, job: Job, *, owner: str, node_id: str) -> ClaimOutcome:
        payload = canonical_payload(job)
        sha = hashlib.sha256(payload.encode()).hexdigest()
        sent = time.monotonic()
        reply = _strs(self._run(
            "claim", [self.keys.job(job.video_id), self.keys.stream, self.keys.running, self.keys.dlq],
            [entry.entry_id, GROUP, owner, node_id, int(self.settings.job_lock_timeout * 1000), payload, sha,
             self.settings.max_job_attempts, job.video_id]))
        if reply[0] != "claimed":
            return ClaimOutcome(reply[0])
        return ClaimOutcome("claimed", Claim(job.video_id, entry.entry_id, int(reply[1]), int(reply[2]),
                                             owner, node_id, job, sent))

    def heartbeat(self, claim: Claim, *, extend: bool = True, progress: dict | None = None) -> Fenced:
        """Extend the lease and/or write progress: written; replayed = this token already
        finished the job (nothing to keep alive); refused = the lease is lost."""
        lease_ms = int(self.settings.job_lock_timeout * 1000) if extend else 0
        return _FENCED[int(self._run(
            "heartbeat", [self.keys.job(claim.video_id), self.keys.stream, self.keys.running, self.keys.refusals],
            [claim.token, claim.owner, lease_ms, GROUP, json.dumps(progress) if progress else "",
             claim.node_id]))]

    def finish(self, claim: Claim, outcome: str, *, result: dict | None = None, error: dict | None = None,
               delay_s: float = 0.0) -> Fenced:
        """End this attempt: outcome succeeded | retry | failed | dead | released (fenced)."""
        k = self.keys
        code, _state = self._run(
            "finish", [k.job(claim.video_id), k.stream, k.running, k.delayed, k.dlq, k.finished, k.refusals],
            [claim.token, claim.owner, GROUP, outcome, json.dumps(result) if result else "",
             json.dumps(error) if error else "", int(delay_s * 1000), claim.node_id])
        return _FENCED[int(code)]

    def dead_letter(self, entry: Entry, code: str, message: str) -> str:
        """A malformed entry into the DLQ (as entry:{id}), acked; returns the record id."""
        record_id = f"entry:{entry.entry_id}"
        raw = json.dumps({k.decode(errors="replace"): v[:DEAD_ENTRY_KEEP_BYTES].decode(errors="replace")
                          for k, v in entry.fields.items()}, ensure_ascii=False)[:DEAD_ENTRY_KEEP_BYTES]
        error = json.dumps({"code": code, "message": message, "retryable": False})
        self._run("dead_letter", [self.keys.job(record_id), self.keys.stream, self.keys.dlq],
                  [entry.entry_id, GROUP, record_id, raw, error])
        return record_id

    def unread(self, entry: Entry, video_id: str) -> bool:
        """Give back an entry read but not claimed (draining): any node can read it at once."""
        return bool(self._run("unread", [self.keys.job(video_id), self.keys.stream], [entry.entry_id, GROUP]))

    def promote_due(self, limit: int = 100) -> int:
        """Move retries that are due back onto the stream; returns how many this call moved."""
        with _redis_errors():
            due = self.client.zrangebyscore(self.keys.delayed, "-inf", int(time.time() * 1000), start=0, num=limit)
        moved = 0
        for vid in map(_str, due):
            moved += int(self._run("promote", [self.keys.job(vid), self.keys.delayed, self.keys.stream], [vid]))
        return moved

    # --- operators -------------------------------------------------------------------------------

    def record(self, video_id: str) -> JobRecord | None:
        with _redis_errors():
            h = self.client.hgetall(self.keys.job(video_id))
        return JobRecord.from_hash({_str(k): _str(v) for k, v in h.items()}) if h else None

    def index(self, name: str, *, max_ms: float = float("inf")) -> list[tuple[str, int]]:
        """Members of a zset index (dlq, finished, running, delayed) scored up to max_ms, oldest first."""
        with _redis_errors():
            rows = self.client.zrangebyscore(getattr(self.keys, name), "-inf",
                                             "+inf" if max_ms == float("inf") else int(max_ms), withscores=True)
        return [(_str(m), int(s)) for m, s in rows]

    def dlq_retry(self, video_id: str) -> None:
        code = int(self._run("dlq_retry", [self.keys.job(video_id), self.keys.dlq, self.keys.stream], [video_id]))
        if code == -1:
            raise InvalidInput("not_retryable", f"{video_id} is a malformed queue entry; fix it and submit a job")
        if code == 0:
            if self.record(video_id) is None:
                raise JobNotFound(video_id)
            raise InvalidInput("not_in_dlq", f"job {video_id!r} is not failed or dead")

    def delete_job(self, video_id: str, *, index: str, cutoff_ms: int, states: tuple[str, ...]) -> bool:
        """Delete a record still in one of `states` and finished at or before cutoff_ms."""
        with _redis_errors():
            key = self.client.hget(self.keys.job(video_id), "idempotency_key")
        return bool(self._run("delete_job", [self.keys.job(video_id), self.keys.idem(_str(key or b"")),
                                             getattr(self.keys, index)],
                              [video_id, cutoff_ms, ",".join(states)]))

    def trim_stream(self, *, dry_run: bool = False) -> tuple[int, str]:
        """Drop entries every group is done with; returns (entries dropped, MINID kept)."""
        n, minid = self._run("trim_stream", [self.keys.stream], ["1" if dry_run else "0"])
        return int(n), _str(minid)

    def pending_count(self) -> int:
        with _redis_errors():
            try:
                return int(self.client.xpending(self.keys.stream, GROUP)["pending"])
            except redis.ResponseError:
                return 0

    def idle_consumers(self, min_idle_ms: int) -> list[str]:
        """Consumers (node/slot names) with nothing pending, silent for at least min_idle_ms."""
        with _redis_errors():
            try:
                rows = self.client.xinfo_consumers(self.keys.stream, GROUP)
            except redis.ResponseError:  # no stream or group yet
                return []
        return [_str(c["name"]) for c in rows if int(c["pending"]) == 0 and int(c["idle"]) >= min_idle_ms]

    def delete_consumer(self, name: str) -> None:
        with _redis_errors():
            self.client.xgroup_delconsumer(self.keys.stream, GROUP, name)

    def refusals(self) -> dict[str, int]:
        """Fenced writes refused, by "{node}|{kind}" (kind: commit, finish, progress, heartbeat)."""
        with _redis_errors():
            return {_str(k): int(v) for k, v in self.client.hgetall(self.keys.refusals).items()}

    def try_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take a lock for ttl_s unless someone holds it; never released early (a schedule slot)."""
        with _redis_errors():
            return bool(self.client.set(self.keys.lock(name), owner, nx=True, px=max(1, int(ttl_s * 1000))))

    def server_time_ms(self) -> int:
        with _redis_errors():
            seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _strs(values: list) -> list:
    return [_str(v) if isinstance(v, bytes) else v for v in values]


class RedisGenerationStore:
    """providers.base.GenerationStore on the job record (field `generation:{provider}`), so a job
    retried on any node resumes the provider generation it already paid for."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.keys = Keys(settings.redis_key_prefix)
        self.client = client if client is not None else connect(settings)

    def get(self, video_id: str, provider: str) -> str | None:
        with _redis_errors():
            value = self.client.hget(self.keys.job(video_id), f"generation:{provider}")
        return value.decode() if isinstance(value, bytes) else value

    def put(self, video_id: str, provider: str, generation_id: str) -> None:
        with _redis_errors():
            self.client.hset(self.keys.job(video_id), f"generation:{provider}", generation_id)
