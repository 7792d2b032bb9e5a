import pytest

from node.device import choose_placement


def test_cpu_machine_runs_fp32_on_cpu():
    p = choose_placement("auto", cuda_available=lambda: False)
    assert (p.device, p.fp16, p.channels_last) == ("cpu", False, True)


@pytest.mark.parametrize("cap,fp16", [((9, 0), True), ((8, 0), True), ((7, 5), True), ((7, 0), True),
                                      ((6, 1), False), ((5, 2), False)])
def test_fp16_only_from_volta_on(cap, fp16):
    p = choose_placement("auto", cuda_available=lambda: True, capability=lambda d: cap)
    assert p.device == "cuda" and p.fp16 is fp16 and p.channels_last


def test_explicit_settings():
    assert choose_placement("cpu", cuda_available=lambda: True).device == "cpu"
    p = choose_placement("cuda:1", cuda_available=lambda: True, capability=lambda d: (8, 6))
    assert p.device == "cuda:1" and p.fp16
    fallback = choose_placement("cuda", cuda_available=lambda: False)
    assert fallback.device == "cpu" and "not available" in fallback.reason


def test_real_probe_on_this_machine():
    import torch
    p = choose_placement("auto")
    assert p.device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.requires_cuda
def test_wav2lip_generator_in_fp16_on_cuda_matches_fp32_on_cpu():
    # On a GPU, the engine's placement (fp16 autocast, channels-last) keeps the generator's output
    import torch

    from models.wav2lip import Wav2Lip
    from tests.checkpoints import random_state_dict

    placement = choose_placement("auto")
    assert placement.device.startswith("cuda")
    model = Wav2Lip()
    model.load_state_dict(random_state_dict("wav2lip_generator", seed=3))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    faces, mels = torch.rand(4, 6, 96, 96, generator=gen), torch.randn(4, 1, 80, 16, generator=gen)
    with torch.no_grad():
        expected = model(mels, faces)
        gpu = model.to(placement.device).to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=placement.fp16):
            got = gpu(mels.to(placement.device), faces.to(placement.device).to(memory_format=torch.channels_last))
    assert (got.float().cpu() - expected).abs().max() < 2e-2
