"""The `lipsync-node` command as a user runs it: a real process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from tests.conftest import make_speech, make_video, require_tool


def run_cli(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ)  # the suite's clean environment: no developer keys (tests/conftest.py)
    environ.update({"WEIGHTS_DIR": str(tmp_path / "w"), "OUTPUT_DIR": str(tmp_path / "out"),
                    "TEMP_DIR": str(tmp_path / "tmp"), "AVATAR_CACHE_DIR": str(tmp_path / "cache"),
                    "X264_PRESET": "ultrafast", "VIDEO_ENCODER": "libx264", **env})
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=environ, timeout=300)


def test_render_json_prints_one_object(tmp_path, ffprobe):
    require_tool("espeak-ng")
    proc = run_cli(["render", "--persona", "papa_noel", "--text", "¡Jo, jo, jo! Hola Lucía",
                    "-o", "o.mp4", "--json", "--video-id", "cli-1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON document, nothing else on stdout
    assert result["video_id"] == "cli-1" and result["status"] == "succeeded"
    assert result["output"] == "o.mp4" and (tmp_path / "o.mp4").stat().st_size > 1000
    assert result["strategy"] == "base_video"
    assert result["providers"] == {"tts": "espeak", "video": "base_video"}
    assert set(result["timings_s"]) == {"tts", "lipsync", "encode", "total"}
    assert result["duration_s"] > 0.5
    skipped = {a["provider"]: a for a in result["attempts"] if a["outcome"] == "skipped"}
    assert "run scripts/download_weights.py --engine wav2lip" in skipped["wav2lip"]["reason"]
    assert "SYNCLABS_API_KEY" in skipped["synclabs"]["reason"]
    # the log explains each skip, on stderr
    assert "wav2lip: skipped: weights not found in WEIGHTS_DIR" in proc.stderr
    assert "\x1b[" not in proc.stdout  # no progress bar in --json mode


def test_invalid_input_exits_2_with_code_and_no_traceback(tmp_path):
    proc = run_cli(["render", "--text", "hola", "--video-id", "bad id!"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: invalid_video_id: ")
    assert "Traceback" not in proc.stderr


def test_invalid_media_exits_2(tmp_path, ffprobe):
    make_speech(tmp_path / "s.wav", 0.5)
    proc = run_cli(["render", "--audio", "s.wav", "--avatar", "nobody", "--json"], tmp_path)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "avatar_not_found"
    assert "error: avatar_not_found: " in proc.stderr and "Traceback" not in proc.stderr


def test_every_strategy_failing_exits_1(tmp_path, ffprobe):
    make_speech(tmp_path / "s.wav", 0.5)
    make_video(tmp_path / "a.mp4", seconds=0.4)
    proc = run_cli(["render", "--audio", "s.wav", "--avatar", "a.mp4", "--strategy", "lipsync",
                    "--engine", "mock", "--json"], tmp_path)  # mock is off outside tests
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and result["error"]["code"] == "all_strategies_failed"
    assert result["attempts"][0]["reason"].startswith("ENABLE_MOCK_ENGINE is off")


def test_mock_engine_via_setting_and_bundled_avatar(tmp_path, ffprobe):
    make_speech(tmp_path / "s.wav", 0.6)
    proc = run_cli(["render", "--audio", "s.wav", "--engine", "mock", "--avatar", "demo", "--json"],
                   tmp_path, ENABLE_MOCK_ENGINE="true")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["providers"] == {"tts": "upload", "lipsync": "mock"}
    assert Path(result["output"]).parent == tmp_path / "out"  # OUTPUT_DIR/ID.mp4 by default


def test_json_logging_lines_carry_the_video_id(tmp_path, ffprobe):
    make_speech(tmp_path / "s.wav", 0.5)
    proc = run_cli(["render", "--audio", "s.wav", "--strategy", "base_video", "--video-id", "j1"],
                   tmp_path, USE_JSON_LOGGING="true", LOG_LEVEL="DEBUG")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    job_lines = [ln for ln in lines if ln["logger"] == "node.pipeline"]
    assert job_lines and all(ln["video_id"] == "j1" for ln in job_lines)
    assert {"ts", "level", "msg"} <= set(job_lines[0])


def test_bad_setting_is_a_clear_error(tmp_path):
    proc = run_cli(["render", "--text", "hola"], tmp_path, MAX_JOB_ATTEMPTS="zero")
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid_setting: MAX_JOB_ATTEMPTS")


def test_health_lists_engines_with_licences(tmp_path, ffprobe):
    # Given a node left to choose its encoder (VIDEO_ENCODER=auto, the default)
    proc = run_cli(["health", "--json", "--local"], tmp_path, VIDEO_ENCODER="auto")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    engines = {c["name"]: c for c in report["components"] if c["kind"] == "engine"}
    assert "non-commercial" in engines["wav2lip"]["licence"]
    assert "MIT" in engines["musetalk"]["licence"]
    assert report["engine_order"] == ["musetalk", "wav2lip", "synclabs"]
    # Then the encoder health reports is the one a render on this node really uses, with why
    make_speech(tmp_path / "s.wav", 0.5)
    render = run_cli(["render", "--audio", "s.wav", "--strategy", "base_video", "-o", "o.mp4", "--json"],
                     tmp_path, VIDEO_ENCODER="auto")
    assert render.returncode == 0, render.stderr
    assert json.loads(render.stdout)["encoder"] == report["encoder"]["codec"]
    assert "probe" in report["encoder"]["reason"]


def test_progress_bar_shows_on_a_tty(tmp_path, ffprobe):
    # Given a pseudo-terminal as stderr, a rich progress bar is drawn; in --json mode it is not
    import pty

    make_speech(tmp_path / "s.wav", 2.0)

    def stderr_on_tty(extra: list[str]) -> str:
        leader, follower = pty.openpty()
        environ = {**os.environ, "TEMP_DIR": str(tmp_path / "t"), "AVATAR_CACHE_DIR": str(tmp_path / "c"),
                   "WEIGHTS_DIR": str(tmp_path / "w"), "X264_PRESET": "ultrafast", "TERM": "xterm",
                   "COLUMNS": "100"}
        proc = subprocess.Popen([sys.executable, "-m", "node.cli", "render", "--audio", "s.wav",
                                 "--strategy", "base_video", "-o", "o.mp4", *extra],
                                cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0
        os.close(leader)
        return b"".join(chunks).decode(errors="replace")

    assert "/50" in stderr_on_tty([])  # "frames ━━━━ 16/50"
    assert "/50" not in stderr_on_tty(["--json"])


def test_secrets_never_reach_output_or_logs(tmp_path, ffprobe):
    canary = "sk-canary-5f3e9a1c"
    make_speech(tmp_path / "s.wav", 0.5)
    env = {"ELEVENLABS_API_KEY": canary, "SYNCLABS_API_KEY": canary, "HEYGEN_API_KEY": canary,
           "HIGGSFIELD_API_KEY_ID": canary, "HIGGSFIELD_API_KEY_SECRET": canary, "LOG_LEVEL": "DEBUG"}
    # Every provider is configured, so each is really called, at a closed loopback port (the
    # connection is refused at once): a test never sends traffic off this machine.
    closed = "http://127.0.0.1:9"
    env |= {f"{name}_BASE_URL": closed for name in ("ELEVENLABS", "SYNCLABS", "HIGGSFIELD", "HEYGEN")}
    env |= {"HEYGEN_UPLOAD_URL": closed, "PROVIDER_MAX_TRIES": "1", "REDIS_URL": f"redis://:{canary}@127.0.0.1:9/0"}
    for args in (["render", "--text", "hola", "--json"], ["health", "--json"], ["health"]):
        proc = run_cli(args, tmp_path, **env)
        # health checks the (closed) Redis of the URL whose password is the canary: it cannot render as a fleet node
        assert proc.returncode == (0 if args[0] == "render" else 1), proc.stderr
        assert canary not in proc.stdout and canary not in proc.stderr
        if args[0] == "render":  # the providers were tried and failed, then strategy 3 worked
            attempts = {a["provider"]: a["outcome"] for a in json.loads(proc.stdout)["attempts"]}
            assert attempts["elevenlabs"] == "failed" and attempts["espeak"] == "succeeded"
            assert attempts["synclabs"] == attempts["higgsfield"] == attempts["heygen"] == "failed"


def test_avatar_prepare_installs_a_named_avatar(tmp_path, ffprobe):
    # Given a base video file, prepared under a name
    make_video(tmp_path / "santa.mp4", seconds=0.4)
    proc = run_cli(["avatar", "prepare", "santa.mp4", "--name", "santa", "--json"], tmp_path,
                   AVATARS_DIR=str(tmp_path / "avatars"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 10 and (tmp_path / "avatars" / "santa.mp4").is_file()
    assert summary["engines"]["wav2lip"]["prepared"] is False  # no weights here: said why
    assert "WEIGHTS_DIR" in summary["engines"]["wav2lip"]["reason"]
    # Then jobs use it by name, and `avatar list` shows it beside the bundled ones
    make_speech(tmp_path / "s.wav", 0.5)
    render = run_cli(["render", "--audio", "s.wav", "--avatar", "santa", "--json"], tmp_path,
                     AVATARS_DIR=str(tmp_path / "avatars"))
    assert render.returncode == 0, render.stderr
    listing = run_cli(["avatar", "list"], tmp_path, AVATARS_DIR=str(tmp_path / "avatars")).stdout
    assert "santa\t" in listing and "demo\t" in listing
    # And a bad name or a missing file is a clear error
    bad = run_cli(["avatar", "prepare", "santa.mp4", "--name", "../x"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid_avatar_name:")
    missing = run_cli(["avatar", "prepare", "nope.mp4", "--name", "x"], tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: avatar_not_found:")


def test_re_preparing_an_installed_avatar_is_idempotent(tmp_path, ffprobe):
    # Given an avatar already in AVATARS_DIR under its name, with a sidecar
    avatars = tmp_path / "avatars"
    avatars.mkdir()
    make_video(avatars / "santa.mp4", seconds=0.4)
    (avatars / "santa.json").write_text('{"note": "kept"}')
    original = (avatars / "santa.mp4").read_bytes()
    # When it is prepared again under the same name, twice
    for _ in range(2):
        proc = run_cli(["avatar", "prepare", str(avatars / "santa.mp4"), "--name", "santa", "--json"], tmp_path,
                       AVATARS_DIR=str(avatars))
        # Then it succeeds and the file and its sidecar are still there, unchanged
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["frames"] == 10
    assert (avatars / "santa.mp4").read_bytes() == original
    assert json.loads((avatars / "santa.json").read_text()) == {"note": "kept"}
    assert sorted(p.name for p in avatars.iterdir()) == ["santa.json", "santa.mp4"]
    # And a file that is not a video is refused with its code, leaving the installed avatar alone
    (tmp_path / "notes.mp4").write_text("not a video")
    bad = run_cli(["avatar", "prepare", "notes.mp4", "--name", "santa"], tmp_path, AVATARS_DIR=str(avatars))
    assert bad.returncode == 2 and bad.stderr.startswith("error: avatar_unreadable:"), bad.stderr
    assert (avatars / "santa.mp4").read_bytes() == original
