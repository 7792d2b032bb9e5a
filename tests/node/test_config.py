"""Settings: the fixed env names are read, secrets never show up in repr or dumps."""

from __future__ import annotations

from node.config import Settings
from node.personas import load_persona

CANARY = "sk-canary-7d1f0e2b9c"


def test_fixed_env_names_are_read(monkeypatch):
    env = {"ELEVENLABS_API_KEY": CANARY, "SYNCLABS_API_KEY": CANARY, "HEYGEN_API_KEY": CANARY,
           "HIGGSFIELD_API_KEY_ID": CANARY, "HIGGSFIELD_API_KEY_SECRET": CANARY,
           "USE_JSON_LOGGING": "true", "LOG_LEVEL": "debug", "AUDIO_CACHE_DIR": "/x/audio",
           "AUDIO_CACHE_MAX_SIZE_MB": "64", "MAX_JOB_ATTEMPTS": "5", "CLEANUP_INTERVAL_HOURS": "2",
           "TEMP_MAX_AGE_HOURS": "3", "JOBS_MAX_AGE_HOURS": "4", "STORAGE_TYPE": "local",
           "REDIS_URL": "redis://h:1/2", "PAPA_NOEL_VOICE_ID": "voice123", "SHUTDOWN_TIMEOUT": "300"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None)
    assert s.elevenlabs_api_key.get_secret_value() == CANARY
    assert s.use_json_logging is True and s.log_level == "debug"
    assert str(s.audio_cache_dir) == "/x/audio" and s.audio_cache_max_size_mb == 64
    assert s.max_job_attempts == 5 and s.cleanup_interval_hours == 2
    assert s.temp_max_age_hours == 3 and s.jobs_max_age_hours == 4
    assert s.redis_url == "redis://h:1/2" and s.papa_noel_voice_id == "voice123"
    assert s.shutdown_timeout == 300
    # secrets are redacted everywhere a settings object is shown
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert CANARY not in text


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("PAPA_NOEL_VOICE_ID", raising=False)
    (tmp_path / ".env").write_text("PAPA_NOEL_VOICE_ID=fromdotenv\nMAX_TEXT_CHARS=77\n")
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.max_text_chars == 77
    assert load_persona("papa_noel", environ=s.environ()).elevenlabs.voice_id == "fromdotenv"


def test_engine_order_is_a_setting():
    s = Settings(_env_file=None, lipsync_engine_order=" MuseTalk , synclabs ,")
    assert s.lipsync_engines == ["musetalk", "synclabs"]
