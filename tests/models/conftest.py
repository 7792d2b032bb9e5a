"""The session-wide `checkpoints` fixture over tests/checkpoints.py (random-weight official files).

The manifests (tests/reference/checkpoints/*.json, copied into the repo) list every
state-dict key, shape and dtype of the official files. Nothing here downloads weights: tensors are
random, written to pytest's tmp dirs, and never committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.checkpoints import (load_manifest, manifest_dtypes, manifest_shapes, random_state_dict, save,
                               training_container)


class CheckpointFactory:
    """Session-wide builder of random-weight checkpoint files (each built once, then reused)."""

    load_manifest = staticmethod(load_manifest)
    manifest_shapes = staticmethod(manifest_shapes)
    manifest_dtypes = staticmethod(manifest_dtypes)
    training_container = staticmethod(training_container)
    save = staticmethod(save)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._states: dict[str, dict[str, torch.Tensor]] = {}
        self._files: dict[tuple, Path] = {}

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The session's random state dict for a manifest (seed 0); do not mutate it."""
        if name not in self._states:
            self._states[name] = random_state_dict(name)
        return self._states[name]

    def file(self, name: str, container: str, legacy: bool = False) -> Path:
        """A checkpoint file: container "training" (module.-prefixed dict) or "plain"."""
        key = (name, container, legacy)
        if key not in self._files:
            state = self.state_dict(name)
            obj = training_container(state) if container == "training" else dict(state)
            path = self.directory / f"{name}-{container}{'-legacy' if legacy else ''}.pth"
            self._files[key] = save(obj, path, legacy=legacy)
        return self._files[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    return CheckpointFactory(tmp_path_factory.mktemp("checkpoints"))
