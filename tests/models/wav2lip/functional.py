"""Independent functional re-computations of the Wav2Lip networks, driven by a state dict alone.

Layer hyper-parameters are written out here from PIPELINES.md §1.4 and the official layer tables,
not taken from models/, so a wrong stride, padding or residual flag in models/ shows up as a
numeric mismatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_bn_relu(
    sd, x, prefix, stride=1, padding=1, residual=False, transpose=False, output_padding=0
):
    weight, bias = sd[f"{prefix}.conv_block.0.weight"], sd[f"{prefix}.conv_block.0.bias"]
    if transpose:
        y = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)
    else:
        y = F.conv2d(x, weight, bias, stride, padding)
    bn = f"{prefix}.conv_block.1"
    y = F.batch_norm(
        y,
        sd[f"{bn}.running_mean"],
        sd[f"{bn}.running_var"],
        sd[f"{bn}.weight"],
        sd[f"{bn}.bias"],
        training=False,
        eps=1e-5,
    )
    return F.relu(y + x if residual else y)


AUDIO_STRIDES = {3: (3, 1), 6: (3, 3), 9: (3, 2)}


def functional_audio_encoder(sd, x, n_layers, residual):
    for i in range(n_layers):
        padding = 0 if i >= n_layers - 2 else 1
        x = conv_bn_relu(
            sd, x, f"audio_encoder.{i}", AUDIO_STRIDES.get(i, 1), padding, i in residual
        )
    return x


def functional_generator(sd, mel, face):
    layers_per_block = [1, 3, 4, 3, 3, 2, 2]
    skips, x = [], face
    for b, n in enumerate(layers_per_block):
        for layer in range(n):
            stride = 2 if (layer == 0 and 1 <= b <= 5) else 1
            padding = {0: 3, 6: 0}.get(b, 1)
            x = conv_bn_relu(
                sd,
                x,
                f"face_encoder_blocks.{b}.{layer}",
                stride,
                padding,
                residual=(layer > 0 and b <= 5),
            )
        skips.append(x)

    x = functional_audio_encoder(sd, mel, 13, residual={1, 2, 4, 5, 7, 8, 10})
    decoder_layers = [1, 2, 3, 3, 3, 3, 3]
    for b, n in enumerate(decoder_layers):
        for layer in range(n):
            prefix = f"face_decoder_blocks.{b}.{layer}"
            if b == 0:
                x = conv_bn_relu(sd, x, prefix, 1, 0)
            elif layer == 0 and b == 1:
                x = conv_bn_relu(sd, x, prefix, 1, 0, transpose=True)
            elif layer == 0:
                x = conv_bn_relu(sd, x, prefix, 2, 1, transpose=True, output_padding=1)
            else:
                x = conv_bn_relu(sd, x, prefix, 1, 1, residual=True)
        x = torch.cat([x, skips[-1 - b]], dim=1)

    x = conv_bn_relu(sd, x, "output_block.0", 1, 1)
    return torch.sigmoid(F.conv2d(x, sd["output_block.1.weight"], sd["output_block.1.bias"]))


# SyncNet_color
FACE_STRIDES = {1: (1, 2), 4: 2, 8: 2, 11: 2, 14: 2}
FACE_PADDING = {0: 3, 15: 0, 16: 0}
FACE_RESIDUAL = {2, 3, 5, 6, 7, 9, 10, 12, 13}


def functional_syncnet(sd, mel, face):
    x = face
    for i in range(17):
        x = conv_bn_relu(
            sd,
            x,
            f"face_encoder.{i}",
            FACE_STRIDES.get(i, 1),
            FACE_PADDING.get(i, 1),
            i in FACE_RESIDUAL,
        )
    face_emb = x.reshape(len(x), -1)
    audio_emb = functional_audio_encoder(sd, mel, 14, residual={1, 2, 4, 5, 7, 8, 10, 11}).reshape(
        len(mel), -1
    )
    return audio_emb / audio_emb.norm(dim=1, keepdim=True), face_emb / face_emb.norm(
        dim=1, keepdim=True
    )
