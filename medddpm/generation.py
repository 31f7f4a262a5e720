"""Turning noise into volumes: batches of per-seed samples from a trained network.

Sample i is a pure function of (weights, sampler, steps, seed_i): its starting noise and every
later noise draw come from its own generator, so the result is the same whatever the batch size,
the batch it falls in, or the process that draws it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medddpm.diffusion import NoiseSchedule
from medddpm.runtime import autocast


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample: CPU draws make the noise identical on any device."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    image_size: Sequence[int],
    seeds: Sequence[int],
    sampler: str,
    steps: int,
    *,
    eta: float | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int | None = None,
    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Denoise one volume per seed; returns float32 CPU tensors [1, D, H, W] in model space [-1, 1].

    ``on_batch(seeds, volumes)`` is called as each batch finishes (to write files as they come);
    ``on_step(i, total)`` after every network evaluation of a batch (progress bars).
    """
    from medddpm.sampling import sample

    device = torch.device(device)
    model.eval()

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return model(x, t).float()

    batch_size = batch_size or len(seeds)
    out: list[torch.Tensor] = []
    for start in range(0, len(seeds), batch_size):
        batch_seeds = list(seeds[start : start + batch_size])
        generators = seeded_generators(batch_seeds)
        x_T = torch.stack([torch.randn(1, *image_size, generator=g) for g in generators]).to(device)
        noise = {} if eta is None else {"eta": eta}  # None: the sampler's own default
        x_0 = sample(sampler, network, x_T, schedule, steps, generator=generators, callback=on_step, **noise)
        volumes = x_0.float().clamp(-1, 1).cpu()
        if on_batch is not None:
            on_batch(batch_seeds, volumes)
        out.extend(volumes)
    return out
