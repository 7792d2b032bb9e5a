"""Offline text-to-speech with espeak-ng: robotic, but always there, so a job never waits on a
remote TTS. Used when ElevenLabs is not configured or fails."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from node.personas import Persona
from providers.base import ProviderError, SpeechFile

#: seconds; espeak-ng synthesises ~50x faster than real time, so this bounds a stuck process.
SYNTH_TIMEOUT_S = 120


class EspeakTTS:
    name = "espeak"

    def __init__(self, binary: str | None = None):
        self.binary = binary or shutil.which("espeak-ng") or shutil.which("espeak")

    def unavailable_reason(self) -> str | None:
        if not self.binary:
            return "espeak-ng is not installed (apt-get install espeak-ng, or set ESPEAK_BINARY)"
        return None

    def synthesize(self, text: str, persona: Persona, out_dir: Path) -> SpeechFile:
        reason = self.unavailable_reason()
        if reason:
            raise ProviderError("tts_unavailable", reason, retryable=False)
        out = Path(out_dir) / f"espeak-{uuid.uuid4().hex[:12]}.wav"
        voice = persona.offline
        # Text goes through stdin so a text starting with "-" is never read as an option.
        cmd = [self.binary, "-v", voice.voice, "-s", str(voice.speed_wpm), "-p", str(voice.pitch),
               "-w", str(out), "--stdin"]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True,
                                  timeout=SYNTH_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise ProviderError("tts_timeout", f"espeak-ng took over {SYNTH_TIMEOUT_S}s") from e
        if proc.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
            detail = proc.stderr.decode(errors="replace").strip()[:200] or "no audio written"
            raise ProviderError("tts_failed", f"espeak-ng failed: {detail}")
        return SpeechFile(path=out, provider=self.name)
