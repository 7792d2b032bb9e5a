"""The avatar cache across a fleet, and its size on each node.

`AVATAR_CACHE_DIR/<content key>/` holds what a node derived from one base video: the decoded frames
(`frames.u8`, fast to redo and large: never shared) and each engine's preparation (the face track
`face-track-*.npz`, MuseTalk's `musetalk-*/` folder: slow to redo, small). Every name there is keyed
by the engine's parameters, so a file made by any node with the same weights is the one this node
would make.

With STORAGE_TYPE=s3 the preparation is shared (`AvatarCacheSync`): before a job, a node fetches
what the fleet has published for the avatar and it lacks; after the job, it publishes what it made
that the fleet lacks (a folder as one tar object, so it arrives whole). A second node's first job
on an avatar then detects no faces at all.

Locally the cache stays under AVATAR_CACHE_MAX_SIZE_MB: whole avatars are evicted, least recently
used first (a folder's mtime is touched on every use), never the one in use.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

from node.config import Settings
from node.once import one_at_a_time

log = logging.getLogger(__name__)

#: What is never shared: the decoded frames and their index (every node decodes them itself).
LOCAL_ONLY = {"frames.u8", "frames.json"}


class AvatarCacheSync:
    """Prepared avatars on the fleet's S3 store, under S3_AVATAR_PREFIX<content key>/."""

    def __init__(self, settings: Settings, client=None):
        from node.storage import s3_client

        self.bucket, self.prefix = settings.s3_bucket, settings.s3_avatar_prefix
        self.cache_dir = Path(settings.avatar_cache_dir)
        self.client = client or s3_client(settings)

    def fetch(self, key: str) -> list[str]:
        """Download what the fleet has for avatar `key` and this node lacks; returns their names."""
        folder = self.cache_dir / key
        got = []
        for name in self._remote(key):
            local = folder / name.removesuffix(".tar")
            if local.exists() or name in LOCAL_ONLY:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}{key}/{name}")["Body"].read()
            tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
            try:
                if name.endswith(".tar"):
                    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                        _extract(tar, tmp)
                    os.replace(tmp / local.name, local)
                else:
                    (tmp / name).write_bytes(body)
                    os.replace(tmp / name, local)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            got.append(name)
        if got:
            log.info("avatar %s: fetched %s from the fleet's cache", key[:12], ", ".join(got))
        return got

    def publish(self, key: str) -> list[str]:
        """Upload what this node made for avatar `key` and the fleet lacks; returns their names."""
        folder = self.cache_dir / key
        if not folder.is_dir():
            return []
        remote = set(self._remote(key))
        sent = []
        for entry in sorted(folder.iterdir()):
            if entry.name in LOCAL_ONLY or entry.name.startswith(".") or entry.suffix == ".tmp":
                continue
            name = entry.name + (".tar" if entry.is_dir() else "")
            if name in remote:
                continue
            if entry.is_dir():
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    tar.add(entry, arcname=entry.name)
                body = buffer.getvalue()
            else:
                body = entry.read_bytes()
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{key}/{name}", Body=body)
            sent.append(name)
        if sent:
            log.info("avatar %s: published %s to the fleet's cache", key[:12], ", ".join(sent))
        return sent

    def _remote(self, key: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{key}/")
        return [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])]


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract with the "data" filter where Python has it (no links out of `dest`, no absolute
    paths, no devices); before 3.11.4, refuse any member that is not a plain file or folder."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in Path(member.name).parts:
            raise ValueError(f"unsafe member {member.name!r} in a fetched avatar cache")
    tar.extractall(dest)


def touch(folder: Path) -> None:
    """Mark an avatar's cache folder as just used (its mtime is the LRU clock)."""
    try:
        os.utime(folder)
    except OSError:
        pass


def evict(cache_dir: Path, max_bytes: int, keep: set[str] = frozenset()) -> list[str]:
    """Remove whole avatar folders, least recently used first, until the cache fits `max_bytes`;
    never those in `keep`. Returns the keys removed."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    folders = [(f.stat().st_mtime, f, _size(f)) for f in cache_dir.iterdir() if f.is_dir()]
    total = sum(size for _, _, size in folders)
    removed = []
    for _, folder, size in sorted(folders, key=lambda item: item[0]):
        if total <= max_bytes:
            break
        if folder.name in keep:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder.name)
    if removed:
        log.info("avatar cache: evicted %d avatar(s) to stay under %d MiB", len(removed), max_bytes >> 20)
    return removed


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class AvatarCacheKeeper:
    """What a Renderer does around each job: fetch the fleet's preparation of the avatar before,
    publish its own after, and keep the local cache under its bound without evicting an avatar any
    slot is using. Sharing is best effort: a store that is down costs a local preparation, never
    the job."""

    def __init__(self, settings: Settings):
        self.cache_dir = Path(settings.avatar_cache_dir)
        self.max_bytes = settings.avatar_cache_max_size_mb << 20
        self.sync = AvatarCacheSync(settings) if settings.storage_type == "s3" else None
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def opened(self, key: str) -> None:
        with self._lock:
            self._active[key] = self._active.get(key, 0) + 1
        if self.sync is not None:
            try:
                with one_at_a_time(f"avatar-fetch:{key}"):
                    self.sync.fetch(key)
            except Exception as e:  # noqa: BLE001 - the engines prepare locally instead
                log.warning("avatar %s: fleet cache not read (%s: %s)", key[:12], type(e).__name__, e)

    def finished(self, key: str, succeeded: bool) -> None:
        if self.sync is not None and succeeded:
            try:
                self.sync.publish(key)
            except Exception as e:  # noqa: BLE001 - another node publishes it, or this one next time
                log.warning("avatar %s: not published to the fleet cache (%s: %s)", key[:12], type(e).__name__, e)
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
            in_use = set(self._active) | {key}
        evict(self.cache_dir, self.max_bytes, keep=in_use)


