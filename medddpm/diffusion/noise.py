"""Random draws that take a generator, and the per-sample generator that makes a sample's noise
independent of the batch it is drawn in.

``PerSampleGenerator`` is EDM's ``StackedRandomGenerator`` (Karras et al. 2022, ``generate.py``):
one ``torch.Generator`` per batch row, whose ``randn`` / ``randint`` draw row i from generator i
alone. Sample i then depends on its own seed only, not on the batch size, its place in the batch,
or the process that draws it. Training draws each sample's timestep and noise from one
(``medddpm.training.loop.sample_generators``), generation draws x_T from one
(``medddpm.diffusion.generate``), and the samplers draw their fresh noise from it.

Every draw names its generator (``RandomSource``): None is torch's global generator, one
``torch.Generator`` draws the whole batch, a ``PerSampleGenerator`` one row each. Numbers are drawn
on the generator's own device and then moved, so CPU generators give the same numbers on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

Device = torch.device | str | None
"""Where a draw ends up (None: where its generator is)."""


class PerSampleGenerator:
    """One torch.Generator per batch row: row i of every draw comes from ``generators[i]`` alone."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def from_seeds(cls, seeds: Iterable[int], device: torch.device | str = "cpu") -> PerSampleGenerator:
        """One generator per seed, on ``device`` (CPU by default: the same numbers on any machine)."""
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    def __len__(self) -> int:
        return len(self.generators)

    def _check(self, size: Sequence[int]) -> None:
        if len(size) == 0 or size[0] != len(self.generators):
            batch = size[0] if len(size) else "a scalar"
            raise ValueError(
                f"got {len(self.generators)} generators for a batch of {batch}; pass one per sample"
            )

    def randn(
        self,
        size: Sequence[int],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """N(0, 1) numbers of shape ``size`` = [B, ...]; row i is ``randn(size[1:])`` of generator i."""
        return self._rows(torch.randn, size, dtype, device)

    def rand(
        self,
        size: Sequence[int],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """U[0, 1) numbers of shape ``size`` = [B, ...]; row i is ``rand(size[1:])`` of generator i."""
        return self._rows(torch.rand, size, dtype, device)

    def _rows(
        self,
        draw: Callable[..., torch.Tensor],
        size: Sequence[int],
        dtype: torch.dtype | None,
        device: Device,
    ) -> torch.Tensor:
        self._check(size)
        rows = [draw(tuple(size[1:]), generator=g, dtype=dtype, device=g.device) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """N(0, 1) numbers shaped like x [B, ...], in x's dtype and on x's device."""
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randint(
        self, low: int, high: int, size: Sequence[int], *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Integers in [low, high) of shape ``size`` = [B, ...], int64; row i from generator i."""
        self._check(size)
        rows = [
            torch.randint(low, high, tuple(size[1:]), generator=g, device=g.device) for g in self.generators
        ]
        return torch.stack(rows).to(device)


RandomSource = torch.Generator | PerSampleGenerator | None
"""Where a draw comes from: torch's global generator (None), one generator, or one per sample."""


def randn(
    size: Sequence[int],
    generator: RandomSource,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """N(0, 1) numbers of shape ``size`` from ``generator`` (see RandomSource), on ``device``."""
    if isinstance(generator, PerSampleGenerator):
        return generator.randn(size, dtype=dtype, device=device)
    return _draw(torch.randn, size, generator, dtype, device)


def rand(
    size: Sequence[int],
    generator: RandomSource,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """U[0, 1) numbers of shape ``size`` from ``generator`` (see RandomSource), on ``device``."""
    if isinstance(generator, PerSampleGenerator):
        return generator.rand(size, dtype=dtype, device=device)
    return _draw(torch.rand, size, generator, dtype, device)


def _draw(
    draw: Callable[..., torch.Tensor],
    size: Sequence[int],
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: Device,
) -> torch.Tensor:
    if generator is None:
        return draw(tuple(size), dtype=dtype, device=device)
    _check_type(generator)
    return draw(tuple(size), generator=generator, dtype=dtype, device=generator.device).to(device)


def randn_like(x: torch.Tensor, generator: RandomSource) -> torch.Tensor:
    """N(0, 1) numbers shaped like x [B, ...], in x's dtype and on x's device."""
    if generator is None:
        return torch.randn_like(x)
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def randint(
    low: int,
    high: int,
    size: Sequence[int],
    generator: RandomSource,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Integers in [low, high) of shape ``size`` from ``generator`` (see RandomSource), int64."""
    if isinstance(generator, PerSampleGenerator):
        return generator.randint(low, high, size, device=device)
    if generator is None:
        return torch.randint(low, high, tuple(size), device=device)
    _check_type(generator)
    return torch.randint(low, high, tuple(size), generator=generator, device=generator.device).to(device)


def _check_type(generator: object) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"expected None, a torch.Generator or a PerSampleGenerator, got {type(generator).__name__}"
        )
