"""The Redis connection every fleet component uses, and the translation of redis-py's errors.

REDIS_URL forms (the password, where there is one, is never logged: `redact_url`):

    redis://[user:password@]host:6379/0          one server (or a managed primary endpoint)
    rediss://...                                 the same over TLS
    redis+cluster://[user:password@]host:6379    Redis Cluster (ElastiCache cluster mode, ...):
                                                 any node; the others are discovered
    redis+sentinel://[:password@]h1:26379,h2:26379/service[/db]
                                                 Sentinel: the current primary of `service`

Every key of a fleet carries one hash tag (node/queue.py's Keys), so a queue lives in one slot and
each Lua script's keys are on one node of a cluster. Explicit timeouts and no hidden retries (as
httpx clients are built): the callers decide what to retry, and every script is safe to send again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from node.config import Settings
from node.errors import BrokerError, QueueUnavailable


def connect(settings: Settings) -> redis.Redis:
    """A client for REDIS_URL (a server, a cluster or a Sentinel-managed primary)."""
    timeout = settings.redis_socket_timeout_s + settings.queue_block_ms / 1000  # blocking reads
    options = dict(socket_timeout=timeout, socket_connect_timeout=settings.redis_socket_timeout_s)
    url = settings.redis_url
    scheme = urlsplit(url).scheme
    if scheme in ("redis+cluster", "rediss+cluster"):
        from redis.cluster import RedisCluster

        # a moved slot or a failed-over primary is followed by redis-py itself (a topology
        # refresh, not a retry of our commands)
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if scheme == "redis+sentinel":
        return _sentinel_primary(url, options)
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), health_check_interval=30, **options)


def _sentinel_primary(url: str, options: dict) -> redis.Redis:
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// needs the service name: redis+sentinel://h1:26379,h2:26379/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(hosts, socket_timeout=options["socket_connect_timeout"])
    return sentinel.master_for(path[0], db=db, password=parts.password, **options)


def redact_url(url: str) -> str:
    """REDIS_URL for logs: the password replaced by *** (also in a Sentinel URL's host list)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hosts}"))


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise QueueUnavailable(f"Redis unreachable: {type(e).__name__}: {e}") from e
    except redis.RedisError as e:
        raise BrokerError(f"Redis error: {type(e).__name__}: {e}") from e


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_strs(values: list) -> list:
    return [as_str(v) if isinstance(v, bytes) else v for v in values]


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def stream_fields(flat: list) -> dict[bytes, bytes]:
    """A script's flat [field, value, ...] reply as the dict redis-py gives for stream entries."""
    return {as_bytes(flat[i]): as_bytes(flat[i + 1]) for i in range(0, len(flat), 2)}
