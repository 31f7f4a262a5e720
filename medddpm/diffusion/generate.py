"""Turning noise into volumes: batches of per-seed samples from a trained network.

Sample i is a pure function of (weights, sampler, steps, eta, seed_i): its starting noise and every
later noise draw come from its own CPU generator, so which batch it falls in, the batch size and
the process that draws it do not change its noise. On CPU in fp32 the same seed gives bitwise the
same volume; across batch sizes the network's batched kernels may round differently, which moves
voxels by float32 round-off (about 1e-7 in model space), nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import torch

from medddpm.diffusion.guidance import Guided
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.process import Process
from medddpm.diffusion.samplers import X0_RANGE, ClipRange, sample, timesteps_for
from medddpm.runtime import autocast


class Space(Protocol):
    """Where the network works (medddpm.models.spaces.SPACES: pixel, wavelet). Generation draws
    x_T in its shape, samples there, and decodes to volumes [B, 1, *image_size]."""

    channels: int
    clip: ClipRange

    def latent_size(self, image_size: Sequence[int]) -> tuple[int, ...]: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def generate_batches(
    model: torch.nn.Module,
    schedule: Process,
    image_size: Sequence[int],
    seeds: Sequence[int],
    sampler: str,
    steps: int,
    *,
    eta: float | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    model_kwargs: Mapping[str, torch.Tensor] | None = None,
    guidance: float = 1.0,
    guidance_rescale: float = 0.0,
    space: Space | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Denoise one volume per seed, ``batch_size`` at a time, yielding each batch as it finishes.

    Yields ``(seeds, volumes)``: the batch's seeds and float32 CPU tensors [b, 1, D, H, W] in model
    space [-1, 1], so a caller can write files as they come without holding every volume.
    ``sampler``: a key of medddpm.diffusion.samplers.SAMPLERS, run over ``timesteps_for(schedule,
    steps)``; ``eta=None`` uses its registry default. Each batch's x_T and sampler noise come from a
    PerSampleGenerator of CPU generators seeded with the batch's seeds. ``on_step(i, total)`` is
    called after every network evaluation of a batch (progress bars). The network runs under
    autocast for ``precision`` (bf16 / fp16); the sampler's arithmetic stays in float32.

    ``model_kwargs``: per-sample conditioning, tensors whose first dimension runs over ``seeds``;
    each batch passes its rows to the sampler (and so to the model) untouched. ``guidance`` W and
    ``guidance_rescale``: classifier-free guidance (``medddpm.diffusion.guidance.Guided``; W = 1,
    the default, is the plain conditional model).
    ``space``: where the network works (None: pixel space); x_T is drawn in its shape
    [b, channels, *latent_size], x-hat_0 clipped with its ``clip``, and each result decoded.
    """
    device = torch.device(device)
    model.eval()

    def network(x: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        with autocast(precision, device):
            return model(x, t, **model_kwargs).float()

    guided = (
        network
        if guidance == 1.0 and guidance_rescale == 0.0
        else Guided(network, guidance, guidance_rescale)
    )
    timesteps = timesteps_for(schedule, steps)
    shape = (1, *image_size) if space is None else (space.channels, *space.latent_size(image_size))
    clip = X0_RANGE if space is None else space.clip
    batch_size = batch_size or len(seeds)
    for start in range(0, len(seeds), batch_size):
        batch_seeds = [int(s) for s in seeds[start : start + batch_size]]
        generator = PerSampleGenerator.from_seeds(batch_seeds)
        x_T = generator.randn((len(batch_seeds), *shape), device=device)
        rows = slice(start, start + len(batch_seeds))
        kwargs = {k: v[rows].to(device) for k, v in (model_kwargs or {}).items()}
        x_0 = sample(
            sampler, guided, x_T, schedule, timesteps, eta=eta, generator=generator, clip=clip,
            model_kwargs=kwargs, callback=on_step,
        )  # fmt: skip
        if space is not None:
            x_0 = space.decode(x_0.float())
        yield batch_seeds, x_0.float().clamp(-1, 1).cpu()


def generate(
    model: torch.nn.Module,
    schedule: Process,
    image_size: Sequence[int],
    seeds: Sequence[int],
    sampler: str,
    steps: int,
    *,
    eta: float | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    model_kwargs: Mapping[str, torch.Tensor] | None = None,
    guidance: float = 1.0,
    guidance_rescale: float = 0.0,
    space: Space | None = None,
) -> list[torch.Tensor]:
    """Every volume of ``generate_batches``, in seed order: float32 CPU tensors [1, D, H, W] in [-1, 1]."""
    batches = generate_batches(
        model,
        schedule,
        image_size,
        seeds,
        sampler,
        steps,
        eta=eta,
        device=device,
        precision=precision,
        batch_size=batch_size,
        on_step=on_step,
        model_kwargs=model_kwargs,
        guidance=guidance,
        guidance_rescale=guidance_rescale,
        space=space,
    )
    return [volume for _, volumes in batches for volume in volumes]
