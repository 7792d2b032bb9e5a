"""The Redis connection every fleet component uses, and the translation of redis-py's errors.

Explicit timeouts and no hidden retries (as httpx clients are built): the callers decide what to
retry, and every script they call is safe to send again.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from node.config import Settings
from node.errors import BrokerError, QueueUnavailable


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
def redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise QueueUnavailable(f"Redis unreachable: {type(e).__name__}: {e}") from e
    except redis.RedisError as e:
        raise BrokerError(f"Redis error: {type(e).__name__}: {e}") from e
