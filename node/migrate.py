"""`lipsync-node migrate-keys`: move a fleet's keys from the names of before the hash tag
("lipsync:stream") to the tagged ones ("{lipsync}:stream"), once, with the fleet stopped.

RENAME keeps every key whole (a stream with its consumer group and pending entries, a job record
with its history); RENAMENX never overwrites a key the new names already have. It runs on a single
Redis (the only kind the old names worked on); a cluster starts with the tagged names.
"""

from __future__ import annotations

import re

from node.queue import Keys, tagged
from node.redis_conn import redis_errors


def migrate_keys(client, prefix: str, *, dry_run: bool = False) -> list[tuple[str, str]]:
    """(old, new) of every key moved (or that would be, with `dry_run`)."""
    old_prefix, new_prefix = Keys(prefix, hash_tag=False).prefix, tagged(prefix)
    if old_prefix == new_prefix:
        return []
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", old_prefix) + "*"  # MATCH is a glob: escape the prefix
    moved = []
    with redis_errors():
        for raw in client.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            new = new_prefix + key[len(old_prefix):]
            if dry_run or client.renamenx(key, new):
                moved.append((key, new))
    return moved
