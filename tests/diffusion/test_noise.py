"""The per-sample generator: each row its own numbers, whatever the batch, and the same numbers the
training, generation and sampling code drew before it existed (the golden run depends on them)."""

from __future__ import annotations

import pytest
import torch

from medddpm.diffusion.noise import PerSampleGenerator, rand, randint, randn, randn_like
from medddpm.diffusion.schedule import NoiseSchedule, diffusion_loss, linear_betas

SHAPE = (1, 4, 3, 5)  # [C, *spatial] of one sample: 60 numbers, past the vectorised fill (16)


def draws(seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training's order: a timestep per row, then noise per row, then more noise (a sampler step)."""
    g = PerSampleGenerator.from_seeds(seeds)
    t = g.randint(0, 1000, (len(seeds),))
    eps = g.randn((len(seeds), *SHAPE))
    z = g.randn((len(seeds), 7))
    return t, eps, z


def test_each_row_is_the_same_whatever_the_batch():
    alone = draws([11])
    for batch, row in (([11, 12, 13], 0), ([5, 11], 1), ([12, 13, 14, 11], 3), ([11, 11], 1)):
        together = draws(batch)
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a[0], b[row]), batch
    t, eps, z = draws([11, 12])
    assert not torch.equal(eps[0], eps[1]) and not torch.equal(z[0], z[1])


def test_same_numbers_as_the_per_generator_draws_it_replaces():
    seeds = [3, 2**40 + 7, 12345]
    t, eps, z = draws(seeds)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        # training (diffusion_loss per sample): randint of shape (1,), then randn of x0[i:i+1]'s shape
        assert torch.equal(torch.randint(0, 1000, (1,), generator=g), t[i : i + 1])
        assert torch.equal(torch.randn((1, *SHAPE), generator=g), eps[i : i + 1])
        # samplers (randn_like per sample): randn of x.shape[1:]
        assert torch.equal(torch.randn(7, generator=g), z[i])
    # generation: x_T of each seed is randn(1, D, H, W) of a fresh generator
    x_T = PerSampleGenerator.from_seeds(seeds).randn((3, 1, 4, 3, 5), device="cpu")
    expected = torch.stack(
        [torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    assert torch.equal(x_T, expected) and x_T.dtype == torch.float32


def test_uniform_rows_come_from_their_own_generators():
    seeds = [3, 9]
    u = rand((2, 4), PerSampleGenerator.from_seeds(seeds), dtype=torch.float64)
    expected = torch.stack(
        [torch.rand(4, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )
    assert torch.equal(u, expected)
    with pytest.raises(ValueError, match="one per sample"):
        PerSampleGenerator.from_seeds(seeds).rand((3, 4))


def test_dtype_device_and_shape_checks():
    g = PerSampleGenerator.from_seeds([1, 2])
    x = torch.zeros((2, *SHAPE), dtype=torch.float64)
    out = randn_like(x, g)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert g.randint(0, 5, (2, 3)).dtype == torch.int64
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3; pass one per sample"):
        g.randn((3, 4))
    with pytest.raises(ValueError, match="one per sample"):
        g.randint(0, 5, ())


def test_plain_sources_draw_the_whole_batch():
    shape = (3, *SHAPE)
    g = torch.Generator().manual_seed(4)
    assert torch.equal(randn(shape, g), torch.randn(shape, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(
        rand(shape, torch.Generator().manual_seed(4)),
        torch.rand(shape, generator=torch.Generator().manual_seed(4)),
    )
    assert torch.equal(
        randint(0, 9, (3,), torch.Generator().manual_seed(4)),
        torch.randint(0, 9, (3,), generator=torch.Generator().manual_seed(4)),
    )
    torch.manual_seed(0)
    a = randn_like(torch.zeros(shape), None)
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn(shape))
    with pytest.raises(TypeError, match="PerSampleGenerator"):
        randn(shape, [torch.Generator()])  # a list is not a source: wrap it in PerSampleGenerator


def test_training_draws_do_not_depend_on_the_batch():
    """diffusion_loss with a PerSampleGenerator: sample i sees the same t and x_t in any batch."""
    schedule = NoiseSchedule(alphas_cumprod=torch.cumprod(1 - linear_betas(1000, 1e-4, 0.02), 0))
    x0 = torch.rand((3, *SHAPE)) * 2 - 1
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((xt.clone(), t.clone()))
        return torch.zeros_like(xt)

    diffusion_loss(model, schedule, x0, PerSampleGenerator.from_seeds([7, 8, 9]))
    diffusion_loss(model, schedule, x0[2:], PerSampleGenerator.from_seeds([9]))
    (xt_batch, t_batch), (xt_alone, t_alone) = seen
    assert torch.equal(t_batch[2:], t_alone) and torch.equal(xt_batch[2:], xt_alone)
