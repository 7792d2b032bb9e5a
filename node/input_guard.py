"""What a queued job may point at: public URLs only (no SSRF), and local files only inside roots.

A job on the queue comes from a client, not from the node's operator, so it must not make the node
fetch from, or post to, its own network (cloud metadata at 169.254.169.254, Redis on 127.0.0.1,
a private admin API), nor read files it was never meant to serve (another customer's base video,
/proc/self/environ). So:

- A URL (a `webhook_url`) must be http(s) and resolve only to public addresses, unless
  URL_ALLOWLIST names its host or a network holding its addresses. The check runs at submit (a
  clear error for the client) and again right before each request, which then goes to the very
  address that was checked (the name is not resolved twice: no DNS rebinding in between).
- A local path (`audio`, a path-like `avatar`) must resolve, symlinks and `..` included, inside
  AVATARS_DIR, INPUTS_DIR or the bundled avatars. `lipsync-node render` is the operator's own
  command and keeps accepting any path.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from node.errors import InvalidInput

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class Allowlist:
    """URL_ALLOWLIST: comma-separated host names and networks (CIDR) a URL may reach although
    they are private, e.g. "hooks.internal,10.20.0.0/16,127.0.0.1"."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())

    @classmethod
    def parse(cls, value: str | None) -> "Allowlist":
        hosts, networks = set(), []
        for item in (value or "").split(","):
            item = item.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item)
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: Address) -> bool:
        return host.lower() in self.hosts or any(address in net for net in self.networks)


def is_public(address: Address) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses (an
    IPv4-mapped IPv6 address is judged as its IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, allowlist: Allowlist, *, field_name: str = "webhook_url",
              resolve: Resolver = _resolve) -> Address:
    """The address to connect to for `url`, or InvalidInput(url_not_allowed | url_unresolvable)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url_not_allowed", f"{field_name} must be an http(s) URL with a host")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:  # an address literal is what it says; a name is resolved, every address it has counts
        addresses = [literal] if literal else [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError):
        raise InvalidInput("url_unresolvable", f"{field_name}: the host {host!r} does not resolve") from None
    if not addresses:
        raise InvalidInput("url_unresolvable", f"{field_name}: the host {host!r} does not resolve")
    for address in addresses:
        if not is_public(address) and not allowlist.allows(host, address):
            raise InvalidInput("url_not_allowed", f"{field_name}: {host!r} resolves to a private, loopback or "
                               f"link-local address ({address}); name it in URL_ALLOWLIST to allow it")
    return addresses[0]


def pinned(url: str, address: Address) -> tuple[str, dict[str, str], dict[str, str]]:
    """(url, headers, httpx extensions) that send a request for `url` to `address`: the Host header
    and, for https, the TLS server name (SNI and certificate check) stay the URL's host."""
    parts = urlsplit(url)
    host = parts.hostname
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"Host": host_header}, extensions


URL_PREFIXES = ("https://", "http://", "s3://")


def is_url(value: str | None) -> bool:
    """An input given as a URL (fetched by node/inputs.py) rather than a local path or a name."""
    return bool(value) and value.lower().startswith(URL_PREFIXES)


def url_for_logs(url: str) -> str:
    """A URL for messages and logs: scheme and host only (paths and queries may carry tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or parts.netloc}"


def input_roots(avatars_dir: Path | None, inputs_dir: Path | None) -> list[Path]:
    """The folders a queued job's local files may be in: AVATARS_DIR, INPUTS_DIR, bundled avatars."""
    from node.avatars import BUNDLED_DIR

    return [Path(p).resolve() for p in (avatars_dir, inputs_dir, BUNDLED_DIR) if p is not None]


def check_local_path(value: str, roots: Iterable[Path], *, field_name: str) -> Path:
    """`value` resolved (symlinks, `..`), or InvalidInput(path_not_allowed) outside every root."""
    resolved = Path(os.path.expanduser(value)).resolve()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    # The roots themselves are not named: the message reaches clients, the layout is the node's.
    raise InvalidInput("path_not_allowed", f"{field_name}: a queued job may only name files inside "
                       "AVATARS_DIR or INPUTS_DIR")


def looks_like_path(value: str) -> bool:
    """An avatar given as a path (a separator or a media suffix) rather than a name."""
    from node.avatars import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    return os.sep in value or Path(value).suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES


def guard_queued_job(job, settings) -> None:
    """InvalidInput(path_not_allowed) when a queued job names a local file outside the roots."""
    roots = input_roots(settings.avatars_dir, settings.inputs_dir)
    if job.audio and not is_url(job.audio):  # URLs have their own checks, when fetched (node/inputs.py)
        check_local_path(job.audio, roots, field_name="audio")
    if job.avatar and not is_url(job.avatar) and looks_like_path(job.avatar):
        check_local_path(job.avatar, roots, field_name="avatar")
