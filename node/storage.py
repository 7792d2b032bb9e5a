"""Where committed outputs live: the node's disk (`STORAGE_TYPE=local`) or an S3-compatible store
(`STORAGE_TYPE=s3`), so every node of a multi-host fleet hands out outputs from one place.

An attempt always renders to OUTPUT_DIR/{video_id}/{token}.mp4 first. `publish` then makes it the
attempt's output: locally that file itself; on S3 the object `S3_PREFIX{video_id}/{token}.mp4`,
uploaded (multipart past S3_MULTIPART_CHUNK_MB) before the fenced commit, and the local file
removed. The job record names the output of the token whose commit won, exactly as with the
local layout; a refused attempt's output is `discard`ed, and cleanup removes what a crash left.
An upload that fails (the store is down) is a transient error: the job is retried, nothing lost.

Credentials come from boto3's standard chain (environment, profile, instance role) and are never
logged or stored; `S3_ENDPOINT_URL` points at MinIO, Ceph, R2 or a test server.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from node.config import Settings
from node.errors import InvalidInput, RenderFailed

log = logging.getLogger(__name__)

#: An output key's last part: the attempt's fencing token.
TOKEN_KEY_RE = re.compile(r"^(?P<video_id>[^/]+)/(?P<token>\d+)\.mp4$")


class StorageUnavailable(RenderFailed):
    """The store did not take or give an object; transient (the job is retried)."""

    code = "storage_unavailable"


@dataclass(frozen=True)
class StoredOutput:
    video_id: str
    token: int
    uri: str
    age_s: float


class OutputStore(Protocol):
    def publish(self, local: Path, video_id: str, token: int) -> str:
        """Make `local` the attempt's output; returns what the job record names (a path or URI)."""

    def discard(self, output: str) -> None:
        """Remove an output that no commit names (a refused attempt)."""

    def presign(self, output: str) -> str | None:
        """A time-limited HTTPS URL for `output`, or None where there is none."""

    def outputs(self) -> list[StoredOutput]:
        """Every attempt output in the store (for cleanup)."""


class LocalStore:
    """Outputs stay where they were rendered (cleanup of OUTPUT_DIR is node/cleanup.py's)."""

    def publish(self, local: Path, video_id: str, token: int) -> str:
        return str(local)

    def discard(self, output: str) -> None:
        Path(output).unlink(missing_ok=True)

    def presign(self, output: str) -> str | None:
        return None

    def outputs(self) -> list[StoredOutput]:
        return []  # the files are OUTPUT_DIR's, cleaned per host


class S3Store:
    def __init__(self, settings: Settings, client=None):
        if not settings.s3_bucket:
            raise InvalidInput("invalid_setting", "STORAGE_TYPE=s3 needs S3_BUCKET")
        self.bucket, self.prefix = settings.s3_bucket, settings.s3_prefix
        self.presign_ttl_s = settings.s3_presign_ttl_s
        self.client = client or s3_client(settings)
        from boto3.s3.transfer import TransferConfig

        chunk = settings.s3_multipart_chunk_mb * (1 << 20)
        self._transfer = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk)

    def key(self, video_id: str, token: int) -> str:
        return f"{self.prefix}{video_id}/{token}.mp4"

    def publish(self, local: Path, video_id: str, token: int) -> str:
        key = self.key(video_id, token)
        with _store_errors(f"upload of {video_id} token {token}"):
            self.client.upload_file(str(local), self.bucket, key, Config=self._transfer,
                                    ExtraArgs={"ContentType": "video/mp4"})
        Path(local).unlink(missing_ok=True)  # the store's copy is the output now
        return f"s3://{self.bucket}/{key}"

    def discard(self, output: str) -> None:
        bucket, key = split_s3_uri(output)
        with _store_errors(f"delete of {key}"):
            self.client.delete_object(Bucket=bucket, Key=key)

    def presign(self, output: str) -> str | None:
        if not self.presign_ttl_s or not output.startswith("s3://"):
            return None
        bucket, key = split_s3_uri(output)
        with _store_errors(f"presign of {key}"):
            return self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                      ExpiresIn=int(self.presign_ttl_s))

    def outputs(self) -> list[StoredOutput]:
        import datetime as dt

        found = []
        now = dt.datetime.now(dt.timezone.utc)
        with _store_errors("listing"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    m = TOKEN_KEY_RE.match(obj["Key"][len(self.prefix):])
                    if m:
                        found.append(StoredOutput(m["video_id"], int(m["token"]), f"s3://{self.bucket}/{obj['Key']}",
                                                  (now - obj["LastModified"]).total_seconds()))
        return found


def with_output_url(record: dict, store: OutputStore) -> dict:
    """A job's `status --json` / API object, plus `output_url` (presigned) where the store gives one."""
    output = record.get("output")
    url = store.presign(output) if output and record.get("state") == "succeeded" else None
    return record | ({"output_url": url} if url else {})


def build_store(settings: Settings) -> OutputStore:
    return S3Store(settings) if settings.storage_type == "s3" else LocalStore()


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def s3_client(settings: Settings):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise InvalidInput("invalid_setting", "STORAGE_TYPE=s3 needs boto3: install the `s3` extra") from None
    # explicit timeouts and a bounded retry count (the job's own retries sit above these)
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"})
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region or None,
                        config=config)


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """botocore's errors as StorageUnavailable, naming the operation (never a credential)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, S3UploadFailedError) as e:
        raise StorageUnavailable(f"S3 {what} failed: {type(e).__name__}: {str(e)[:200]}") from e
