"""The Wav2Lip generator (nn.Modules only; loading lives in models/wav2lip/__init__.py)."""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvBlock, ConvTransposeBlock, audio_encoder, residual_stack

__all__ = ["Wav2Lip"]


def _down(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """Halve the resolution with a stride-2 conv, then `residuals` residual blocks."""
    return nn.Sequential(ConvBlock(cin, cout, 3, 2, 1), *residual_stack(cout, residuals))


def _up(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """Double the resolution with a stride-2 transposed conv, then residual blocks."""
    return nn.Sequential(
        ConvTransposeBlock(cin, cout, 3, 2, 1, output_padding=1), *residual_stack(cout, residuals)
    )


class Wav2Lip(nn.Module):
    """U-Net that paints a mouth for one mel window onto a half-masked face.

    forward(mel, face):
        mel:  (B, 1, 80, 16) float32, normalised log-mel in [-4, 4] (`audio.mel_windows`).
        face: (B, 6, 96, 96) float32 in [0, 1], BGR: channels 0-2 the crop with rows 48-95 zeroed,
              channels 3-5 the unmasked reference crop.
        returns (B, 3, 96, 96) float32 in [0, 1], BGR.

    Encoder resolutions are 96, 48, 24, 12, 6, 3, 1; each decoder stage output is concatenated
    as [decoder features, encoder skip] with the skip of the same resolution.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96
                _down(16, 32, 2),  # 48
                _down(32, 64, 3),  # 24
                _down(64, 128, 2),  # 12
                _down(128, 256, 2),  # 6
                _down(256, 512, 1),  # 3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1
            ]
        )
        self.audio_encoder = audio_encoder(residuals_at_256=1)
        # input channels = previous stage output + the encoder skip concatenated onto it
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 1, + skip 512
                nn.Sequential(  # 3, + skip 512
                    ConvTransposeBlock(1024, 512, 3, 1, 0), *residual_stack(512, 1)
                ),
                _up(1024, 512, 2),  # 6, + skip 256
                _up(768, 384, 2),  # 12, + skip 128
                _up(512, 256, 2),  # 24, + skip 64
                _up(320, 128, 2),  # 48, + skip 32
                _up(160, 64, 2),  # 96, + skip 16
            ]
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)

        x = self.audio_encoder(mel)  # (B, 512, 1, 1)
        for block, skip in zip(self.face_decoder_blocks, reversed(skips), strict=True):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)
