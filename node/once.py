"""One preparation per key at a time within this process.

Render slots that meet the same new avatar at once wait for the first slot's decode or face
preparation and then read its cache, instead of repeating the work (with four slots, four times
the face detection). Across processes, temporary names carry the pid and results are published by
an atomic rename, so the worst case there is duplicated work, never a torn file.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# One lock per key ever prepared by this process: a few hundred bytes per avatar, never evicted,
# because a lock dropped while a slot waits on it would let a second preparation start.
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


@contextmanager
def one_at_a_time(key: str) -> Iterator[None]:
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield
