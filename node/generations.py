"""Provider generation ids on the job record, so a job retried on any node resumes the remote
generation it already paid for (providers.base.GenerationStore)."""

from __future__ import annotations

import redis

from node.config import Settings
from node.queue import Keys
from node.redis_conn import connect, redis_errors


class RedisGenerationStore:
    """providers.base.GenerationStore on the job record (field `generation:{provider}`), so a job
    retried on any node resumes the provider generation it already paid for."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.keys = Keys(settings.redis_key_prefix)
        self.client = client if client is not None else connect(settings)

    def get(self, video_id: str, provider: str) -> str | None:
        with redis_errors():
            value = self.client.hget(self.keys.job(video_id), f"generation:{provider}")
        return value.decode() if isinstance(value, bytes) else value

    def put(self, video_id: str, provider: str, generation_id: str) -> None:
        with redis_errors():
            self.client.hset(self.keys.job(video_id), f"generation:{provider}", generation_id)
