"""scripts/download_weights.py and node/weights.py against a loopback Hub (WEIGHTS.md §5).

The real huggingface_hub client talks HTTP to `FakeHub`, a ThreadingHTTPServer on 127.0.0.1
that answers /{repo}/resolve/{revision}/{filename} like the Hub does. A tiny manifest of
random files replaces node.weights.MANIFEST; nothing may resolve a non-loopback host.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from node import weights
from node.weights import SHARED, WeightFile, WeightMismatch

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_weights.py"
_spec = importlib.util.spec_from_file_location("download_weights", _SCRIPT)
dw = importlib.util.module_from_spec(_spec)
sys.modules["download_weights"] = dw  # dataclasses look their module up here
_spec.loader.exec_module(dw)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAIN_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
_XET_HEADERS = ("x-xet-hash", "x-xet-refresh-route")


# --- the loopback Hub --------------------------------------------------------------------------


class FakeHub:
    """Serves files by (repo_id, commit, filename); branches map to commits."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.refs: dict[tuple[str, str], str] = {}  # (repo_id, revision) -> commit
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def add(self, repo_id: str, revision: str, filename: str, data: bytes) -> None:
        commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else MAIN_COMMIT
        self.refs[(repo_id, revision)] = self.refs[(repo_id, commit)] = commit
        self.files[(repo_id, commit, filename)] = data

    def record(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every reply has a length

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._resolve(body=False)

        def do_GET(self) -> None:
            self._resolve(body=True)

        def _resolve(self, body: bool) -> None:
            hub.record(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            repo_id, sep, rest = urlsplit(self.path).path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            revision, filename = unquote(revision), unquote(filename)
            if not sep or not any(r == repo_id for r, _ in hub.refs):
                return self._error("RepoNotFound", "Repository not found", body)
            commit = hub.refs.get((repo_id, revision))
            if commit is None:
                return self._error("RevisionNotFound", "Invalid rev id", body)
            data = hub.files.get((repo_id, commit, filename))
            if data is None:
                return self._error("EntryNotFound", "Entry not found", body, commit)

            status, start, end = 200, 0, len(data) - 1
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if m and int(m[1]) < len(data):
                status, start = 206, int(m[1])
                end = min(int(m[2]), end) if m[2] else end
            self.send_response(status)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if body:
                self.wfile.write(data[start:end + 1])

        def _error(self, code: str, message: str, body: bool, commit: str | None = None) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No token or weights dir from the developer's shell (loopback_only in tests/conftest.py
    already fails any lookup of a non-loopback host, huggingface.co included)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("WEIGHTS_DIR", raising=False)


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


def _blob(n: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(n)


@pytest.fixture
def tiny(monkeypatch, hub) -> dict[str, bytes]:
    """A small manifest shaped like the real one, every file served by `hub`; path -> bytes."""
    rows = [  # engine, repo_id, revision, filename, local_path, required, bytes
        ("wav2lip", "t/wav2lip", COMMIT, "wav2lip_gan.pth", "wav2lip_gan.pth", False, _blob(3000, 1)),
        ("wav2lip", "t/wav2lip", COMMIT, "wav2lip.pth", "wav2lip.pth", False, _blob(3100, 2)),
        ("wav2lip", "t/wav2lip", COMMIT, "lipsync_expert.pth", "lipsync_expert.pth", False, _blob(700, 3)),
        (SHARED, "t/face-alignment", "main", "s3fd-619a316812.pth", "s3fd.pth", True, _blob(2500, 4)),
        # > 1 MiB, so hashing takes more than one chunk.
        ("musetalk", "t/musetalk", COMMIT, "musetalkV15/unet.pth", "musetalkV15/unet.pth", True,
         _blob(weights.CHUNK_BYTES + 12345, 5)),
        # Two repos with the same file name, as sd-vae and whisper have.
        ("musetalk", "t/vae", COMMIT, "config.json", "sd-vae/config.json", True, b'{"vae": 1}\n'),
        ("musetalk", "t/whisper", COMMIT, "config.json", "whisper/config.json", True, b'{"whisper": 2}\n'),
    ]
    manifest = []
    for engine, repo, rev, name, local, required, data in rows:
        hub.add(repo, rev, name, data)
        manifest.append(WeightFile(engine, repo, rev, name, local, len(data), hashlib.sha256(data).hexdigest(),
                                   "test", required))
    monkeypatch.setattr(weights, "MANIFEST", tuple(manifest))
    return {row[4]: row[6] for row in rows}


def _run(hub: FakeHub, weights_dir: Path, *extra: str) -> int:
    return dw.main(["--weights-dir", str(weights_dir), "--endpoint", hub.url, *extra])


def _lines(out: str, status: str) -> set[str]:
    return {ln.split()[len(status.split())] for ln in out.splitlines() if ln.startswith(status + " ")}


def _wf(local_path: str) -> WeightFile:
    return next(wf for wf in weights.MANIFEST if wf.local_path == local_path)


_DEFAULT_SET = {"wav2lip_gan.pth", "s3fd.pth", "musetalkV15/unet.pth", "sd-vae/config.json", "whisper/config.json"}


# --- downloading -------------------------------------------------------------------------------


def test_download_verifies_and_places_each_file(tiny, hub, tmp_path, capsys):
    # Given an empty WEIGHTS_DIR
    # When every engine's weights are fetched
    rc = _run(hub, tmp_path)
    out = capsys.readouterr().out
    # Then required files and the GAN generator sit at their local paths with the served bytes
    assert rc == 0, out
    assert _lines(out, dw.DOWNLOADED) == _DEFAULT_SET
    for rel in _DEFAULT_SET:
        assert (tmp_path / rel).read_bytes() == tiny[rel]
    # and optional files were not fetched, S3FD was fetched once, the staging folder is gone
    assert not (tmp_path / "wav2lip.pth").exists() and not (tmp_path / "lipsync_expert.pth").exists()
    assert sum(m == "GET" and path.endswith("/s3fd-619a316812.pth") for m, path, _h in hub.requests) == 1
    assert not (tmp_path / dw.STAGING_DIRNAME).exists()
    assert "non-commercial" in out  # the Wav2Lip licence is shown


def test_rerun_skips_present_files_without_any_request(tiny, hub, tmp_path, capsys):
    # Given a completed download
    assert _run(hub, tmp_path) == 0
    hub.requests.clear()
    capsys.readouterr()
    # When it runs again
    rc = _run(hub, tmp_path)
    out = capsys.readouterr().out
    # Then every file is verified in place and the Hub is never asked
    assert rc == 0
    assert _lines(out, dw.PRESENT) == _DEFAULT_SET
    assert hub.requests == []


def test_corrupt_file_fails_without_force_and_is_replaced_with_force(tiny, hub, tmp_path, capsys):
    # Given a downloaded S3FD with one byte flipped (same size, wrong sha256)
    assert _run(hub, tmp_path) == 0
    path = tmp_path / "s3fd.pth"
    bad = bytearray(tiny["s3fd.pth"])
    bad[100] ^= 0xFF
    path.write_bytes(bytes(bad))
    capsys.readouterr()
    # When it runs without --force: a clear failure, non-zero exit, the file left alone
    assert _run(hub, tmp_path, "--engine", "wav2lip") == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("FAILED"))
    assert "s3fd.pth" in line and "sha256" in line and "--force" in line
    assert path.read_bytes() == bytes(bad)
    # When it runs with --force: downloaded again and verified
    assert _run(hub, tmp_path, "--engine", "wav2lip", "--force") == 0
    out = capsys.readouterr().out
    assert _lines(out, dw.DOWNLOADED) == {"s3fd.pth"} and "replaced" in out
    assert path.read_bytes() == tiny["s3fd.pth"]


def test_hub_serving_other_bytes_is_rejected_and_not_placed(tiny, hub, tmp_path, capsys):
    # Given a Hub whose unet has the expected size but other content
    wf = _wf("musetalkV15/unet.pth")
    hub.files[(wf.repo_id, COMMIT, wf.filename)] = _blob(wf.size, 99)
    # When MuseTalk is fetched
    rc = _run(hub, tmp_path, "--engine", "musetalk")
    out = capsys.readouterr().out
    # Then the file is reported, nothing lands at its path or stays staged, and the run fails
    assert rc == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("FAILED"))
    assert "musetalkV15/unet.pth" in line and "rejected" in line and wf.sha256 in line
    assert not (tmp_path / "musetalkV15/unet.pth").exists()
    assert not list((tmp_path / dw.STAGING_DIRNAME).rglob("unet.pth"))
    assert (tmp_path / "whisper/config.json").is_file()  # the others still arrive


def test_404_is_a_clear_failure_and_nonzero_exit(tiny, hub, tmp_path, capsys):
    # Given a Hub that lacks the whisper config at the pinned commit
    del hub.files[("t/whisper", COMMIT, "config.json")]
    # When MuseTalk is fetched
    rc = _run(hub, tmp_path, "--engine", "musetalk")
    out = capsys.readouterr().out
    # Then that file fails with the repo, revision and reason, and the exit status says so
    assert rc == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("FAILED"))
    assert "whisper/config.json" in line and f"t/whisper@{COMMIT}" in line and "404 EntryNotFound" in line
    assert "1 required file(s) not in place" in out
    assert (tmp_path / "sd-vae/config.json").read_bytes() == tiny["sd-vae/config.json"]


def test_unknown_revision_and_repo_are_reported(tiny, hub, tmp_path, capsys, monkeypatch):
    wf = _wf("sd-vae/config.json")
    monkeypatch.setattr(weights, "MANIFEST", (
        WeightFile("musetalk", wf.repo_id, "f" * 40, wf.filename, "a.json", wf.size, wf.sha256, "t"),
        WeightFile("musetalk", "t/nope", COMMIT, wf.filename, "b.json", wf.size, wf.sha256, "t"),
    ))
    assert _run(hub, tmp_path, "--engine", "musetalk") == 1
    out = capsys.readouterr().out
    assert "revision not found" in out and "repository not found" in out


def test_optional_failure_is_printed_but_does_not_fail_the_run(tiny, hub, tmp_path, capsys):
    del hub.files[("t/wav2lip", COMMIT, "lipsync_expert.pth")]
    rc = _run(hub, tmp_path, "--engine", "wav2lip", "--optional")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert _lines(out, dw.DOWNLOADED) == {"wav2lip_gan.pth", "wav2lip.pth", "s3fd.pth"}
    assert re.search(r"^FAILED +lipsync_expert\.pth \(optional\)", out, re.M)


@pytest.fixture
def with_dwpose(tiny, hub, monkeypatch) -> bytes:
    """`tiny` plus an optional MuseTalk DWPose row at the real local path, served by `hub`."""
    data = _blob(900, 6)
    hub.add("t/dwpose", COMMIT, "dw-ll_ucoco_384.onnx", data)
    row = WeightFile("musetalk", "t/dwpose", COMMIT, "dw-ll_ucoco_384.onnx", weights.DWPOSE, len(data),
                     hashlib.sha256(data).hexdigest(), "test", required=False)
    monkeypatch.setattr(weights, "MANIFEST", (*weights.MANIFEST, row))
    return data


def test_dwpose_is_fetched_by_default_but_its_failure_does_not_count(with_dwpose, hub, tmp_path, capsys):
    # Given the optional DWPose export served by the Hub
    # When MuseTalk's weights are fetched without --optional
    assert _run(hub, tmp_path, "--engine", "musetalk") == 0
    out = capsys.readouterr().out
    # Then it is downloaded with the required files, and marked optional
    assert weights.DWPOSE in _lines(out, dw.DOWNLOADED)
    assert (tmp_path / weights.DWPOSE).read_bytes() == with_dwpose
    assert re.search(r"^downloaded +dwpose/dw-ll_ucoco_384\.onnx \(optional\)", out, re.M)
    # and when the Hub loses it, a fresh run reports it but still succeeds
    del hub.files[("t/dwpose", COMMIT, "dw-ll_ucoco_384.onnx")]
    fresh = tmp_path / "fresh"
    assert _run(hub, fresh, "--engine", "musetalk") == 0
    assert re.search(r"^FAILED +dwpose/dw-ll_ucoco_384\.onnx \(optional\)", capsys.readouterr().out, re.M)
    assert weights.missing_weights("musetalk", fresh) == []


def test_official_bin_containers_stand_in_for_the_safetensors(monkeypatch, hub, tmp_path, capsys):
    # Given the official MuseTalk layout: pickled .bin files where the manifest names .safetensors
    rows = []
    for local in weights.ALTERNATIVES:
        data = _blob(500, len(rows) + 10)
        hub.add("t/m", COMMIT, local, data)
        rows.append(WeightFile("musetalk", "t/m", COMMIT, local, local, len(data),
                               hashlib.sha256(data).hexdigest(), "test"))
    monkeypatch.setattr(weights, "MANIFEST", tuple(rows))
    assert set(weights.missing_weights("musetalk", tmp_path)) == set(weights.ALTERNATIVES)
    for local, alternatives in weights.ALTERNATIVES.items():
        (tmp_path / alternatives[0]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / alternatives[0]).write_bytes(b"pickle")
    # Then they count as present, for the engine and for the script (which downloads nothing)
    assert weights.missing_weights("musetalk", tmp_path) == []
    assert weights.present_path(tmp_path, "whisper/model.safetensors") == tmp_path / "whisper/pytorch_model.bin"
    assert _run(hub, tmp_path, "--engine", "musetalk") == 0
    out = capsys.readouterr().out
    assert _lines(out, dw.PRESENT) == set(weights.ALTERNATIVES) and "using whisper/pytorch_model.bin" in out
    assert hub.requests == []


def test_a_present_plain_generator_satisfies_wav2lip(tiny, hub, tmp_path, capsys):
    # Given only the non-GAN generator in place
    (tmp_path / "wav2lip.pth").write_bytes(tiny["wav2lip.pth"])
    # When Wav2Lip is fetched, the GAN one is not asked for
    assert _run(hub, tmp_path, "--engine", "wav2lip") == 0
    out = capsys.readouterr().out
    assert _lines(out, dw.PRESENT) == {"wav2lip.pth"} and _lines(out, dw.DOWNLOADED) == {"s3fd.pth"}
    assert not any("wav2lip_gan" in path for _, path, _ in hub.requests)


def test_verify_only_downloads_nothing(tiny, hub, tmp_path, capsys):
    assert _run(hub, tmp_path, "--verify-only") == 1
    out = capsys.readouterr().out
    assert _lines(out, dw.MISSING) == _DEFAULT_SET and hub.requests == []
    assert _run(hub, tmp_path) == 0
    capsys.readouterr()
    assert _run(hub, tmp_path, "--verify-only") == 0


def test_hf_token_is_sent_and_never_printed(tiny, hub, tmp_path, capsys, monkeypatch):
    token = "hf_loopbackTestToken0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    assert _run(hub, tmp_path, "--engine", "wav2lip") == 0
    assert {h.get("authorization") for _, _, h in hub.requests} == {f"Bearer {token}"}
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err


def test_weights_dir_defaults_to_env(tiny, hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path / "w"))
    assert dw.main(["--engine", "wav2lip", "--endpoint", hub.url]) == 0
    assert (tmp_path / "w" / "s3fd.pth").is_file()


def test_fake_hub_speaks_the_resolve_protocol(tiny, hub):
    # HEAD: commit, sha256 ETag, sizes, no Xet; GET with Range: 206; unknown file: EntryNotFound.
    url = f"{hub.url}/t/face-alignment/resolve/main/s3fd-619a316812.pth"
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["x-repo-commit"] == MAIN_COMMIT
    assert head.headers["etag"].strip('"') == hashlib.sha256(tiny["s3fd.pth"]).hexdigest()
    assert int(head.headers["x-linked-size"]) == len(tiny["s3fd.pth"])
    assert not any(h in head.headers for h in _XET_HEADERS) and "xet" not in head.headers.get("link", "")
    part = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == tiny["s3fd.pth"][1000:]
    missing = httpx.head(f"{hub.url}/t/face-alignment/resolve/main/nope.pth")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"


# --- node.weights helpers ----------------------------------------------------------------------


def test_missing_weights_wav2lip_needs_s3fd_and_one_generator(tiny, tmp_path):
    assert weights.missing_weights("wav2lip", tmp_path) == ["s3fd.pth", "wav2lip_gan.pth or wav2lip.pth"]
    (tmp_path / "s3fd.pth").write_bytes(b"x")
    assert weights.missing_weights("wav2lip", tmp_path) == ["wav2lip_gan.pth or wav2lip.pth"]
    (tmp_path / "wav2lip.pth").write_bytes(b"x")
    assert weights.missing_weights("wav2lip", tmp_path) == []
    assert weights.wav2lip_checkpoint(tmp_path) == tmp_path / "wav2lip.pth"
    (tmp_path / "wav2lip_gan.pth").write_bytes(b"x")
    assert weights.wav2lip_checkpoint(tmp_path) == tmp_path / "wav2lip_gan.pth"  # GAN preferred


def test_missing_weights_musetalk_lists_required_files(tiny, tmp_path):
    assert weights.missing_weights("musetalk", tmp_path) == [
        "s3fd.pth", "musetalkV15/unet.pth", "sd-vae/config.json", "whisper/config.json"]
    with pytest.raises(ValueError, match="unknown engine"):
        weights.missing_weights("synclabs", tmp_path)


def test_wav2lip_checkpoint_without_generator_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="wav2lip_gan.pth, wav2lip.pth"):
        weights.wav2lip_checkpoint(tmp_path)


def test_verify_file_checks_size_then_sha256(tiny, tmp_path):
    wf = _wf("musetalkV15/unet.pth")
    path = tmp_path / "unet.pth"
    path.write_bytes(tiny[wf.local_path])
    weights.verify_file(path, wf)
    assert weights.sha256_file(path) == hashlib.sha256(tiny[wf.local_path]).hexdigest()
    path.write_bytes(tiny[wf.local_path][:-1])
    with pytest.raises(WeightMismatch, match=rf"{wf.size - 1:,} bytes on disk, expected {wf.size:,}"):
        weights.verify_file(path, wf)
    path.write_bytes(b"\0" + tiny[wf.local_path][1:])
    with pytest.raises(WeightMismatch, match=f"expected {wf.sha256}"):
        weights.verify_file(path, wf)


def test_weightfile_rejects_bad_rows():
    with pytest.raises(ValueError, match="sha256"):
        WeightFile("wav2lip", "r/r", COMMIT, "f", "f", 1, "abc", "t")
    with pytest.raises(ValueError, match="inside WEIGHTS_DIR"):
        WeightFile("wav2lip", "r/r", COMMIT, "f", "../f", 1, "0" * 64, "t")


# --- the real manifest -------------------------------------------------------------------------


def test_real_manifest_is_self_consistent():
    rows = weights.MANIFEST
    assert len({wf.local_path for wf in rows}) == len(rows)
    assert len({(wf.repo_id, wf.revision, wf.filename) for wf in rows}) == len(rows)
    for wf in rows:
        assert re.fullmatch(r"[0-9a-f]{64}", wf.sha256), wf
        assert wf.size > 0 and wf.licence and wf.engine in (*weights.ENGINES, SHARED)
        assert not os.path.isabs(wf.local_path) and "\\" not in wf.local_path
    # Every revision is a commit except S3FD's, for which WEIGHTS.md knows no commit.
    assert {wf.local_path for wf in rows if not re.fullmatch(r"[0-9a-f]{40}", wf.revision)} == {"s3fd.pth"}
    assert set(weights.LICENCES) == set(weights.ENGINES)


def test_real_manifest_layout():
    paths = lambda engine: {wf.local_path for wf in weights.files_for(engine)}  # noqa: E731
    assert paths("wav2lip") == {"wav2lip_gan.pth", "wav2lip.pth", "lipsync_expert.pth", "s3fd.pth"}
    assert paths("musetalk") == {
        "s3fd.pth", "musetalkV15/unet.pth", "musetalkV15/musetalk.json",
        "sd-vae/config.json", "sd-vae/diffusion_pytorch_model.safetensors",
        "whisper/config.json", "whisper/preprocessor_config.json", "whisper/model.safetensors",
        "face-parse-bisent/79999_iter.pth", "face-parse-bisent/resnet18-5c106cde.pth",
        "dwpose/dw-ll_ucoco_384.onnx",
    }
    # 79999_iter.pth holds the backbone; DWPose improves placement but S3FD boxes work without it
    assert {wf.local_path for wf in weights.files_for("musetalk") if not wf.required} == {
        "face-parse-bisent/resnet18-5c106cde.pth", "dwpose/dw-ll_ucoco_384.onnx"}
    assert weights.RECOMMENDED == {weights.DWPOSE}
    assert {wf.local_path for wf in weights.files_for("wav2lip") if wf.required} == {"s3fd.pth"}
    assert weights.ONE_OF["wav2lip"][0] == "wav2lip_gan.pth"
    assert set(weights.ONE_OF["wav2lip"]) <= paths("wav2lip")
    assert {wf.repo_id for wf in weights.MANIFEST if wf.local_path == weights.DWPOSE} == {"yzd-v/DWPose"}
    assert {wf.repo_id for wf in weights.files_for("wav2lip") if wf.engine == "wav2lip"} == {"Nekochu/Wav2Lip"}


_REFERENCE_CONFIGS = Path(__file__).resolve().parents[1] / "reference" / "configs"


@pytest.mark.parametrize(("reference", "local_path"), [
    ("musetalkV15_musetalk.json", "musetalkV15/musetalk.json"),
    ("sd-vae-ft-mse_config.json", "sd-vae/config.json"),
])
def test_manifest_matches_reference_config_bytes(reference, local_path):
    # WEIGHTS.md: these two reference files are byte-identical to the published ones.
    weights.verify_file(_REFERENCE_CONFIGS / reference, _wf(local_path))
