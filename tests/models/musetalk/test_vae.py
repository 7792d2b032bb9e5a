"""models/musetalk/vae.py against diffusers' own AutoencoderKL.from_pretrained on the same files
(which renames the legacy attention keys itself) and hand-written pre- and post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from models.musetalk import CheckpointError, MuseTalkVAE, load_vae
from tests.checkpoints import manifest_shapes

from .build_unet_vae import VAE_MANIFEST, build_vae_dir, legacy_names

S = 0.18215


def faces(batch=2, seed=0) -> np.ndarray:
    """Smooth random BGR faces (a random image is all high frequency; these have structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (batch, 8, 8, 3)).astype(np.float64)
    big = small.repeat(32, axis=1).repeat(32, axis=2)
    noise = rng.normal(0, 12, big.shape)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def hand_preprocess(faces_bgr: np.ndarray, half_mask: bool) -> torch.Tensor:
    rgb = faces_bgr[..., [2, 1, 0]].astype(np.float64) / 255.0
    if half_mask:
        rgb[:, 128:] = 0.0
    return torch.from_numpy((rgb * 2.0 - 1.0).transpose(0, 3, 1, 2).astype(np.float32))


def hand_bgr(decoded: torch.Tensor) -> np.ndarray:
    image = np.clip(decoded.numpy().astype(np.float64) / 2 + 0.5, 0, 1)
    return np.rint(image * 255).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1]


@pytest.fixture(scope="module")
def reduced_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    return {
        container: build_vae_dir(root / container, seed=0, container=container, reduced=True)
        for container in ("bin", "safetensors")
    }


@pytest.fixture(scope="module")
def vae_and_reference(reduced_dirs):
    model_dir = reduced_dirs["bin"]
    reference = AutoencoderKL.from_pretrained(model_dir, local_files_only=True).eval()
    return load_vae(model_dir), reference


# --- loading ---


def test_bin_has_legacy_names_and_both_containers_load_equal(reduced_dirs):
    on_disk = torch.load(reduced_dirs["bin"] / "diffusion_pytorch_model.bin", weights_only=True)
    assert "encoder.mid_block.attentions.0.query.weight" in on_disk
    assert "decoder.mid_block.attentions.0.to_out.0.weight" not in on_disk
    from_bin, from_st = load_vae(reduced_dirs["bin"]), load_vae(reduced_dirs["safetensors"])
    for model in (from_bin, from_st):
        assert isinstance(model, MuseTalkVAE) and not model.training and not model.vae.training
        assert not any(p.requires_grad for p in model.parameters())
        assert model.scaling_factor == S
    a, b = from_bin.vae.state_dict(), from_st.vae.state_dict()
    assert a.keys() == b.keys() == set(manifest_shapes(VAE_MANIFEST))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the legacy tensors landed under their current names
    for current, legacy in legacy_names().items():
        assert torch.equal(a[current], on_disk[legacy]), current


def test_loaded_weights_equal_diffusers_from_pretrained(vae_and_reference):
    vae, reference = vae_and_reference
    expected = reference.state_dict()
    for key, value in vae.vae.state_dict().items():
        assert torch.equal(value, expected[key]), key


def _rewrite(model_dir, tmp_path, edit) -> object:
    target = tmp_path / "vae"
    target.mkdir()
    (target / "config.json").write_text((model_dir / "config.json").read_text())
    state = torch.load(model_dir / "diffusion_pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, target / "diffusion_pytorch_model.bin")
    return target


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("decoder.mid_block.attentions.0.value.bias"),
         "decoder.mid_block.attentions.0.to_v.bias"),
        (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(1)), "encoder.extra.weight"),
        (lambda s: s.__setitem__("quant_conv.weight", torch.zeros(8, 8, 3, 3)),
         "quant_conv.weight"),
        (lambda s: s.__setitem__("encoder.mid_block.attentions.0.to_q.weight", torch.zeros(1)),
         "encoder.mid_block.attentions.0.to_q.weight"),
    ],
    ids=["missing", "unexpected", "shape", "legacy-and-current"],
)
def test_strict_load_names_the_key(reduced_dirs, tmp_path, edit, named):
    broken = _rewrite(reduced_dirs["bin"], tmp_path, edit)
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        load_vae(broken)


def test_missing_weights_file_and_configured_scaling_factor(reduced_dirs, tmp_path):
    (tmp_path / "config.json").write_text((reduced_dirs["bin"] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        load_vae(tmp_path)
    config = json.loads((reduced_dirs["safetensors"] / "config.json").read_text())
    config["scaling_factor"] = 0.13025
    target = tmp_path / "scaled"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    (target / "diffusion_pytorch_model.safetensors").write_bytes(
        (reduced_dirs["safetensors"] / "diffusion_pytorch_model.safetensors").read_bytes())
    assert load_vae(target).scaling_factor == 0.13025


# --- preprocess, posterior, encode ---


def test_preprocess_matches_hand_recomputation(vae_and_reference):
    vae, _ = vae_and_reference
    x = faces()
    before = x.copy()
    for half_mask in (False, True):
        out = vae.preprocess(x, half_mask=half_mask)
        assert out.shape == (2, 3, 256, 256) and out.dtype == torch.float32
        torch.testing.assert_close(out, hand_preprocess(x, half_mask), rtol=0, atol=1e-6)
    masked = vae.preprocess(torch.from_numpy(x), half_mask=True)  # a CPU tensor works too
    assert (masked[:, :, 128:] == -1).all() and (masked[:, :, :128] > -1).any()
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError):
        vae.preprocess(x[:, :128])


def test_posterior_matches_diffusers_latent_dist(vae_and_reference):
    vae, reference = vae_and_reference
    x = hand_preprocess(faces(), half_mask=False)
    mean, std = vae.posterior(x)
    with torch.no_grad():
        dist = reference.encode(x).latent_dist
    assert mean.shape == std.shape == (2, 4, 32, 32)
    torch.testing.assert_close(mean, dist.mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(std, dist.std, rtol=0, atol=1e-4)
    assert (std > 0).all() and mean.std() > 1e-3


def test_encode_for_unet_matches_diffusers_with_explicit_noise(vae_and_reference):
    vae, reference = vae_and_reference
    x = faces()
    eps = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        masked = reference.encode(hand_preprocess(x, True)).latent_dist
        unmasked = reference.encode(hand_preprocess(x, False)).latent_dist
    expected = torch.cat([S * (masked.mean + masked.std * eps[:, :4]),
                          S * (unmasked.mean + unmasked.std * eps[:, 4:])], dim=1)
    out = vae.encode_for_unet(x, eps=eps)
    assert out.shape == (2, 8, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    # neither eps nor generator: the mean of each half (one face, a batch of one)
    mean = vae.encode_for_unet(x[1])
    expected_mean = S * torch.cat([masked.mean, unmasked.mean], 1)[1:]
    torch.testing.assert_close(mean, expected_mean, rtol=0, atol=1e-4)
    assert (mean - out[1:]).abs().max() > 1e-3  # the noise did something
    # a generator draws eps once as randn((B, 8, 32, 32)), masked half first; numpy eps works
    drawn = vae.encode_for_unet(x[1:], generator=torch.Generator().manual_seed(5))
    eps = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    explicit = vae.encode_for_unet(x[1:], eps=eps.numpy())
    torch.testing.assert_close(drawn, explicit, rtol=0, atol=1e-6)


def test_encode_for_unet_rejects_bad_noise_arguments(vae_and_reference):
    vae, _ = vae_and_reference
    with pytest.raises(ValueError, match="not both"):
        vae.encode_for_unet(faces(1), eps=torch.zeros(1, 8, 32, 32), generator=torch.Generator())
    with pytest.raises(ValueError, match="shape"):
        vae.encode_for_unet(faces(1), eps=torch.zeros(1, 4, 32, 32))


# --- decode ---


def test_decode_and_decode_bgr_match_diffusers(vae_and_reference):
    vae, reference = vae_and_reference
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3)) * S * 4
    with torch.no_grad():
        expected = reference.decode(latents / S).sample
    out = vae.decode(latents)
    assert out.shape == (2, 3, 256, 256) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)
    assert out.abs().max() > 1  # unclamped
    bgr = vae.decode_bgr(latents.numpy())
    assert bgr.dtype == np.uint8 and bgr.shape == (2, 256, 256, 3) and bgr.flags.c_contiguous
    diff = np.abs(bgr.astype(int) - hand_bgr(expected).astype(int))
    assert diff.max() <= 1
    # channel order matters: the RGB reading is far off
    assert np.abs(bgr.astype(int) - hand_bgr(expected)[..., ::-1]).max() > 10


def test_float64_model_returns_float64(reduced_dirs):
    vae = load_vae(reduced_dirs["safetensors"], dtype=torch.float64)
    assert {p.dtype for p in vae.parameters()} == {torch.float64}
    assert vae.preprocess(faces(1)).dtype == torch.float64
    assert vae.decode(torch.zeros(1, 4, 32, 32)).dtype == torch.float64


# --- the full-size sd-vae-ft-mse layout ---


def test_full_size_vae_loads_and_matches_diffusers(tmp_path):
    # Given the official file layout, the full 84M-parameter manifest with legacy names
    model_dir = build_vae_dir(tmp_path, seed=1, container="bin")
    vae = load_vae(model_dir)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    reference = AutoencoderKL.from_pretrained(model_dir, local_files_only=True).eval()
    x = faces(1, seed=4)
    # When the face is encoded for the UNet and a latent decoded
    lat = vae.encode_for_unet(x)
    image = vae.decode_bgr(lat[:, 4:])
    # Then the encoding agrees with diffusers' own path and the decoder runs
    with torch.no_grad():
        unmasked = reference.encode(hand_preprocess(x, False)).latent_dist.mean
    torch.testing.assert_close(lat[:, 4:], S * unmasked, rtol=0, atol=1e-4)
    assert image.shape == (1, 256, 256, 3) and image.dtype == np.uint8 and image.std() > 1
