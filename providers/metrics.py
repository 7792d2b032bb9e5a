"""Prometheus counters for providers, the audio cache and the strategy chain.

Registered once, in the default registry, so the node's metrics endpoint exports them with
`prometheus_client.generate_latest()`. Labels are names and fixed enums only (never keys, URLs
or messages), so a secret cannot reach the metrics output and cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: One provider call (a TTS request, or a whole generation: create, poll, download).
PROVIDER_CALLS = Counter("lipsync_provider_calls_total", "Provider calls by outcome",
                         ["provider", "outcome"])  # outcome: succeeded | failed | circuit_open
#: Waits before a retry inside one call, by failure kind (concurrency, rate, busy, transient).
PROVIDER_RETRIES = Counter("lipsync_provider_retries_total", "Provider request retries by failure kind",
                           ["provider", "kind"])
CIRCUIT_OPEN = Gauge("lipsync_provider_circuit_open", "1 while the provider's circuit breaker is open",
                     ["provider"])

AUDIO_CACHE_LOOKUPS = Counter("lipsync_audio_cache_lookups_total", "Audio cache lookups", ["result"])  # hit|miss
AUDIO_CACHE_EVICTIONS = Counter("lipsync_audio_cache_evictions_total", "Entries evicted by the size bound")
AUDIO_CACHE_CORRUPT = Counter("lipsync_audio_cache_corrupt_total",
                              "Corrupt cache entries or index files detected and dropped", ["what"])  # entry|index

#: Every step the chain recorded: the strategy (stage) and provider used, and how it ended.
CHAIN_STEPS = Counter("lipsync_chain_steps_total", "Strategy-chain steps by outcome",
                      ["stage", "provider", "outcome"])

#: The sync confidence of each scored lip-synced output (node/sync.py), by engine or provider.
SYNC_CONFIDENCE = Histogram("lipsync_sync_confidence", "SyncNet-expert sync confidence of lip-synced outputs",
                            ["provider"], buckets=(0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))
