"""A random-weight `79999_iter.pth` in the official container (a plain state dict).

Every key, shape and dtype comes from tests/reference/checkpoints/bisenet_face_parsing.json, so the
file loads strictly wherever the released one does. Used by the face-parsing tests and the node
engine tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.checkpoints import random_state_dict

MANIFEST = "bisenet_face_parsing"
#: the released file's name (download_weights.sh: models/face-parse-bisent/79999_iter.pth)
FILENAME = "79999_iter.pth"


def build_bisenet(directory: str | Path, seed: int = 0) -> Path:
    """Write `<directory>/79999_iter.pth` with random weights for every manifest key; its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    torch.save(random_state_dict(MANIFEST, seed), path)
    return path
