"""The audio cache: hits and misses, LRU at the size bound, corruption, several processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from node.cache import AudioCache, CachedTTS, cache_key
from providers.elevenlabs import ElevenLabsTTS
from tests.providers.conftest import fast_limits, key


def audio(tmp_path: Path, name: str, size: int, fill: bytes = b"a") -> Path:
    path = tmp_path / name
    path.write_bytes(fill * size)
    return path


def test_key_covers_everything_that_changes_the_audio():
    base = {"provider": "elevenlabs", "voice_id": "v", "model_id": "m", "output_format": "mp3_44100_128",
            "stability": 0.5, "similarity_boost": 0.75, "style": 0.0, "use_speaker_boost": True, "text": "hola"}
    keys = {cache_key(base)} | {cache_key(base | {k: v}) for k, v in [
        ("provider", "x"), ("voice_id", "w"), ("model_id", "n"), ("output_format", "pcm_16000"),
        ("stability", 0.6), ("style", 0.1), ("use_speaker_boost", False), ("text", "hola.")]}
    assert len(keys) == 9  # each field on its own gives another key
    assert cache_key(dict(reversed(list(base.items())))) == cache_key(base)  # order does not matter


def test_miss_then_hit_returns_a_private_copy(tmp_path):
    cache = AudioCache(tmp_path / "cache", max_bytes=10_000)
    assert cache.get("k1", tmp_path) is None
    cache.put("k1", audio(tmp_path, "a.mp3", 100))
    hit = cache.get("k1", tmp_path)
    assert hit.read_bytes() == b"a" * 100 and hit.suffix == ".mp3" and hit.parent == tmp_path
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_least_recently_used_entries_go_first_at_the_size_bound(tmp_path):
    # Given a 300-byte cache holding three 100-byte entries, k1 used most recently
    cache = AudioCache(tmp_path / "cache", max_bytes=300)
    for k in ("k1", "k2", "k3"):
        cache.put(k, audio(tmp_path, f"{k}.mp3", 100))
    assert cache.get("k1", tmp_path) is not None
    # When a fourth entry arrives
    cache.put("k4", audio(tmp_path, "k4.mp3", 100))
    # Then k2 (least recently used) was evicted, with its files; the rest stay within the bound
    assert cache.get("k2", tmp_path) is None
    assert all(cache.get(k, tmp_path) is not None for k in ("k1", "k3", "k4"))
    assert cache.total_bytes() <= 300 and cache.stats.evictions == 1
    assert not list((tmp_path / "cache" / "entries").glob("k2*"))


def test_a_corrupt_entry_is_dropped_not_served(tmp_path):
    cache = AudioCache(tmp_path / "cache", max_bytes=10_000)
    cache.put("k1", audio(tmp_path, "a.mp3", 100))
    # Given the entry's bytes flipped on disk (same size: only the checksum can tell)
    (tmp_path / "cache" / "entries" / "k1.mp3").write_bytes(b"b" * 100)
    before = REGISTRY.get_sample_value("lipsync_audio_cache_corrupt_total", {"what": "entry"}) or 0
    # Then it is a miss, the entry is gone, and the corruption was counted
    assert cache.get("k1", tmp_path) is None
    assert not (tmp_path / "cache" / "entries" / "k1.mp3").exists()
    assert REGISTRY.get_sample_value("lipsync_audio_cache_corrupt_total", {"what": "entry"}) == before + 1
    cache.put("k1", audio(tmp_path, "a.mp3", 100))  # and it can be stored again
    assert cache.get("k1", tmp_path).read_bytes() == b"a" * 100


@pytest.mark.parametrize("damage", [b"{not json", b'{"version": 1, "entries": []}', b"",
                                    b'{"version": 1, "entries": {"k1": {"file": 3}}}'])
def test_a_corrupt_index_is_rebuilt_from_the_entry_records(tmp_path, damage):
    cache = AudioCache(tmp_path / "cache", max_bytes=10_000)
    cache.put("k1", audio(tmp_path, "a.mp3", 100))
    cache.put("k2", audio(tmp_path, "b.mp3", 50, b"b"))
    (tmp_path / "cache" / "index.json").write_bytes(damage)
    # Then both entries are found again and the index parses
    assert cache.get("k1", tmp_path).read_bytes() == b"a" * 100
    assert cache.get("k2", tmp_path).read_bytes() == b"b" * 50
    assert set(json.loads((tmp_path / "cache" / "index.json").read_text())["entries"]) == {"k1", "k2"}


def _writer(folder: str, worker: int, count: int) -> None:
    cache = AudioCache(Path(folder), max_bytes=40 * 1000)
    tmp = Path(folder).parent / f"src-{worker}"
    tmp.mkdir(exist_ok=True)
    for i in range(count):
        src = tmp / f"{i}.mp3"
        src.write_bytes(bytes([worker]) * 1000)
        cache.put(f"w{worker}-{i}", src)
        cache.get(f"w{1 - worker}-{i}", tmp)  # read the other writer's entries meanwhile
        cache.put("shared", src)  # both processes write the same key


def test_two_processes_writing_at_once_leave_a_consistent_cache(tmp_path):
    folder = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(folder), w, 30)) for w in (0, 1)]
    [p.start() for p in procs]
    [p.join(60) for p in procs]
    assert [p.exitcode for p in procs] == [0, 0]
    # Then the index parses, respects the bound, and every indexed entry verifies
    index = json.loads((folder / "index.json").read_text())
    assert sum(e["size"] for e in index["entries"].values()) <= 40 * 1000
    cache = AudioCache(folder, max_bytes=40 * 1000)
    assert all(cache.get(k, tmp_path) is not None for k in index["entries"])
    assert cache.stats.corrupt == 0
    assert not list(folder.rglob("*.tmp"))  # no torn temp files left behind
    # And no update was lost: every audio file on disk is in the index (a lost index write would
    # leave orphans that count against the disk but never against the bound)
    on_disk = {p.name for p in (folder / "entries").iterdir() if p.suffix != ".json"}
    assert on_disk == {e["file"] for e in index["entries"].values()}


def test_cached_tts_calls_elevenlabs_once_per_line(el_mock, sleep, persona, tmp_path):
    tts = CachedTTS(ElevenLabsTTS(key(el_mock.api_key), base_url=el_mock.url, limits=fast_limits(), sleep=sleep),
                    AudioCache(tmp_path / "cache", 1 << 20))
    first = tts.synthesize("¡Feliz Navidad!", persona, tmp_path)
    second = tts.synthesize("¡Feliz Navidad!", persona, tmp_path)
    third = tts.synthesize("Otra línea", persona, tmp_path)
    assert el_mock.counts["tts"] == 2  # the second call was a hit
    assert second.note == "audio cache hit" and first.note is None and third.note is None
    assert second.path.read_bytes() == first.path.read_bytes()


def test_cache_hits_still_serve_while_the_provider_is_down(el_mock, sleep, persona, tmp_path):
    inner = ElevenLabsTTS(key(el_mock.api_key), base_url=el_mock.url, limits=fast_limits(circuit_failures=1),
                          sleep=sleep)
    tts = CachedTTS(inner, AudioCache(tmp_path / "cache", 1 << 20))
    tts.synthesize("hola", persona, tmp_path)
    inner.http.circuit.record_failure()  # the circuit opens
    assert inner.unavailable_reason().startswith("circuit open")
    assert tts.unavailable_reason() is None
    assert tts.synthesize("hola", persona, tmp_path).note == "audio cache hit"
