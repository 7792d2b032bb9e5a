"""What this node can do right now: binaries, free disk, Redis, the weight files, the encoder, every
engine and provider with its readiness and licence. Read by `lipsync-node health`, which exits 0
only when `ready` (the node can render: ffmpeg, disk and, for a fleet node, Redis); a running
worker answers the same questions on /readyz (node/health_server.py)."""

from __future__ import annotations

from pathlib import Path

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


def node_health(settings: Settings, *, check_redis: bool = False, verify: bool = False) -> dict:
    """`check_redis`: a fleet node needs its queue; `verify`: sha256 of every weight file present
    (minutes for the full set; sizes are always compared)."""
    components = []
    tts = EspeakTTS(settings.espeak_binary)
    binaries = {"ffmpeg": _safe(ffmpeg_binary), "ffprobe": ffprobe_binary(),
                "espeak-ng": tts.binary}
    for name, path in binaries.items():
        components.append({"kind": "binary", "name": name, "ready": bool(path),
                           "reason": path or "not found"})
    components += _disk_rows(settings)
    if check_redis:
        components.append(_redis_row(settings))
    weight_rows = _weight_rows(settings, verify)
    components += weight_rows
    bad_weights = {row["engine"] for row in weight_rows if not row["ready"]}
    providers = build_providers(settings)
    components.append(_row("tts", "elevenlabs", providers.elevenlabs.unavailable_reason(),
                           "commercial API (ElevenLabs terms)"))
    components.append(_row("tts", tts.name, tts.unavailable_reason(), "GPL-3.0 (espeak-ng)"))
    engines = build_local_engines(settings)
    for name, engine in engines.items():
        row = _row("engine", name, engine.unavailable_reason(), engine.licence)
        if row["ready"] and bad_weights & {name, "shared"}:  # it loads, but not the published weights
            row["note"] = "a weight file does not match the manifest (see the weights rows)"
        note = engine.readiness_note() if row["ready"] and hasattr(engine, "readiness_note") else None
        if note:  # e.g. musetalk: "DWPose absent: S3FD boxes"
            row["note"] = "; ".join(filter(None, (note, row.get("note"))))
        components.append(row)
    components.append(_row("sync", "syncnet_expert", SyncScoring(settings).unavailable_reason(),
                           LICENCES["wav2lip"] + "; scoring only"))
    # Remote steps as the chain would see them, in chain order.
    probe_job = Job(video_id="health", text="health", strategy=Strategy.auto)
    for step in plan_steps(probe_job, settings, {}, providers.remote):
        if step.name in REMOTE_LICENCES:
            components.append(_row(step.stage, step.name, step.unavailable_reason(), REMOTE_LICENCES[step.name]))
    choice = choose_encoder(settings.video_encoder)
    # Strategy 3 (the base video with the speech) needs only these, so they decide "can render".
    essential = [c for c in components if (c["kind"], c["name"]) == ("binary", "ffmpeg") or c["kind"] in ("disk", "fleet")]
    return {
        "ready": all(c["ready"] for c in essential),
        "engine_order": settings.lipsync_engines,
        "full_video_order": settings.full_video_providers,
        "encoder": {"codec": choice.codec, "reason": choice.reason},
        "components": components,
    }


def _disk_rows(settings: Settings) -> list[dict]:
    from node.health_server import free_disk_mb, watched_dirs

    rows = []
    for name, folder in watched_dirs(settings).items():
        free = free_disk_mb(folder)
        ok = free >= settings.min_free_disk_mb
        rows.append({"kind": "disk", "name": name, "ready": ok, "free_mb": round(free),
                     "reason": f"{free:.0f} MiB free in {folder}" + ("" if ok else
                               f"; MIN_FREE_DISK_MB is {settings.min_free_disk_mb}")})
    return rows


def _redis_row(settings: Settings) -> dict:
    from node.redis_conn import connect, redact_url

    try:
        connect(settings.model_copy(update={"queue_block_ms": 1})).ping()
        reason = None
    except Exception as e:  # noqa: BLE001 - health reports, never raises
        reason = f"{redact_url(settings.redis_url)} unreachable: {type(e).__name__}"
    return {"kind": "fleet", "name": "redis", "ready": reason is None,
            "reason": reason or f"{redact_url(settings.redis_url)} answers"}


def _weight_rows(settings: Settings, verify: bool) -> list[dict]:
    """One row per weight file present: its size against the manifest, and its sha256 with `verify`."""
    from node.weights import MANIFEST, WeightMismatch, present_path, verify_file

    rows = []
    for wf in MANIFEST:
        path = present_path(settings.weights_dir, wf.local_path)
        if path is None:
            continue
        problem = None
        try:
            if path.stat().st_size != wf.size and path.name == Path(wf.local_path).name:
                problem = f"{path.stat().st_size:,} bytes, the manifest says {wf.size:,}"
            elif verify and path.name == Path(wf.local_path).name:
                verify_file(path, wf)
        except (OSError, WeightMismatch) as e:
            problem = str(e)
        checked = "sha256 verified" if verify else "size matches"
        rows.append({"kind": "weights", "name": wf.local_path, "engine": wf.engine, "ready": problem is None,
                     "reason": problem or checked, "licence": wf.licence})
    return rows


def _row(kind: str, name: str, reason: str | None, licence: str) -> dict:
    return {"kind": kind, "name": name, "ready": reason is None, "reason": reason, "licence": licence}


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - health reports, never raises
        return None
