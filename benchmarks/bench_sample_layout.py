"""Sampling on CPU: the U-Net's weights in channels-last 3D against the default NCDHW layout.

Training runs in channels-last 3D on CPU (``medddpm.models.unet.preferred_memory_format``), and so
does ``sample_to_folder``. This times ``generate_batches`` (the loop that ``medddpm sample`` and the
demo run) with one network in both layouts, turns alternating (A B, B A, ...), and reports the
median seconds per volume and the largest difference between the two layouts' volumes from the
same seeds (float rounding only: the weights are the same numbers; a sampler's steps can amplify it).

The network is a preset's U-Net with random weights (seed 0, every weight perturbed so that the
output is not zero): the time of a network evaluation does not depend on what it has learned.
Sampler, steps and batch size: the preset's ``sample`` section, ``--steps`` overriding the steps.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_sample_layout.py --configs demo brain-mri-64 --volumes 8 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
from bench_sampling import machine

from medddpm.config import build_config
from medddpm.diffusion.generate import generate_batches
from medddpm.diffusion.process import build_process
from medddpm.models.spaces import config_space
from medddpm.models.unet import build_unet, to_memory_format

LAYOUTS = {"NCDHW": torch.contiguous_format, "channels-last": torch.channels_last_3d}


def draw(model: torch.nn.Module, cfg, volumes: int, steps: int) -> tuple[float, torch.Tensor]:
    """Seconds per volume and the volumes, seeds 0 .. ``volumes`` - 1."""
    start = time.perf_counter()
    batches = generate_batches(
        model, build_process(cfg.diffusion), cfg.data.image_size, list(range(volumes)), cfg.sample.sampler,
        steps, batch_size=cfg.sample.batch_size, space=config_space(cfg),
    )  # fmt: skip
    out = torch.cat([x for _, x in batches])
    return (time.perf_counter() - start) / volumes, out


def main(argv: list[str] | None = None) -> list[dict]:
    """Print the table; returns one row per config (seconds per volume per layout, speed-up, max |diff|)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=["demo", "brain-mri-64"], help="presets (pixel or wavelet)"
    )
    parser.add_argument("--volumes", type=int, default=8, help="volumes per turn")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=5, help="turns per layout")
    args = parser.parse_args(argv)
    rows = []

    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine(torch.device('cpu'))}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        "| config | sampler, steps, batch | NCDHW s / volume | channels-last s / volume | speed-up |", end=""
    )
    print(" max |diff| |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.configs:
        cfg = build_config(name)
        steps = args.steps or cfg.sample.steps
        torch.manual_seed(0)
        model = build_unet(cfg.model)
        with torch.no_grad():  # MONAI zero-initialises the last convolution: without this every volume is x_T
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        volumes: dict[str, torch.Tensor] = {}
        for turn in range(args.repeats):
            order = list(LAYOUTS) if turn % 2 == 0 else list(reversed(LAYOUTS))
            for layout in order:
                # to_memory_format's output hooks stay registered; they only convert to channels-last, so
                # for NCDHW a fresh copy without them is drawn from.
                net = to_memory_format(build_unet(cfg.model), LAYOUTS[layout])
                net.load_state_dict(model.state_dict())
                seconds, volumes[layout] = draw(net, cfg, args.volumes, steps)
                times[layout].append(seconds)
        a, b = (torch.tensor(times[k]).median().item() for k in LAYOUTS)
        diff = (volumes["NCDHW"] - volumes["channels-last"]).abs().max().item()
        rows.append(
            {
                "config": name,
                "seconds": dict(zip(LAYOUTS, (a, b), strict=True)),
                "speed_up": a / b,
                "diff": diff,
            }
        )
        print(
            f"| {name} ({'x'.join(map(str, cfg.data.image_size))}, {cfg.model.space}) "
            f"| {cfg.sample.sampler}, {steps}, {cfg.sample.batch_size} "
            f"| {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.1e} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
