"""A job's audio or avatar given as a URL: `https://` (or `http://`) or `s3://bucket/key`.

The file is fetched into the job's work folder before anything reads it, under the same rules for
every node: at most INPUT_MAX_MB, a content type of the expected kind, no redirects followed, and
for http(s) only public addresses unless URL_ALLOWLIST names them (node/input_guard.py: checked,
then the request goes to the checked address). Then the ordinary media checks run on the file
(probe, streams, duration, size), so a URL is never trusted further than a local file is.

A bad URL is the client's input (dead at once, never retried): not allowed, not found (4xx), too
large, the wrong type, a redirect. The origin failing (5xx, timeouts, refused connections) is
transient: the job is retried.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from node.config import Settings
from node.errors import InvalidInput, RenderFailed
from node.input_guard import Allowlist, check_url, pinned, url_for_logs

log = logging.getLogger(__name__)

#: Content types accepted per kind (a generic binary type too: many stores serve that).
ACCEPTED_TYPES = {"audio": ("audio/", "application/octet-stream", "binary/octet-stream"),
                  "avatar": ("video/", "image/", "application/octet-stream", "binary/octet-stream")}
#: The suffix a fetched file keeps when the URL's has none (decoders and avatar lookup use it).
DEFAULT_SUFFIX = {"audio": ".audio", "avatar": ".mp4"}
CHUNK_BYTES = 1 << 20


class InputUnavailable(RenderFailed):
    code = "input_unavailable"


def fetch_input(url: str, workdir: Path, kind: str, settings: Settings) -> Path:
    """The file behind `url` in `workdir`, checked as the module docstring says."""
    suffix = Path(urlsplit(url).path).suffix.lower() or DEFAULT_SUFFIX[kind]
    dest = Path(workdir) / f"input-{kind}{suffix}"
    limit = settings.input_max_mb * (1 << 20)
    if url.lower().startswith("s3://"):
        _fetch_s3(url, dest, kind, limit, settings)
    else:
        _fetch_http(url, dest, kind, limit, Allowlist.parse(settings.url_allowlist))
    log.info("%s fetched from %s (%d bytes)", kind, url_for_logs(url), dest.stat().st_size)
    return dest


def _fetch_http(url: str, dest: Path, kind: str, limit: int, allowlist: Allowlist) -> None:
    address = check_url(url, allowlist, field_name=kind)
    target, headers, extensions = pinned(url, address)
    timeout = httpx.Timeout(30.0, connect=5.0)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client, \
                client.stream("GET", target, headers=headers, extensions=extensions) as response:
            if response.is_redirect:
                raise InvalidInput("input_redirect", f"{kind}: {url_for_logs(url)} answered with a redirect; give the "
                                   "final URL (redirects are not followed)")
            if response.status_code >= 500:
                raise InputUnavailable(f"{kind}: {url_for_logs(url)} answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise InvalidInput("input_not_found", f"{kind}: {url_for_logs(url)} answered HTTP {response.status_code}")
            _check_type(response.headers.get("Content-Type", ""), kind, url)
            _check_size(response.headers.get("Content-Length"), kind, limit)
            written = 0
            with open(dest, "wb") as out:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    written += len(chunk)
                    if written > limit:  # a server that lied about, or left out, its length
                        raise _too_large(kind, limit)
                    out.write(chunk)
    except httpx.HTTPError as e:
        raise InputUnavailable(f"{kind}: {url_for_logs(url)} unreachable: {type(e).__name__}") from e


def _fetch_s3(url: str, dest: Path, kind: str, limit: int, settings: Settings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from node.storage import s3_client, split_s3_uri

    bucket, key = split_s3_uri(url)
    client = s3_client(settings)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        _check_type(head.get("ContentType", ""), kind, url)
        _check_size(head.get("ContentLength"), kind, limit)
        client.download_file(bucket, key, str(dest))
    except ClientError as e:
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if 400 <= status < 500:
            raise InvalidInput("input_not_found", f"{kind}: s3://{bucket}/{key} answered HTTP {status}") from e
        raise InputUnavailable(f"{kind}: s3://{bucket}/{key}: {e.response.get('Error', {}).get('Code')}") from e
    except BotoCoreError as e:
        raise InputUnavailable(f"{kind}: s3://{bucket}/{key} unreachable: {type(e).__name__}") from e


def _check_type(content_type: str, kind: str, url: str) -> None:
    main = content_type.split(";")[0].strip().lower()
    if not main.startswith(ACCEPTED_TYPES[kind]):
        raise InvalidInput("input_wrong_type", f"{kind}: {url_for_logs(url)} is {main or 'untyped'}, not "
                           f"{' or '.join(t.rstrip('/') for t in ACCEPTED_TYPES[kind][:2])}")


def _check_size(length, kind: str, limit: int) -> None:
    if length is not None and str(length).isdigit() and int(length) > limit:
        raise _too_large(kind, limit)


def _too_large(kind: str, limit: int) -> InvalidInput:
    return InvalidInput("input_too_large", f"{kind} is larger than {limit >> 20} MiB (INPUT_MAX_MB)")
