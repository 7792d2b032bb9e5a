"""Weight files: what each local engine loads, where it is published, and how to check it.

Data and pure helpers only. Fetching lives in scripts/download_weights.py; loaders call
`missing_weights` (cheap, existence only) and `verify_file` (size, then sha256).

Every row comes from shared/reference/WEIGHTS.md; the tag after a number is that file's
confidence: [V] publisher, [M] two or more HF mirrors agree, [2] third-party manifests only.
Layout inside WEIGHTS_DIR (MuseTalk's own `models/` layout; Wav2Lip's official file names):

    wav2lip_gan.pth  wav2lip.pth  lipsync_expert.pth  s3fd.pth
    musetalkV15/{unet.pth, musetalk.json}
    sd-vae/{config.json, diffusion_pytorch_model.safetensors}
    whisper/{config.json, preprocessor_config.json, model.safetensors}
    face-parse-bisent/{79999_iter.pth, resnet18-5c106cde.pth}
    dwpose/dw-ll_ucoco_384.onnx

MuseTalk's optional files: DWPose (yzd-v/DWPose's ONNX export) places the face crop from
landmarks as the official preprocessing does; without it the engine uses S3FD boxes (lower
quality with the real weights; `health` says so). scripts/download_weights.py fetches it by
default (RECOMMENDED) but a failure does not fail the run. `resnet18-5c106cde.pth` is optional:
`79999_iter.pth` already holds every backbone weight (PIPELINES.md §4.6 rule 12).

ALTERNATIVES names files accepted in place of a manifest row: the official MuseTalk download
script fetches the pickled `.bin` containers of sd-vae and whisper, which the loaders read too.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALTERNATIVES",
    "CHUNK_BYTES",
    "DWPOSE",
    "ENGINES",
    "LICENCES",
    "MANIFEST",
    "ONE_OF",
    "RECOMMENDED",
    "SHARED",
    "WeightFile",
    "WeightMismatch",
    "files_for",
    "missing_weights",
    "missing_weights_reason",
    "present_path",
    "sha256_file",
    "verify_file",
    "wav2lip_checkpoint",
]

#: Read size when hashing, bytes (1 MiB).
CHUNK_BYTES = 1 << 20
#: Local engines that load weights from WEIGHTS_DIR.
ENGINES = ("musetalk", "wav2lip")
#: `WeightFile.engine` of a file every engine loads (S3FD).
SHARED = "shared"

LICENCES = {
    "musetalk": "MIT code; weights usable commercially per the MuseTalk README (HF card: creativeml-openrail-m)",
    "wav2lip": "non-commercial research only (official weights, Wav2Lip README)",
}

#: Files an engine needs at least one of, preferred first (local paths).
ONE_OF: dict[str, tuple[str, ...]] = {
    "wav2lip": ("wav2lip_gan.pth", "wav2lip.pth"),  # GAN: sharper mouths, same architecture
}

#: Manifest local path -> other local paths the loaders accept in its place (not downloaded,
#: not hash-checked: the official download script's pickled containers, WEIGHTS.md §2).
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "sd-vae/diffusion_pytorch_model.safetensors": ("sd-vae/diffusion_pytorch_model.bin",),
    "whisper/model.safetensors": ("whisper/pytorch_model.bin",),
}

#: The DWPose ONNX export, relative to WEIGHTS_DIR (optional for musetalk).
DWPOSE = "dwpose/dw-ll_ucoco_384.onnx"
#: Optional files download_weights.py fetches without --optional (a failure still does not count).
RECOMMENDED = frozenset({DWPOSE})

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class WeightMismatch(ValueError):
    """A weight file on disk is not the published one (wrong size or sha256)."""


@dataclass(frozen=True)
class WeightFile:
    engine: str  # "musetalk", "wav2lip" or SHARED
    repo_id: str  # Hugging Face model repo
    revision: str  # 40-hex commit; "main" only where no commit is known (see MANIFEST)
    filename: str  # path inside the repo
    local_path: str  # POSIX path relative to WEIGHTS_DIR
    size: int  # bytes
    sha256: str  # of the file itself (the Hub's LFS oid)
    licence: str
    required: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"{self.local_path}: size must be positive, got {self.size}")
        if not _HEX64.fullmatch(self.sha256):
            raise ValueError(f"{self.local_path}: sha256 must be 64 lowercase hex digits")
        if Path(self.local_path).is_absolute() or ".." in Path(self.local_path).parts:
            raise ValueError(f"{self.local_path}: local_path must stay inside WEIGHTS_DIR")

    @property
    def pinned(self) -> bool:
        """Whether `revision` is a commit (immutable) rather than a branch."""
        return bool(_HEX40.fullmatch(self.revision))


# --- revisions (WEIGHTS.md §1-3) -------------------------------------------------------------
# MuseTalk: what ~10 third-party manifests pin [2]; the Hub pages WEIGHTS.md saw predate v1.5,
# so this commit is unverified. The unet/musetalk.json sha256 below are what those manifests pin.
_MUSETALK_REV = "3ef28bc5cff08c90ad8178a25f1b570cd800170f"
# sd-vae-ft-mse: pinned by manifests [2]. WEIGHTS.md does not order it against 651c6dc, the
# commit that added the .safetensors; a manifest found outside WEIGHTS.md fetches the
# .safetensors at this commit. If the Hub 404s, fall back to the .bin row kept below.
_SD_VAE_REV = "31f26fdeee1355a5c34592e401dd41e45d25a493"
_WHISPER_REV = "169d4a4341b33bc18d8881c4b69c2e104e1cc0af"  # main [V]
_BISENET_REV = "0073b233a5a3c4b1377d4dbf49245017938a72b5"  # main of the mirror the upstream .bat uses [2]
_WAV2LIP_REV = "fb925b05f0d353850ee0c56810e4545e274e2b5a"  # commit holding all three oids [M]
# S3FD: WEIGHTS.md names HF mirrors but no commit for any of them, so this one row follows a
# branch; the sha256 below still pins the bytes. chunyu-li/face-alignment keeps upstream's
# file name, whose suffix is the sha256 prefix (619a316812). camenduru/Wav2Lip
# `face_detection/detection/sfd/s3fd.pth` is the other mirror with a matching sha [2].
_S3FD_REV = "main"

_MUSETALK = LICENCES["musetalk"]
_WAV2LIP = LICENCES["wav2lip"]

MANIFEST: tuple[WeightFile, ...] = (
    # --- Wav2Lip (Nekochu/Wav2Lip, all three at the repo root) ------------------------------
    WeightFile("wav2lip", "Nekochu/Wav2Lip", _WAV2LIP_REV, "wav2lip_gan.pth", "wav2lip_gan.pth",
               435_801_865, "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",  # [M]
               _WAV2LIP, required=False),  # one of ONE_OF["wav2lip"]
    WeightFile("wav2lip", "Nekochu/Wav2Lip", _WAV2LIP_REV, "wav2lip.pth", "wav2lip.pth",
               435_807_851, "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37",  # [M]
               _WAV2LIP, required=False),  # not camenduru's: its wav2lip.pth is a 167 kB stub
    WeightFile("wav2lip", "Nekochu/Wav2Lip", _WAV2LIP_REV, "lipsync_expert.pth", "lipsync_expert.pth",
               197_357_631, "9b9936c721696446eeed353032cab242a8cf0eed8c46cde540366f6ae5493be5",  # [M]
               _WAV2LIP, required=False),  # SyncNet: sync scoring only
    # --- S3FD, loaded by both engines ------------------------------------------------------------
    WeightFile(SHARED, "chunyu-li/face-alignment", _S3FD_REV, "s3fd-619a316812.pth", "s3fd.pth",
               89_843_225, "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",  # [M]
               "face-alignment code BSD-3-Clause [unverified]; weights' licence not stated"),
    # --- MuseTalk v1.5 ---------------------------------------------------------------------------
    WeightFile("musetalk", "TMElyralab/MuseTalk", _MUSETALK_REV, "musetalkV15/unet.pth", "musetalkV15/unet.pth",
               3_400_074_924, "7ebf6c98c181e20838e4c0054e96e944ac60d5d692cc01db42839fe11b787007",  # [2]
               _MUSETALK),
    WeightFile("musetalk", "TMElyralab/MuseTalk", _MUSETALK_REV, "musetalkV15/musetalk.json",
               "musetalkV15/musetalk.json",
               748, "5b6923aee04d71692e0e9846c471e0a4ea07a4f686d39545e472bd4ba17e1b47",  # [2]
               _MUSETALK),
    WeightFile("musetalk", "stabilityai/sd-vae-ft-mse", _SD_VAE_REV, "config.json", "sd-vae/config.json",
               547, "92d3dfb746fca211a2c9e019e285f8597412211728dce3c5bcf4eda0f2d62e7e",  # size [V], sha [2]
               "MIT"),
    # Safetensors, not upstream's pickle: diffusers' from_pretrained prefers it when present.
    # The .bin: 334,707,217 B, 1b4889b6b1d4ce7ae320a02dedaeff1780ad77d415ea0d744b476155c6377ddc [M].
    WeightFile("musetalk", "stabilityai/sd-vae-ft-mse", _SD_VAE_REV, "diffusion_pytorch_model.safetensors",
               "sd-vae/diffusion_pytorch_model.safetensors",
               334_643_276, "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815",  # [2]
               "MIT"),
    WeightFile("musetalk", "openai/whisper-tiny", _WHISPER_REV, "config.json", "whisper/config.json",
               1_983, "ffdccec4f3211f4c63310f2b7098f309fe70f3952cedc5e4d11e43f5b2379b98",  # [2]
               "Apache-2.0"),
    WeightFile("musetalk", "openai/whisper-tiny", _WHISPER_REV, "preprocessor_config.json",
               "whisper/preprocessor_config.json",
               184_990, "9b5cd03a36fbb8a627c64d98a5b5b126ead95a77720723944487311f0110b666",  # [2]
               "Apache-2.0"),
    # Safetensors again (pytorch_model.bin: 151,095,027 B, 9607f98a…aac1d [M]). MuseTalk uses
    # only the encoder; transformers loads it from the full model file.
    WeightFile("musetalk", "openai/whisper-tiny", _WHISPER_REV, "model.safetensors", "whisper/model.safetensors",
               151_061_672, "7ebd0e69e78190ffe1438491fa05cc1f5c1aa3a4c4db3bc1723adbb551ea2395",  # size [2], sha [M]
               "Apache-2.0"),
    # BiSeNet from the HF mirror (canonical: Google Drive 154JgKpz…, not scriptable).
    WeightFile("musetalk", "ManyOtherFunctions/face-parse-bisent", _BISENET_REV, "79999_iter.pth",
               "face-parse-bisent/79999_iter.pth",
               53_289_463, "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",  # [M]
               "unstated upstream [unverified]; trained on CelebAMask-HQ (non-commercial terms)"),
    # Never loaded: 79999_iter.pth holds the backbone too. Kept for the official layout.
    WeightFile("musetalk", "ManyOtherFunctions/face-parse-bisent", _BISENET_REV, "resnet18-5c106cde.pth",
               "face-parse-bisent/resnet18-5c106cde.pth",
               46_827_520, "5c106cde386e87d4033832f2996f5493238eda96ccf559d1d62760c4de0613f8",  # [M]
               "torchvision BSD-3-Clause [unverified for the weights]", required=False),
    # DWPose whole-body landmarks (RTMPose-l, ONNX export): the official crop placement.
    WeightFile("musetalk", "yzd-v/DWPose", "f7c16a3d45ad3783db41471848c80fbc281cabac",
               "dw-ll_ucoco_384.onnx", DWPOSE,
               134_399_116, "724f4ff2439ed61afb86fb8a1951ec39c6220682803b4a8bd4f598cd913b1843",  # [V]
               "Apache-2.0", required=False),  # optional: without it the engine uses S3FD boxes
)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def files_for(engine: str) -> list[WeightFile]:
    """Every file `engine` may load (required, one-of and optional), shared ones included."""
    _check_engine(engine)
    return [wf for wf in MANIFEST if wf.engine in (engine, SHARED)]


def missing_weights(engine: str, weights_dir: str | os.PathLike[str]) -> list[str]:
    """Local paths `engine` needs that are not files under `weights_dir`.

    Existence only (sha256 of 5 GB is `verify_file`'s job). A one-of group that has no member
    on disk is reported once, as "wav2lip_gan.pth or wav2lip.pth". A file of ALTERNATIVES
    counts for the manifest row it stands in for.
    """
    root = Path(weights_dir)
    missing = [wf.local_path for wf in files_for(engine)
               if wf.required and present_path(root, wf.local_path) is None]
    group = ONE_OF.get(engine, ())
    if group and not any((root / p).is_file() for p in group):
        missing.append(" or ".join(group))
    return missing


def missing_weights_reason(engine: str, weights_dir: str | os.PathLike[str]) -> str | None:
    """The skip reason a user reads when `engine`'s weights are absent; None when all are there."""
    missing = missing_weights(engine, weights_dir)
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"weights not found in WEIGHTS_DIR ({weights_dir}): missing {shown}; "
            f"run scripts/download_weights.py --engine {engine}")


def present_path(weights_dir: str | os.PathLike[str], local_path: str) -> Path | None:
    """The file on disk for manifest path `local_path`: itself, else its first ALTERNATIVES entry
    present; None when neither is a file."""
    for rel in (local_path, *ALTERNATIVES.get(local_path, ())):
        path = Path(weights_dir) / rel
        if path.is_file():
            return path
    return None


def wav2lip_checkpoint(weights_dir: str | os.PathLike[str]) -> Path:
    """The Wav2Lip generator to load: the first of ONE_OF["wav2lip"] on disk (GAN preferred)."""
    for rel in ONE_OF["wav2lip"]:
        path = Path(weights_dir) / rel
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no Wav2Lip generator in {weights_dir}: need one of {', '.join(ONE_OF['wav2lip'])} "
        "(python scripts/download_weights.py --engine wav2lip)"
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in CHUNK_BYTES pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], wf: WeightFile) -> None:
    """Raise WeightMismatch unless `path` has `wf`'s size and sha256 (size first: it is free)."""
    size = os.stat(path).st_size  # FileNotFoundError for a missing file, as open() would
    if size != wf.size:
        raise WeightMismatch(
            f"{wf.local_path}: {size:,} bytes on disk, expected {wf.size:,} (truncated or a different file)"
        )
    actual = sha256_file(path)
    if actual != wf.sha256:
        raise WeightMismatch(f"{wf.local_path}: sha256 {actual}, expected {wf.sha256} (corrupt or a different file)")
