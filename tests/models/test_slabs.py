"""Slab-wise encoding and decoding equal one whole-volume pass, at any slab size, on volumes whose
GroupNorm statistics differ strongly from one part to another."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.inferers import SlidingWindowInferer

import medddpm.models.slabs as slabs
from medddpm.config import AutoencoderConfig
from medddpm.models.autoencoder import build_autoencoder, decode_tiled, encode_tiled
from medddpm.models.slabs import run_layers

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# 3 levels (f = 4), a 1x1 shortcut (16 -> 8 channels), two ResBlocks per level, bottleneck attention
TINY = AutoencoderConfig(
    channels=(8, 16, 16), norm_num_groups=4, patch_size=16, num_res_blocks=2, attention=True
)


def tiny_autoencoder(ac: AutoencoderConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_autoencoder(ac).eval()


def uneven(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Noise whose mean and spread change along every axis: the first half along D is 8x louder and
    shifted by +3, and a ramp runs along H; the second sample of a batch is 5x louder again."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    d, h = shape[2], shape[3]
    x[:, :, : d // 2] = 8 * x[:, :, : d // 2] + 3
    x = x + torch.linspace(-2, 2, h).reshape(1, 1, 1, h, 1)
    if shape[0] > 1:
        x[1] = 5 * x[1]
    return x


def count_slabs(monkeypatch) -> list[tuple[int, int]]:
    """Every slab-wise convolution call appends (its output channels, its output rows)."""
    calls: list[tuple[int, int]] = []
    original = slabs._conv_rows

    def counted(conv, x, pad, start, stop):
        calls.append((conv.out_channels, stop - start))
        return original(conv, x, pad, start, stop)

    monkeypatch.setattr(slabs, "_conv_rows", counted)
    return calls


@pytest.mark.parametrize("slab_voxels", [1, 2 * 20 * 24, 3 * 20 * 24 + 7, 10**9])
def test_decoding_in_slabs_equals_whole_volume_decoding(slab_voxels: int, monkeypatch):
    """Latent 4x5x6 -> image 16x20x24; slabs of 1, 2 and 3 image rows (fewer rows at the lower
    levels, never a whole layer) and one slab per layer."""
    ae = tiny_autoencoder()
    z = uneven((2, TINY.latent_channels, 4, 5, 6))
    with torch.no_grad():
        whole = ae.decode(z)
    calls = count_slabs(monkeypatch)
    tiled = decode_tiled(ae, z, slab_voxels)
    assert tiled.shape == whole.shape == (2, 1, 16, 20, 24)
    assert (tiled - whole).abs().max() <= 1e-4
    rows = min(16, max(1, slab_voxels // (20 * 24)))  # image rows per slab of the last convolution
    last = [n for channels, n in calls if channels == 1]  # the only 1-channel output
    assert sum(last) == 16 and max(last) == rows and len(last) == -(-16 // rows)


@pytest.mark.parametrize("slab_voxels", [1, 2 * 20 * 24, 10**9])
def test_encoding_in_slabs_equals_whole_volume_encoding(slab_voxels: int):
    """Image 16x20x24 (with the strided, asymmetrically padded downsampling) -> mu 4x5x6."""
    ae = tiny_autoencoder()
    x = uneven((2, 1, 16, 20, 24), seed=1)
    with torch.no_grad():
        whole, _ = ae.encode(x)
    tiled = encode_tiled(ae, x, slab_voxels)
    assert tiled.shape == whole.shape == (2, TINY.latent_channels, 4, 5, 6)
    assert (tiled - whole).abs().max() <= 1e-4


def test_the_volumes_are_ones_where_per_window_statistics_would_show():
    """What the slab tests guard against: MONAI's sliding windows over the same latent (each window
    normalised by its own GroupNorm statistics) miss the whole-volume decoding by far more than 1e-4."""
    ae = tiny_autoencoder()
    z = uneven((2, TINY.latent_channels, 4, 5, 6))
    with torch.no_grad():
        whole = ae.decode(z)
        windows = SlidingWindowInferer(roi_size=(2, 5, 6), sw_batch_size=1, overlap=0.5, mode="gaussian")
        per_window = windows(z, ae.decode)
    assert (per_window - whole).abs().max() > 0.05


def test_a_module_without_a_rule_is_refused():
    with pytest.raises(NotImplementedError, match="no slab-wise rule for ReLU"):
        run_layers([torch.nn.ReLU()], torch.zeros(1, 1, 2, 2, 2), 8)


def test_the_latent_space_decodes_and_encodes_in_slabs(monkeypatch):
    """Sampling decodes through the latent space: with a small ``slab_voxels`` its decode runs slab by
    slab (many convolution calls per layer) and still equals whole-volume decoding of z / s."""
    from medddpm.models.spaces import latent_space

    ac = TINY.model_copy(update={"slab_voxels": 20 * 24})
    ae = tiny_autoencoder()
    space = latent_space(ae, 0.5, ac, ac.latent_channels)
    z = uneven((1, ac.latent_channels, 4, 5, 6))
    calls = count_slabs(monkeypatch)
    decoded = space.decode(z)
    with torch.no_grad():
        whole = ae.decode(z / 0.5)
    assert len(calls) > 100 and [n for c, n in calls if c == 1] == [1] * 16  # the last layer: 16 slabs
    assert (decoded - whole).abs().max() <= 1e-4
    calls.clear()
    x = uneven((1, 1, 16, 20, 24))
    with torch.no_grad():
        mu, _ = ae.encode(x)
    assert (space.encode(x) - 0.5 * mu).abs().max() <= 1e-4
    assert len(calls) > 100


def _peak_decoding_mib(how: str, side: int) -> dict:
    """Peak resident memory (MiB above what was in use before) of decoding a [1, 4, side³] latent with a
    64-64-32-channel decoder, whole or in one-row slabs, in a fresh process (as test_memory.py does)."""
    code = f"""
import json, torch
from medddpm.config import AutoencoderConfig
from medddpm.models.autoencoder import build_autoencoder, decode_tiled
from medddpm.models.memory import _Meter
torch.set_num_threads(1)
torch.manual_seed(0)
ae = build_autoencoder(AutoencoderConfig(channels=(32, 64, 64), norm_num_groups=8)).eval()
z = torch.randn(1, 4, {side}, {side}, {side})
decode = (lambda z: ae.decode(z)) if {how!r} == "whole" else (lambda z: decode_tiled(ae, z, 32 * 32))
with torch.no_grad():
    decode(z[:, :, :2, :2, :2])  # warm-up: kernels, allocator
    meter = _Meter(torch.device("cpu"))
    meter.reset()
    out = decode(z)
print(json.dumps({{"peak": meter.peak() / 2**20, "out": out.numel() * 4 / 2**20}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_slab_decoding_holds_one_layer_not_the_whole_pass():
    """Latent 8³ -> image 32³ in one-row slabs (as a 256³ volume at the default slab_voxels). In slabs
    the peak is about the activations the last ResBlock holds whole: its input (64 channels), its
    middle and its output (32 each) at 32³, fp32 = 16 MiB, plus one slab's workspace. Whole-volume
    decoding also holds GroupNorm's and SiLU's whole copies beside the input and the upsampled
    copy beside the convolution's output (measured here: 35 MiB against 20)."""
    whole, tiled = _peak_decoding_mib("whole", 8), _peak_decoding_mib("slabs", 8)
    held = (64 + 32 + 32) * 32**3 * 4 / 2**20
    assert held <= tiled["peak"] <= 1.35 * held, (whole, tiled)
    assert tiled["peak"] < 0.65 * whole["peak"], (whole, tiled)
