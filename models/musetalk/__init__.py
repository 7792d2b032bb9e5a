"""MuseTalk v1.5: the UNet, the sd-vae autoencoder, the face crop and their loaders.

One frame, in these terms (PIPELINES.md §4):
    face, box2 = crop_face(frame, box)                       # 256 x 256 BGR, v1.5 margin
    lat = vae.encode_for_unet(face[None])                    # (1, 8, 32, 32)
    ctx = pe(windows)                                        # (B, 50, 384)
    faces = vae.decode_bgr(unet(lat_batch, 0, encoder_hidden_states=ctx).sample)

Each name is documented in its module: `unet` (load_unet, PositionalEncoding), `vae` (load_vae,
MuseTalkVAE), `crop` (crop_face). The whisper front end (`models.musetalk.audio`), face parsing
(`models.musetalk.face_parsing`) and blending (`models.musetalk.blending`) are imported on
demand: they pull in transformers and Pillow.
"""

from __future__ import annotations

from models.checkpoint import CheckpointError

from .crop import crop_face
from .unet import PositionalEncoding, load_unet
from .vae import MuseTalkVAE, load_vae

__all__ = [
    "CheckpointError",
    "MuseTalkVAE",
    "PositionalEncoding",
    "crop_face",
    "load_unet",
    "load_vae",
]
