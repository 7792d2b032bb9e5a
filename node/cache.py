"""The audio cache: the same line in the same voice is paid for once.

Layout under AUDIO_CACHE_DIR:

    index.json          {"version": 1, "entries": {key: {"file", "size", "md5", "last_used"}}}
    entries/KEY.EXT     the audio, written to a temp name and renamed into place
    entries/KEY.json    the entry's own record (file, size, md5): the index is rebuilt from these
    .lock               a file lock: several worker processes on one host share the cache

key = MD5 of the canonical JSON of everything that changes the audio (provider, voice, model,
voice settings, output format, text). Every hit is checked against the stored size and MD5; a
corrupt entry is dropped and counted as a miss, never served. An index that does not parse is
rebuilt from the per-entry records. Past AUDIO_CACHE_MAX_SIZE_MB, least-recently-used entries go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from node.personas import Persona
from providers import metrics
from providers.base import ProviderError, SpeechFile

log = logging.getLogger(__name__)

INDEX_VERSION = 1
#: seconds to wait for another process holding the cache lock before giving up on the cache.
LOCK_TIMEOUT_S = 10.0


def cache_key(fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.md5(canonical.encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    """Plain counters for this process (the Prometheus counters aggregate the same events)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt: int = 0


class AudioCache:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.entries = self.folder / "entries"
        self.index_path = self.folder / "index.json"
        self._lock = FileLock(str(self.folder / ".lock"), timeout=LOCK_TIMEOUT_S, thread_local=False)
        self._thread_lock = threading.Lock()
        self.stats = CacheStats()

    # --- public ------------------------------------------------------------------------------

    def get(self, key: str, dest_dir: Path) -> Path | None:
        """A private copy of the entry in dest_dir (eviction by another process cannot pull it
        from under the job), or None on a miss or a corrupt entry."""
        with self._locked():
            index = self._read_index()
            entry = index["entries"].get(key)
            data = self._verified(key, entry) if entry else None
            if data is None:
                if entry:
                    self._drop(index, key)
                    self._write_index(index)
                self._count("miss")
                return None
            entry["last_used"] = time.time()
            self._write_index(index)
        self._count("hit")
        out = Path(dest_dir) / f"cached-{uuid.uuid4().hex[:8]}{Path(entry['file']).suffix}"
        out.write_bytes(data)
        return out

    def put(self, key: str, src: Path) -> None:
        data = Path(src).read_bytes()
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: never worth evicting everything for
        name = f"{key}{Path(src).suffix or '.bin'}"
        record = {"file": name, "size": len(data), "md5": hashlib.md5(data).hexdigest()}
        with self._locked():
            self.entries.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.entries / name, data)
            _atomic_write(self.entries / f"{key}.json", json.dumps(record).encode())
            index = self._read_index()
            index["entries"][key] = record | {"last_used": time.time()}
            self._evict(index, keep=key)
            self._write_index(index)

    def total_bytes(self) -> int:
        with self._locked():
            return sum(e["size"] for e in self._read_index()["entries"].values())

    # --- internals (called with the lock held) --------------------------------------------------

    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        return _Both(self._thread_lock, self._lock)

    def _read_index(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("version") != INDEX_VERSION or not isinstance(index.get("entries"), dict):
                raise ValueError("unexpected index layout")
            for entry in index["entries"].values():  # each entry must have the fields we use
                if not (isinstance(entry.get("file"), str) and isinstance(entry.get("size"), int)
                        and isinstance(entry.get("md5"), str) and isinstance(entry.get("last_used"), (int, float))):
                    raise ValueError("index entry without file, size, md5 or last_used")
            return index
        except FileNotFoundError:
            return self._rebuild(quiet=True)
        except (ValueError, TypeError, KeyError, AttributeError):
            self._note_corrupt("index")
            return self._rebuild(quiet=False)

    def _rebuild(self, quiet: bool) -> dict:
        """The index from the per-entry records; last use from the audio file's mtime."""
        index = {"version": INDEX_VERSION, "entries": {}}
        for record_path in sorted(self.entries.glob("*.json")) if self.entries.is_dir() else []:
            key = record_path.stem
            try:
                record = json.loads(record_path.read_text())
                audio = self.entries / record["file"]
                index["entries"][key] = {"file": record["file"], "size": int(record["size"]),
                                         "md5": str(record["md5"]), "last_used": audio.stat().st_mtime}
            except (OSError, ValueError, KeyError, TypeError):
                record_path.unlink(missing_ok=True)
        if not quiet:
            log.warning("audio cache: index rebuilt from %d entry records", len(index["entries"]))
        self._write_index(index)
        return index

    def _verified(self, key: str, entry: dict) -> bytes | None:
        try:
            data = (self.entries / entry["file"]).read_bytes()
        except OSError:
            return None
        if len(data) != entry["size"] or hashlib.md5(data).hexdigest() != entry["md5"]:
            self._note_corrupt("entry")
            log.warning("audio cache: entry %s is corrupt (size or checksum differs); dropped", key)
            return None
        return data

    def _drop(self, index: dict, key: str) -> None:
        entry = index["entries"].pop(key, None)
        if entry:
            (self.entries / entry["file"]).unlink(missing_ok=True)
        (self.entries / f"{key}.json").unlink(missing_ok=True)

    def _evict(self, index: dict, keep: str) -> None:
        total = sum(e["size"] for e in index["entries"].values())
        for key, entry in sorted(index["entries"].items(), key=lambda kv: kv[1]["last_used"]):
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            total -= entry["size"]
            self._drop(index, key)
            self.stats.evictions += 1
            metrics.AUDIO_CACHE_EVICTIONS.inc()

    def _write_index(self, index: dict) -> None:
        _atomic_write(self.index_path, json.dumps(index, separators=(",", ":")).encode())

    def _note_corrupt(self, what: str) -> None:
        self.stats.corrupt += 1
        metrics.AUDIO_CACHE_CORRUPT.labels(what).inc()

    def _count(self, result: str) -> None:
        if result == "hit":
            self.stats.hits += 1
        else:
            self.stats.misses += 1
        metrics.AUDIO_CACHE_LOOKUPS.labels(result).inc()


class _Both:
    """The thread lock, then the file lock (filelock alone is per process, not per thread)."""

    def __init__(self, thread_lock: threading.Lock, file_lock: FileLock):
        self._t, self._f = thread_lock, file_lock

    def __enter__(self):
        self._t.acquire()
        try:
            self._f.acquire()
        except BaseException:
            self._t.release()
            raise

    def __exit__(self, *exc):
        try:
            self._f.release()
        finally:
            self._t.release()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CachedTTS:
    """A TextToSpeech that answers from the audio cache and fills it on a miss.

    A hit is served even while the provider's circuit is open: cached lines keep the real voice
    when the provider is down. Cache trouble (disk full, lock timeout) never fails the job."""

    def __init__(self, inner, cache: AudioCache):
        self.inner, self.cache, self.name = inner, cache, inner.name

    def unavailable_reason(self) -> str | None:
        return self.inner.configured_reason()

    def synthesize(self, text: str, persona: Persona, out_dir: Path) -> SpeechFile:
        key = cache_key(self.inner.cache_identity(text, persona))
        try:
            hit = self.cache.get(key, out_dir)
        except (OSError, TimeoutError) as e:
            log.warning("audio cache unavailable (%s); calling %s", type(e).__name__, self.name)
            hit = None
        if hit is not None:
            return SpeechFile(path=hit, provider=self.name, note="audio cache hit")
        reason = self.inner.unavailable_reason()
        if reason:  # e.g. the circuit is open
            raise ProviderError("tts_unavailable", reason, provider_fault=False)
        spoken = self.inner.synthesize(text, persona, out_dir)
        try:
            self.cache.put(key, spoken.path)
        except (OSError, TimeoutError) as e:
            log.warning("audio cache: could not store an entry (%s)", type(e).__name__)
        return spoken

    def __repr__(self) -> str:
        return f"CachedTTS({self.inner!r})"
