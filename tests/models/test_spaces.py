"""The Haar wavelet transform and the space registry."""

from __future__ import annotations

import itertools
import math
from typing import get_args

import numpy as np
import pytest
import torch

from medddpm.config import ModelConfig
from medddpm.errors import InputError
from medddpm.models.spaces import (
    SPACES,
    WDM_LOW_BAND_SCALE,
    space_for,
    wavelet_clip,
    wavelet_decode,
    wavelet_encode,
)
from medddpm.models.wavelet import haar_forward, haar_inverse


def volume(seed: int = 0, shape=(2, 1, 6, 4, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def haar_by_hand(x: np.ndarray) -> np.ndarray:
    """The coefficients of one channel [D, H, W], block by block, from their definition."""
    sign = {0: (1, 1), 1: (1, -1)}  # L, H
    d, h, w = (s // 2 for s in x.shape)
    out = np.zeros((8, d, h, w))
    for band, (p, q, r) in enumerate(itertools.product((0, 1), repeat=3)):  # LLL, LLH, ..., HHH
        for i, j, k in itertools.product(range(d), range(h), range(w)):
            total = 0.0
            for a, b, c in itertools.product((0, 1), repeat=3):
                total += sign[p][a] * sign[q][b] * sign[r][c] * x[2 * i + a, 2 * j + b, 2 * k + c]
            out[band, i, j, k] = total / math.sqrt(8)
    return out


def test_haar_matches_a_direct_computation():
    x = volume(1, (1, 2, 4, 6, 2))
    z = haar_forward(x)
    assert z.shape == (1, 16, 2, 3, 1)
    for c in range(2):
        np.testing.assert_allclose(z[0, 8 * c : 8 * c + 8].numpy(), haar_by_hand(x[0, c].numpy()), atol=1e-14)


def test_haar_round_trip_is_exact_in_float64_and_orthonormal():
    x = volume(2)
    z = haar_forward(x)
    torch.testing.assert_close(haar_inverse(z), x, rtol=0, atol=1e-14)
    torch.testing.assert_close(z.norm(), x.norm(), rtol=1e-15, atol=0)  # Parseval
    # orthonormal: the matrix of the transform of one 2x2x2 block is its own transpose's inverse
    basis = torch.eye(8, dtype=torch.float64).reshape(8, 1, 2, 2, 2)
    m = haar_forward(basis).reshape(8, 8)
    torch.testing.assert_close(m @ m.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="even sides"):
        haar_forward(volume(3, (1, 1, 3, 4, 4)))


def test_wavelet_space_scales_the_low_band_and_decodes_exactly():
    x = volume(4).clamp(-1, 1)
    z = wavelet_encode(x)
    assert z.shape == (2, 8, 3, 2, 4)
    torch.testing.assert_close(z[:, :1] * WDM_LOW_BAND_SCALE, haar_forward(x)[:, :1], rtol=0, atol=1e-15)
    torch.testing.assert_close(z[:, 1:], haar_forward(x)[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(wavelet_decode(z), x, rtol=0, atol=1e-14)
    # a constant volume lives in the low band alone: 1 -> sqrt(8) / 3
    ones = wavelet_encode(torch.ones(1, 1, 2, 2, 2, dtype=torch.float64))
    torch.testing.assert_close(
        ones.flatten(), torch.tensor([math.sqrt(8) / 3] + [0.0] * 7, dtype=torch.float64)
    )


def test_wavelet_clip_projects_onto_volumes_in_range():
    inside = wavelet_encode(volume(5).clamp(-1, 1))
    torch.testing.assert_close(wavelet_clip(inside), inside, rtol=0, atol=1e-14)  # data in range: unchanged
    outside = wavelet_encode(3 * volume(6))
    assert wavelet_decode(outside).abs().max() > 1
    assert wavelet_decode(wavelet_clip(outside)).abs().max() <= 1 + 1e-12


def test_registry_names_match_the_config_and_sizes_are_checked():
    assert set(get_args(ModelConfig.model_fields["space"].annotation)) == set(SPACES)
    assert SPACES["wavelet"].channels == 8 and SPACES["wavelet"].latent_size((32, 16, 64)) == (16, 8, 32)
    assert SPACES["pixel"].latent_size((32, 16, 64)) == (32, 16, 64)
    space_for("wavelet", (32, 32, 32), 3)
    with pytest.raises(InputError, match=r"image_size 36x32x32 .*space=wavelet .*multiple of 8"):
        space_for("wavelet", (36, 32, 32), 3)
    with pytest.raises(InputError, match=r"image_size 18x16x16 .*space=pixel .*multiple of 4"):
        space_for("pixel", (18, 16, 16), 3)
