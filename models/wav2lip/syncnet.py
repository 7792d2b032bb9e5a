"""The Wav2Lip SyncNet expert (`SyncNet_color` in the official repo): a lip-sync discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvBlock, audio_encoder, residual_stack

__all__ = ["SyncNet"]


class SyncNet(nn.Module):
    """Embeds a mel window and five lower-half face crops into one 512-d space.

    forward(mel, face):
        mel:  (B, 1, 80, 16) float32, normalised log-mel in [-4, 4].
        face: (B, 15, 48, 96) float32 in [0, 1]: 5 consecutive frames, lower half (rows 48-95 of
              the 96x96 crop) only, each BGR, stacked on the channel axis in frame order.
        returns (audio_emb, face_emb), each (B, 512) float32 with unit L2 norm; their cosine
        similarity is the sync score used as a training loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(
            ConvBlock(15, 32, 7, 1, 3),  # 48x96
            ConvBlock(32, 64, 5, (1, 2), 1),  # 46x47
            *residual_stack(64, 2),
            ConvBlock(64, 128, 3, 2, 1),  # 23x24
            *residual_stack(128, 3),
            ConvBlock(128, 256, 3, 2, 1),  # 12x12
            *residual_stack(256, 2),
            ConvBlock(256, 512, 3, 2, 1),  # 6x6
            *residual_stack(512, 2),
            ConvBlock(512, 512, 3, 2, 1),  # 3x3
            ConvBlock(512, 512, 3, 1, 0),  # 1x1
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.audio_encoder = audio_encoder(residuals_at_256=2)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(mel), self.embed_face(face)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel windows -> (B, 512) unit-norm audio embeddings (the audio half alone)."""
        return F.normalize(self.audio_encoder(mel).flatten(1), p=2, dim=1)

    def embed_face(self, face: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) face windows -> (B, 512) unit-norm face embeddings."""
        return F.normalize(self.face_encoder(face).flatten(1), p=2, dim=1)
