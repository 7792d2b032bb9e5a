"""The wire format of a queue entry: one stream field, `payload`, holding the job as JSON.

Any producer (the CLI, the HTTP front, a client in another language through `redis-cli XADD`)
writes entries in this form, to the stream of the job's lane; `decode_entry` is how a node reads
one back, with a stable error code for each way an entry can be malformed (the entry is then
dead-lettered, never retried). The payload's JSON Schema, generated from the job model, is
committed as node/assets/job.schema.json (`job_json_schema()`; `lipsync-node schema` prints it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from node.errors import InvalidInput
from node.job import Job, parse_job

SCHEMA_PATH = Path(__file__).parent / "assets" / "job.schema.json"


def canonical_payload(job: Job) -> str:
    """The job as the queue stores and compares it: sorted keys, no None fields, no spaces."""
    return json.dumps(job.model_dump(mode="json", exclude_none=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def idempotent_video_id(key: str) -> str:
    """The video_id a submit with only an idempotency key gets: the same key, the same job."""
    return "idem_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def decode_entry(fields: dict[bytes, bytes], *, max_payload_bytes: int, max_text_chars: int) -> Job:
    """The Job in a stream entry, or InvalidInput with the code it is dead-lettered under."""
    if set(fields) != {b"payload"}:
        names = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise InvalidInput("malformed_entry", f"a queue entry has exactly one field, payload (got: {names[:200]})")
    raw = fields[b"payload"]
    if len(raw) > max_payload_bytes:
        raise InvalidInput("payload_too_large", f"payload is {len(raw)} bytes; the limit is {max_payload_bytes} "
                           "(QUEUE_MAX_PAYLOAD_BYTES)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput("invalid_json", f"payload is not UTF-8 JSON: {e}"[:300]) from None
    if isinstance(data, dict) and "video_id" not in data:
        # parse_job would invent one, and a redelivered entry would then become a second job
        raise InvalidInput("missing_field", "a queue entry's payload needs a video_id")
    return parse_job(data, max_text_chars=max_text_chars)


def job_json_schema() -> dict:
    """The JSON Schema of a queue entry's payload (and of `POST /v1/jobs` bodies)."""
    schema = Job.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://github.com/lipsync-node/lipsync-node/node/assets/job.schema.json",
            "title": "lipsync-node job",
            "description": "The payload of a stream entry {payload: <this, as JSON>} in REDIS_KEY_PREFIX + "
                           "'stream' (normal lane), 'stream:rush' or 'stream:bulk'; also the body of "
                           "POST /v1/jobs (where video_id may be left out).",
            **{k: v for k, v in schema.items() if k != "title"}}
