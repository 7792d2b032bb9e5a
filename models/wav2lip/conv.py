"""The two building blocks shared by the Wav2Lip generator and its SyncNet expert.

Attribute names (`conv_block.0` the convolution, `conv_block.1` the BatchNorm) follow the official
checkpoints, so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBlock", "ConvTransposeBlock", "residual_stack", "audio_encoder"]

IntPair = int | tuple[int, int]


class ConvBlock(nn.Module):
    """conv -> BatchNorm -> (+ input when `residual`) -> ReLU.

    A residual block must keep the shape, i.e. cin == cout with stride 1 and "same" padding.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise ValueError("a residual block needs cin == cout and stride 1")
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


class ConvTransposeBlock(nn.Module):
    """transposed conv -> BatchNorm -> ReLU (the decoder's upsampling step)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv_block(x))


def residual_stack(channels: int, count: int) -> list[ConvBlock]:
    """`count` shape-preserving 3x3 residual blocks."""
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def audio_encoder(residuals_at_256: int) -> nn.Sequential:
    """Mel window (B, 1, 80, 16) -> audio embedding (B, 512, 1, 1).

    The generator and the SyncNet expert use the same stack except for the number of residual
    blocks at 256 channels (1 in the generator, 2 in SyncNet). Spatial sizes: 80x16 -> 27x16
    (stride 3,1) -> 9x6 (stride 3) -> 3x3 (stride 3,2) -> 1x1 (3x3 conv, no padding).
    """
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1),
        *residual_stack(32, 2),
        ConvBlock(32, 64, 3, (3, 1), 1),
        *residual_stack(64, 2),
        ConvBlock(64, 128, 3, 3, 1),
        *residual_stack(128, 2),
        ConvBlock(128, 256, 3, (3, 2), 1),
        *residual_stack(256, residuals_at_256),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, 512, 1, 1, 0),
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every block's eval-mode BatchNorm into its convolution, in place; returns `model`.

    Inference only: y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is itself a convolution,
    so the BN pass (a full read and write of every activation) disappears. Outputs match the
    unfolded model to float rounding. The state dict no longer matches the official keys, so
    fold after loading, never before."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in model.modules():
        if isinstance(block, (ConvBlock, ConvTransposeBlock)) and isinstance(block.conv_block[1], nn.BatchNorm2d):
            conv, bn = block.conv_block[0], block.conv_block[1]
            transpose = isinstance(block, ConvTransposeBlock)
            block.conv_block[0] = fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=transpose)
            block.conv_block[1] = nn.Identity()
    return model
