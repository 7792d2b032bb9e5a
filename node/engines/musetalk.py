"""The `musetalk` engine (MuseTalk v1.5): strategy 1's first engine, streaming frames batch by batch.

    base video -> cached preparation (musetalk_prep): boxes, reference latents, blend masks
    speech -> whisper-tiny encoder states, once per job -> one [50, 384] window per frame, on demand
    per batch: PositionalEncoding(windows) + latents -> UNet (one pass, timestep 0)
               -> VAE decode -> paste with the cached mask (worker thread) -> the encoder

Batch i's decode and paste run on a worker thread while the main thread runs batch i+1's UNet
(one batch deep, like the official realtime mode's queue, §4.7 #33), and the encoder writes in its
own thread. fp16 on CUDA GPUs of compute capability >= 7.0 (node.device), fp32 elsewhere. Frames
without a face or inside a pause (>= 200 ms) keep their source pixels, the pause edges cross-faded
by scaling the blend mask; faceless frames keep their place in the ping-pong cycle.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from node.avatars import BaseVideo
from node.config import Settings
from node.device import Placement, choose_placement
from node.engines.base import Speech
from node.engines.face_track import FaceDetector, s3fd_detector
from node.engines.musetalk_prep import PreparedAvatar, PrepTools, load_or_prepare
from node.engines.speech_activity import frame_energy, mouth_weights
from node.once import one_at_a_time
from node.weights import DWPOSE, LICENCES, missing_weights_reason, present_path

log = logging.getLogger(__name__)

UNET_CONFIG = "musetalkV15/musetalk.json"
UNET_WEIGHTS = "musetalkV15/unet.pth"
VAE_DIR = "sd-vae"
VAE_WEIGHTS = "sd-vae/diffusion_pytorch_model.safetensors"  # or its .bin (weights.ALTERNATIVES)
WHISPER_DIR = "whisper"
WHISPER_WEIGHTS = "whisper/model.safetensors"
BISENET = "face-parse-bisent/79999_iter.pth"
#: Avatars whose reference latents stay on the GPU between jobs (least recently used dropped
#: first): every job reads every latent of its base video, 16 KB a frame in fp16, so keeping them
#: there saves a host-to-device copy per batch for the price of ~24 MB per minute of base video.
RESIDENT_AVATARS = 8
#: ... and only while the GPU keeps this fraction of its memory free after taking them.
MIN_FREE_GPU_FRACTION = 0.25


def keep_on_device(device: str, nbytes: int, free_bytes: int, total_bytes: int) -> bool:
    """Whether an avatar's latents (`nbytes`) should stay on `device`: only on a GPU (on the CPU
    the memory-mapped cache already is the device's memory) with room left for the jobs."""
    return device.startswith("cuda") and free_bytes - nbytes >= MIN_FREE_GPU_FRACTION * total_bytes


class AudioWindows:
    """Per-frame whisper windows, gathered on demand: the encoder states are computed once per job
    (11.5 MB per 30 s) instead of all N windows ([N, 50, 384], 115 MB for 60 s at 25 fps)."""

    def __init__(self, whisper, samples: np.ndarray, fps: float):
        import torch

        from models.musetalk.audio import window_count

        self.count, self._samples, self._fps = window_count(len(samples), fps), len(samples), fps
        self._states = None
        if self.count:
            with torch.inference_mode():
                self._states = whisper.encode(whisper.log_mel(samples))[0]  # [1500 S, 5, 384]

    def __len__(self) -> int:
        return self.count

    def __call__(self, frames: np.ndarray):
        """[B, 50, 384] windows of video frames `frames` (each < count), encoder dtype and device."""
        from models.musetalk.audio import frame_windows

        return frame_windows(self._states, self._samples, self._fps, frames)


class MuseTalkEngine:
    name = "musetalk"
    licence = LICENCES["musetalk"]

    def __init__(self, settings: Settings, *, detector: FaceDetector | None = None,
                 detector_id: str | None = None, parser=None, parser_id: str | None = None):
        """`detector` (frames -> boxes) and `parser` (`.mask(image_rgb, mode)`) replace S3FD and
        BiSeNet when given (tests, benches); their ids key the avatar cache."""
        self.weights_dir = Path(settings.weights_dir)
        self.cache_dir = Path(settings.avatar_cache_dir)
        self._device_setting = settings.torch_device
        self.blur_ratio = settings.musetalk_blur_ratio
        self._compile = settings.musetalk_compile
        self._detector, self._detector_id = detector, detector_id
        self._injected_parser, self._parser_id = parser, parser_id
        self._unet = self._vae = self._whisper = self._pe = None
        self._dwpose = self._parser = None
        self._placement: Placement | None = None
        self._lock = threading.Lock()  # one load, even with several jobs in threads
        self._resident: OrderedDict[str, object] = OrderedDict()  # avatar folder -> latents on the GPU
        #: seconds per stage of the last job (the bench reads it; on CUDA the UNet's kernels may
        #: still run when it is read, so GPU figures come from the bench's own synchronised timing)
        self.last_stage_s: dict[str, float] = {}

    def unavailable_reason(self) -> str | None:
        return missing_weights_reason(self.name, self.weights_dir)

    def _dwpose_usable(self) -> bool:
        return (self.weights_dir / DWPOSE).is_file() and importlib.util.find_spec("onnxruntime") is not None

    def readiness_note(self) -> str | None:
        """What health shows beside a ready engine: how faces are placed."""
        if self._dwpose_usable():
            return f"faces placed by DWPose landmarks ({DWPOSE})"
        if (self.weights_dir / DWPOSE).is_file():
            return (f"{DWPOSE} present but onnxruntime is not installed (extra `cpu` or `cuda`): S3FD boxes "
                    "place the face crop, lower quality")
        return (f"DWPose absent ({DWPOSE}): S3FD boxes place the face crop, lower quality; "
                "run scripts/download_weights.py --engine musetalk")

    # --- loading, once per process ------------------------------------------------------------

    @property
    def dtype(self):
        import torch

        return torch.float16 if self._placement is not None and self._placement.fp16 else torch.float32

    def load(self) -> None:
        with self._lock:
            if self._unet is not None:
                return
            from models.musetalk import PositionalEncoding, load_unet, load_vae
            from models.musetalk.audio import WhisperFeatures

            self._placement = placement = choose_placement(self._device_setting)
            device, dtype, root = placement.device, self.dtype, self.weights_dir
            self._whisper = WhisperFeatures(root / WHISPER_DIR, device=device, dtype=dtype)
            self._vae = load_vae(root / VAE_DIR, device=device, dtype=dtype)
            self._pe = PositionalEncoding().to(device)
            unet = load_unet(root / UNET_CONFIG, root / UNET_WEIGHTS, device=device, dtype=dtype)
            if self._compile and device.startswith("cuda"):
                import torch

                # MUSETALK_COMPILE: 388 -> 645 fps for the decoder on an H200 (issue 10's figures)
                self._vae.vae.decoder = torch.compile(self._vae.vae.decoder)
            self._unet = unet
            log.info("musetalk loaded on %s (%s)", device, placement.reason)

    def _identity(self, rel: str) -> str:
        path = present_path(self.weights_dir, rel)
        if path is None:
            return "none"
        stat = path.stat()
        return f"{path.relative_to(self.weights_dir).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}"

    def cache_params(self) -> dict:
        """Everything the prepared avatar depends on (its cache key)."""
        return {
            "detector": (self._detector_id or "injected") if self._detector is not None else self._identity("s3fd.pth"),
            "dwpose": self._identity(DWPOSE) if self._dwpose_usable() else "none",
            "vae": self._identity(VAE_WEIGHTS) + "|" + self._identity(f"{VAE_DIR}/config.json"),
            "parser": (f"injected:{self._parser_id}" if self._injected_parser is not None
                       else self._identity(BISENET)),
            "blur_ratio": self.blur_ratio,
            "precision": "fp16" if self.dtype.itemsize == 2 else "fp32",
        }

    def _prep_tools(self) -> PrepTools:
        """The detector, DWPose, parser and VAE encoder, loaded on the first avatar that needs them."""
        import torch

        from models.musetalk.face_box import face_landmarks
        from models.musetalk.face_parsing import FaceParser, load_bisenet

        device = self._placement.device
        with self._lock:
            if self._dwpose is None and self._dwpose_usable():
                from models.face.dwpose import load_dwpose

                self._dwpose = load_dwpose(self.weights_dir / DWPOSE)
            if self._parser is None and self._injected_parser is not None:
                self._parser = self._injected_parser
            elif self._parser is None:
                self._parser = FaceParser(load_bisenet(self.weights_dir / BISENET, device=device))
        detector = self._detector or s3fd_detector(self.weights_dir / "s3fd.pth", device)
        dwpose = self._dwpose
        landmarks = (lambda frame: face_landmarks(dwpose(frame)[0])) if dwpose is not None else None

        def encode(faces: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return self._vae.encode_for_unet(faces).float().cpu().numpy()  # eps = 0: the mean

        return PrepTools(detector, landmarks, self._parser, encode, self.blur_ratio)

    def prepare(self, base: BaseVideo) -> PreparedAvatar:
        """Build (or open) the avatar's cached preparation; `avatar prepare` calls this ahead of time."""
        self.load()
        with one_at_a_time(f"musetalk:{base.key}"):  # slots meeting a new avatar prepare it once
            return load_or_prepare(base, self._prep_tools, self.cache_params(), self.cache_dir)

    # --- rendering -------------------------------------------------------------------------------

    def frames(self, base: BaseVideo, speech: Speech, frame_count: int, batch_size: int,
               report: dict | None = None) -> Iterator[np.ndarray]:
        t0 = time.perf_counter()
        avatar = self.prepare(base)
        prepare_s = time.perf_counter() - t0
        fps = float(base.fps)
        stage = dict.fromkeys(("windows", "unet", "decode", "blend"), 0.0)
        t0 = time.perf_counter()
        audio = AudioWindows(self._whisper, speech.samples_16k, fps)
        stage["windows"] += time.perf_counter() - t0
        weights = mouth_weights(frame_energy(speech.samples_16k, Speech.SAMPLE_RATE, fps, frame_count), fps)
        if len(audio) == 0:
            weights[:] = 0  # under one frame of audio: nothing to drive a mouth with
        # The official cut stops one window short of the video; every frame is kept here and the
        # frames past the audio's last window reuse it (as the Wav2Lip engine does).
        window_of_frame = np.minimum(np.arange(frame_count), max(len(audio) - 1, 0))
        source_of_frame = base.pingpong_indices(frame_count)
        passthrough = silent = 0
        with ThreadPoolExecutor(1, thread_name_prefix="musetalk-blend") as pool:
            pending = None
            for start in range(0, frame_count, batch_size):
                idx = source_of_frame[start:start + batch_size]
                w = weights[start:start + batch_size]
                has_face = avatar.has_face[idx]
                passthrough += int((~has_face).sum())
                silent += int((has_face & (w == 0)).sum())
                todo = np.flatnonzero(has_face & (w > 0))
                pred = None
                if len(todo):
                    t0 = time.perf_counter()
                    ctx = audio(window_of_frame[start + todo])
                    stage["windows"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    pred = self._denoise(self._latents(avatar, idx[todo]), ctx)
                    stage["unet"] += time.perf_counter() - t0
                job = pool.submit(self._compose, base, avatar, idx, w, todo, pred, stage)
                if pending is not None:
                    yield pending.result()
                pending = job
            if pending is not None:
                yield pending.result()
        self.last_stage_s = {k: round(v, 4) for k, v in stage.items()}
        if report is not None:
            report.update(passthrough_s=round(passthrough / fps, 3), source_mouth_s=round(silent / fps, 3),
                          faceless_base_frames=avatar.faceless_frames,
                          avatar_cache="hit" if avatar.cache_hit else "miss", avatar_prep_s=round(prepare_s, 3),
                          box_source="dwpose" if avatar.meta.get("dwpose_frames") else "s3fd")

    def _latents(self, avatar: PreparedAvatar, rows: np.ndarray):
        """The (B, 8, 32, 32) reference latents of base frames `rows`, on the device in the model's
        dtype: gathered on the GPU from the avatar's resident copy, else copied from the mapped
        cache (through pinned memory on CUDA, so the copy overlaps the previous batch's work)."""
        import torch

        device, dtype = self._placement.device, self.dtype
        resident = self._resident_latents(avatar)
        if resident is not None:
            return resident[torch.from_numpy(rows).to(device)]
        host = torch.from_numpy(np.ascontiguousarray(avatar.latents[rows]))
        if device.startswith("cuda"):
            host = host.pin_memory()
        return host.to(device, dtype, non_blocking=True)

    def _resident_latents(self, avatar: PreparedAvatar):
        """The avatar's latents kept on the GPU (uploaded on its first job when memory allows)."""
        import torch

        device = self._placement.device
        key = str(avatar.folder)
        with self._lock:
            if key in self._resident:
                self._resident.move_to_end(key)
                return self._resident[key]
            if not device.startswith("cuda"):
                return None
            nbytes = avatar.latents.size * self.dtype.itemsize
            free, total = torch.cuda.mem_get_info(device)
            if not keep_on_device(device, nbytes, free, total):
                return None
            latents = torch.from_numpy(np.ascontiguousarray(avatar.latents)).to(device, self.dtype)
            self._resident[key] = latents
            while len(self._resident) > RESIDENT_AVATARS:
                self._resident.popitem(last=False)
            return latents

    def _denoise(self, latents, windows):
        """(B, 8, 32, 32) latents on the device + (B, 50, 384) windows -> (B, 4, 32, 32) on the device."""
        import torch

        with torch.inference_mode():
            ctx = self._pe(windows.float()).to(self.dtype)  # the sinusoid table is added in float32 (rule 5)
            return self._unet(latents, 0, encoder_hidden_states=ctx).sample

    def _compose(self, base: BaseVideo, avatar: PreparedAvatar, idx: np.ndarray, w: np.ndarray,
                 todo: np.ndarray, pred, stage: dict) -> np.ndarray:
        """The worker's half: decode the batch, read its source frames, paste each face."""
        faces = ()
        if pred is not None:
            t0 = time.perf_counter()
            faces = self._vae.decode_bgr(pred)
            stage["decode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        frames = self.paste(base, avatar, idx, w, todo, faces)
        stage["blend"] += time.perf_counter() - t0
        return frames

    @staticmethod
    def paste(base: BaseVideo, avatar: PreparedAvatar, idx: np.ndarray, w: np.ndarray, todo: np.ndarray,
              faces) -> np.ndarray:
        """Source frames `idx` with `faces[j]` (256 x 256 BGR) pasted into frame `todo[j]`."""
        from models.musetalk.blending import paste_face

        frames = base.take(idx)
        for k, face in zip(todo, faces):
            i = int(idx[k])
            mask = avatar.mask(i)
            if w[k] < 1:  # a pause edge: fade the generated mouth out by weakening its alpha
                mask = (mask.astype(np.float32) * w[k] + 0.5).astype(np.uint8)
            frames[k] = paste_face(frames[k], face, avatar.box(i), mask, avatar.crop_box(i))
        return frames
