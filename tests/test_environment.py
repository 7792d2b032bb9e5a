"""The suite's own rules (tests/conftest.py): a developer's shell never changes a test."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

DEVELOPER_SHELL = {"ELEVENLABS_API_KEY": "sk-canary-developer", "SYNCLABS_API_KEY": "canary-sync",
                   "HEYGEN_API_KEY": "canary-heygen", "HIGGSFIELD_API_KEY_ID": "canary-id",
                   "HIGGSFIELD_API_KEY_SECRET": "canary-secret", "WEBHOOK_SECRET": "canary-hook",
                   "LIPSYNC_ENGINE_ORDER": "synclabs", "REDIS_URL": "redis://10.0.0.1:6379/0"}


def test_settings_start_offline(settings):
    # Every provider key is unset and the developer's variables are gone, for subprocesses too
    for secret in ("elevenlabs_api_key", "synclabs_api_key", "heygen_api_key", "higgsfield_api_key_id",
                   "higgsfield_api_key_secret", "webhook_secret"):
        assert getattr(settings, secret) is None, secret
    assert settings.lipsync_engines == ["musetalk", "wav2lip", "synclabs"]
    assert settings.redis_url.startswith("redis://127.0.0.1") or settings.redis_url.startswith("redis://localhost")
    assert not set(DEVELOPER_SHELL) & set(os.environ)


def test_a_developers_keys_never_reach_a_test():
    # Given a developer whose shell exports provider keys and node settings
    env = {**os.environ, **DEVELOPER_SHELL}
    # When the offline test above runs in that shell
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_settings_start_offline"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    # Then it still passes: the suite removed them before the test began
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
