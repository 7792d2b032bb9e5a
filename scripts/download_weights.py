#!/usr/bin/env python
"""Fetch the local engines' weights from the Hugging Face Hub at pinned revisions, verified.

    python scripts/download_weights.py [--engine musetalk|wav2lip|all] [--weights-dir DIR]
        [--endpoint URL] [--optional] [--verify-only] [--force]

The manifest is node/weights.py. Each file is fetched with hf_hub_download into
WEIGHTS_DIR/.download/<repo>/ (same filesystem, so the final os.replace is atomic and a
crash never leaves a half file at its real path), checked for size and sha256, then moved
to its local_path. An interrupted download resumes from there on the next run.

A file already in place is verified and skipped without any request: its sha256 pins the
bytes, so downloading it again could not change them. A file in place that fails
verification is reported and left alone (it may be a deliberate local substitute) unless
--force, which replaces it.

Wav2Lip needs one generator: the one already on disk, else wav2lip_gan.pth. --optional also
fetches the other generator and lipsync_expert.pth (SyncNet, sync scoring only).
MuseTalk's DWPose export (dwpose/dw-ll_ucoco_384.onnx) is optional but fetched by default
(weights.RECOMMENDED): without it the engine places faces with S3FD boxes. Its failure is
printed and does not change the exit status. A `.bin` container already in place where the
manifest names a `.safetensors` (weights.ALTERNATIVES, the official MuseTalk layout) is used as
it is, without a download (there is no pinned hash to verify it against).

Exit status: 0 when every required file is in place and verified, 1 otherwise (failures of
optional files are printed but do not count), 2 on bad arguments.
HF_TOKEN is read from the environment and handed to huggingface_hub; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `python scripts/download_weights.py` from a checkout
    sys.path.insert(0, _ROOT)

import httpx  # noqa: E402
from huggingface_hub import hf_hub_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from node import weights  # noqa: E402
from node.weights import WeightFile, WeightMismatch  # noqa: E402

#: Default WEIGHTS_DIR when the env var is unset (relative to the working directory).
DEFAULT_WEIGHTS_DIR = "weights"
#: Staging folder inside WEIGHTS_DIR; removed after a run with no failure.
STAGING_DIRNAME = ".download"

DOWNLOADED = "downloaded"
PRESENT = "already present"
MISSING = "missing"
FAILED = "FAILED"

# What hf_hub_download raises for a refused or unreachable download (FileMetadataError is an OSError).
_HUB_ERRORS = (HfHubHTTPError, EntryNotFoundError, httpx.HTTPError, OSError, ValueError)


@dataclass(frozen=True)
class Outcome:
    wf: WeightFile
    status: str  # DOWNLOADED, PRESENT, MISSING or FAILED
    detail: str = ""
    counts: bool = True  # False for optional files: a failure does not change the exit status

    @property
    def ok(self) -> bool:
        return self.status in (DOWNLOADED, PRESENT)

    def line(self) -> str:
        note = "" if self.counts else " (optional)"
        detail = f" - {self.detail}" if self.detail else ""
        return f"{self.status:<15} {self.wf.local_path}{note}{detail}"


def plan(engines: list[str], weights_dir: Path, include_optional: bool) -> list[tuple[WeightFile, bool]]:
    """(file, counts for the exit status) for `engines`, shared files once, in manifest order."""
    chosen: dict[str, bool] = {}  # local_path -> counts
    for engine in engines:
        group = weights.ONE_OF.get(engine, ())
        # The generator the engine will load: one already on disk, else the preferred one.
        pick = next((p for p in group if (weights_dir / p).is_file()), group[0] if group else None)
        for wf in weights.files_for(engine):
            counts = wf.required or wf.local_path == pick
            if counts or include_optional or wf.local_path in weights.RECOMMENDED:
                chosen[wf.local_path] = chosen.get(wf.local_path, False) or counts
    return [(wf, chosen[wf.local_path]) for wf in weights.MANIFEST if wf.local_path in chosen]


def describe(exc: BaseException, wf: WeightFile) -> str:
    """One line for a failed hf_hub_download, naming the file, never a token."""
    while isinstance(exc, ValueError) and exc.__cause__ is not None:  # "Force download failed ..."
        exc = exc.__cause__
    where = f"{wf.repo_id}@{wf.revision}"
    if isinstance(exc, GatedRepoError):
        return f"{where}: gated repository; accept its terms on the Hub and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{where}: repository not found (or private: set HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"{where}: revision not found"
    if isinstance(exc, LocalEntryNotFoundError):
        return f"{where}: Hub unreachable or its answer unusable ({_first_line(exc)})"
    if isinstance(exc, EntryNotFoundError):
        return f"{where}: {wf.filename} not found at this revision (404 EntryNotFound)"
    return f"{where}: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _staging_dir(weights_dir: Path, wf: WeightFile) -> Path:
    # One folder per repo: sd-vae and whisper both have a config.json.
    return weights_dir / STAGING_DIRNAME / wf.repo_id.replace("/", "--")


def ensure(
    wf: WeightFile,
    weights_dir: Path,
    *,
    endpoint: str | None,
    token: str | None,
    force: bool,
    verify_only: bool,
    counts: bool = True,
) -> Outcome:
    """Make `wf` present and verified at WEIGHTS_DIR/local_path, downloading only if needed."""
    dest = weights_dir / wf.local_path
    replacing = ""
    if not dest.is_file():
        alternative = weights.present_path(weights_dir, wf.local_path)
        if alternative is not None:  # e.g. the official download script's pickled .bin
            rel = alternative.relative_to(weights_dir).as_posix()
            return Outcome(wf, PRESENT, f"using {rel} in its place (not verified: no pinned hash)", counts)
    if dest.is_file():
        try:
            weights.verify_file(dest, wf)
            return Outcome(wf, PRESENT, counts=counts)
        except WeightMismatch as e:
            if verify_only or not force:
                hint = "" if verify_only else "; rerun with --force to replace it"
                return Outcome(wf, FAILED, f"{e}{hint}", counts)
            replacing = " (replaced a copy that failed verification)"
    elif verify_only:
        return Outcome(wf, MISSING, counts=counts)

    try:
        staged = Path(hf_hub_download(
            wf.repo_id, wf.filename, revision=wf.revision,
            local_dir=_staging_dir(weights_dir, wf), endpoint=endpoint, token=token,
        ))
    except _HUB_ERRORS as e:
        return Outcome(wf, FAILED, describe(e, wf), counts)
    try:
        weights.verify_file(staged, wf)
    except WeightMismatch as e:
        staged.unlink(missing_ok=True)  # never resume from bytes known to be wrong
        return Outcome(wf, FAILED, f"downloaded from {wf.repo_id}@{wf.revision} but rejected: {e}", counts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    return Outcome(wf, DOWNLOADED, f"{wf.size:,} bytes from {wf.repo_id}@{wf.revision[:12]}{replacing}", counts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="download_weights.py",
        description="Download and verify the MuseTalk / Wav2Lip weights (manifest: node/weights.py).",
    )
    p.add_argument("--engine", choices=[*weights.ENGINES, "all"], default="all")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help=f"default: $WEIGHTS_DIR or ./{DEFAULT_WEIGHTS_DIR}")
    p.add_argument("--endpoint", default=None,
                   help="Hub base URL (default: huggingface_hub's, i.e. $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--optional", action="store_true",
                   help="also fetch optional files (the second Wav2Lip generator, lipsync_expert.pth, "
                        "resnet18-5c106cde.pth)")
    p.add_argument("--verify-only", action="store_true", help="check files in place; download nothing")
    p.add_argument("--force", action="store_true", help="replace files in place that fail verification")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    weights_dir = args.weights_dir or Path(os.environ.get("WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)
    engines = list(weights.ENGINES) if args.engine == "all" else [args.engine]
    token = os.environ.get("HF_TOKEN") or None

    for engine in engines:
        print(f"{engine}: {weights.LICENCES[engine]}")
    if not args.verify_only:
        weights_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for wf, counts in plan(engines, weights_dir, args.optional):
        outcome = ensure(wf, weights_dir, endpoint=args.endpoint, token=token, force=args.force,
                         verify_only=args.verify_only, counts=counts)
        print(outcome.line(), flush=True)
        outcomes.append(outcome)

    # A failed generator does not count when another member of its one-of group is in place.
    in_place = {o.wf.local_path for o in outcomes if o.ok}
    covered = {p for e in engines for g in [weights.ONE_OF.get(e, ())] if in_place & set(g) for p in g}
    failed = [o for o in outcomes if o.counts and not o.ok and o.wf.local_path not in covered]
    if not any(o.status == FAILED for o in outcomes):
        shutil.rmtree(weights_dir / STAGING_DIRNAME, ignore_errors=True)  # keep partials only for a retry
    summary = ", ".join(f"{sum(o.status == s for o in outcomes)} {s.lower()}" for s in (DOWNLOADED, PRESENT, MISSING, FAILED))
    print(f"{weights_dir}: {summary}" + (f"; {len(failed)} required file(s) not in place" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
