"""What this node can do right now: binaries, the encoder, every engine and provider with its
readiness and licence. Read by `lipsync-node health` and, later, the worker's health endpoint."""

from __future__ import annotations

from node.chain import plan_steps
from node.config import Settings
from node.encoder import choose_encoder
from node.engines import build_local_engines
from node.job import Job, Strategy
from node.media import ffmpeg_binary, ffprobe_binary
from node.provider_set import build_providers
from node.sync import SyncScoring
from node.weights import LICENCES
from providers.espeak import EspeakTTS

#: Remote providers' terms, shown beside the local engines' weight licences.
REMOTE_LICENCES = {
    "synclabs": "commercial API (sync.so terms)",
    "higgsfield": "commercial API (Higgsfield terms)",
    "heygen": "commercial API (HeyGen terms)",
}


def node_health(settings: Settings) -> dict:
    components = []
    tts = EspeakTTS(settings.espeak_binary)
    binaries = {"ffmpeg": _safe(ffmpeg_binary), "ffprobe": ffprobe_binary(),
                "espeak-ng": tts.binary}
    for name, path in binaries.items():
        components.append({"kind": "binary", "name": name, "ready": bool(path),
                           "reason": path or "not found"})
    providers = build_providers(settings)
    components.append(_row("tts", "elevenlabs", providers.elevenlabs.unavailable_reason(),
                           "commercial API (ElevenLabs terms)"))
    components.append(_row("tts", tts.name, tts.unavailable_reason(), "GPL-3.0 (espeak-ng)"))
    engines = build_local_engines(settings)
    for name, engine in engines.items():
        row = _row("engine", name, engine.unavailable_reason(), engine.licence)
        note = engine.readiness_note() if row["ready"] and hasattr(engine, "readiness_note") else None
        if note:  # e.g. musetalk: "DWPose absent: S3FD boxes"
            row["note"] = note
        components.append(row)
    components.append(_row("sync", "syncnet_expert", SyncScoring(settings).unavailable_reason(),
                           LICENCES["wav2lip"] + "; scoring only"))
    # Remote steps as the chain would see them, in chain order.
    probe_job = Job(video_id="health", text="health", strategy=Strategy.auto)
    for step in plan_steps(probe_job, settings, {}, providers.remote):
        if step.name in REMOTE_LICENCES:
            components.append(_row(step.stage, step.name, step.unavailable_reason(), REMOTE_LICENCES[step.name]))
    choice = choose_encoder(settings.video_encoder)
    return {
        "ready": all(c["ready"] for c in components if c["kind"] == "binary" and c["name"] == "ffmpeg"),
        "engine_order": settings.lipsync_engines,
        "full_video_order": settings.full_video_providers,
        "encoder": {"codec": choice.codec, "reason": choice.reason},
        "components": components,
    }


def _row(kind: str, name: str, reason: str | None, licence: str) -> dict:
    return {"kind": kind, "name": name, "ready": reason is None, "reason": reason, "licence": licence}


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - health reports, never raises
        return None
