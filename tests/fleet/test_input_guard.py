"""What a queued job may point at: no private, loopback or link-local URLs (SSRF) unless allowed,
and local files only inside AVATARS_DIR / INPUTS_DIR, resolved before the check."""

from __future__ import annotations

import ipaddress
import os

import pytest

from node.errors import InvalidInput
from node.input_guard import Allowlist, check_local_path, check_url, is_public, pinned
from node.pipeline import Renderer
from node.records import JobState
from node.worker import renderer_render
from tests.fleet.conftest import job_request, wait_for


def resolver(mapping: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise OSError("no such host")
        return mapping[host]
    return resolve


@pytest.mark.parametrize("address", ["169.254.169.254", "127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1",
                                     "0.0.0.0", "::1", "fe80::1", "fd00::5", "::ffff:127.0.0.1", "224.0.0.1"])
def test_non_public_addresses_are_refused(address):
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(InvalidInput) as e:
        check_url("http://hooks.example/x", Allowlist(), resolve=resolver({"hooks.example": [address]}))
    assert e.value.code == "url_not_allowed" and "URL_ALLOWLIST" in e.value.message


def test_a_public_host_passes_and_one_private_address_among_several_does_not():
    public = resolver({"ok.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.7"]})
    assert str(check_url("https://ok.example/h", Allowlist(), resolve=public)) == "93.184.216.34"
    with pytest.raises(InvalidInput):
        check_url("https://mixed.example/h", Allowlist(), resolve=public)
    with pytest.raises(InvalidInput) as e:
        check_url("https://nowhere.example/h", Allowlist(), resolve=public)
    assert e.value.code == "url_unresolvable"
    with pytest.raises(InvalidInput) as e:
        check_url("file:///etc/passwd", Allowlist(), resolve=public)
    assert e.value.code == "url_not_allowed"


def test_the_allowlist_names_hosts_or_networks():
    allow = Allowlist.parse("hooks.internal, 10.20.0.0/16")
    private = resolver({"hooks.internal": ["10.9.9.9"], "svc": ["10.20.3.4"], "other": ["10.30.0.1"]})
    assert str(check_url("http://hooks.internal/", allow, resolve=private)) == "10.9.9.9"
    assert str(check_url("http://svc:8080/", allow, resolve=private)) == "10.20.3.4"
    with pytest.raises(InvalidInput):
        check_url("http://other/", allow, resolve=private)


def test_a_request_is_sent_to_the_checked_address_under_its_own_name():
    url, headers, ext = pinned("https://hooks.example:8443/cb?x=1", ipaddress.ip_address("93.184.216.34"))
    assert url == "https://93.184.216.34:8443/cb?x=1"
    assert headers == {"Host": "hooks.example:8443"} and ext == {"sni_hostname": "hooks.example"}
    url, headers, ext = pinned("http://h.example/cb", ipaddress.ip_address("2001:db8::1"))
    assert url == "http://[2001:db8::1]/cb" and headers == {"Host": "h.example"} and ext == {}


def test_local_paths_must_resolve_inside_the_roots(tmp_path):
    root, outside = tmp_path / "inputs", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (outside / "other-customer.mp4").write_bytes(b"x")
    (root / "mine.wav").write_bytes(b"x")
    (root / "link.wav").symlink_to(outside / "other-customer.mp4")
    roots = [root.resolve()]
    assert check_local_path(str(root / "mine.wav"), roots, field_name="audio") == (root / "mine.wav").resolve()
    for sneaky in (str(outside / "other-customer.mp4"), str(root / ".." / "secret" / "other-customer.mp4"),
                   str(root / "link.wav"), "/proc/self/environ"):
        with pytest.raises(InvalidInput) as e:
            check_local_path(sneaky, roots, field_name="audio")
        assert e.value.code == "path_not_allowed", sneaky


def test_a_queued_job_naming_a_file_outside_the_roots_is_dead_and_the_node_keeps_serving(
        queue, media, start_worker, fleet_settings, tmp_path):
    # Given a worker whose queued jobs may only read INPUTS_DIR (the media folder)
    settings = fleet_settings.model_copy(update={"inputs_dir": media["speech"].parent})
    start_worker(renderer_render(Renderer(settings)), settings)
    stolen = tmp_path / "environ.wav"
    os.symlink("/proc/self/environ", stolen)
    queue.submit(job_request(media, "sneaky") | {"audio": str(stolen)})
    queue.submit(job_request(media, "fine"))
    # Then the bad job is dead (invalid input, no retry) and the next one renders
    dead = wait_for(lambda: (r := queue.record("sneaky")) and r.terminal and r, 20, "the bad job")
    assert dead.state is JobState.dead and dead.error["code"] == "path_not_allowed" and dead.attempts == 1
    assert wait_for(lambda: queue.record("fine").state is JobState.succeeded, 20, "the good job")


def test_submit_refuses_a_webhook_to_the_cloud_metadata_address(queue, media):
    with pytest.raises(InvalidInput) as e:
        queue.submit(job_request(media, "meta", webhook_url="http://169.254.169.254/latest/meta-data/"))
    assert e.value.code == "url_not_allowed"
    assert queue.record("meta") is None  # nothing was queued
