"""Audio cache: a hit's latency against a miss's, through the real ElevenLabs client (official
SDK) talking to the loopback mock, which answers at once. A miss here is therefore the client's
own cost (HTTP, SDK, normalising, probing the audio, storing the entry); against the live API
add its generation time (about a second per sentence) to the miss.

    python bench/audio_cache.py [--lines 20]

Prints miss and hit medians in milliseconds and `miss_vs_hit=N.Nx`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.cache import AudioCache, CachedTTS  # noqa: E402
from node.personas import load_persona  # noqa: E402
from providers.elevenlabs import ElevenLabsTTS  # noqa: E402
from providers.http import ApiKey  # noqa: E402
from tests.mocks import ElevenLabsMock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20, help="distinct lines, each spoken twice")
    args = parser.parse_args()
    persona = load_persona("papa_noel", environ={})
    with ElevenLabsMock() as mock, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tts = CachedTTS(ElevenLabsTTS(ApiKey(mock.api_key), base_url=mock.url), AudioCache(work / "cache", 64 << 20))
        tts.synthesize("burn-in: first SDK call, first ffprobe", persona, work)  # burn-in
        tts.synthesize("burn-in: first SDK call, first ffprobe", persona, work)
        misses, hits = [], []
        for i in range(args.lines):
            line = f"¡Jo, jo, jo! Línea número {i} para el banco de pruebas."
            for samples in (misses, hits):
                t0 = time.perf_counter()
                spoken = tts.synthesize(line, persona, work)
                samples.append((time.perf_counter() - t0) * 1000)
            assert spoken.note == "audio cache hit"
        assert mock.counts["tts"] == args.lines + 1
    miss, hit = statistics.median(misses), statistics.median(hits)
    print(f"lines={args.lines} miss_ms={miss:.1f} hit_ms={hit:.2f} miss_vs_hit={miss / hit:.1f}x")


if __name__ == "__main__":
    main()
