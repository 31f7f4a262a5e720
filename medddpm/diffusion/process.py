"""The process axis: how data becomes noise in training and back again in sampling.

A process owns the forward noising (``q_sample``), the training target (``target``) and loss
weights (``loss_weights``), the law of training times (``draw_times``), what the network's time
embedding sees (``network_time``), the times a sampler visits (``sampling_times``), a grid of times
to probe a trained network at (``time_grid``, the membership audit), and, through the sampler
registry, the samplers that fit it (``SamplerEntry.process``). The training objective
(``medddpm.diffusion.objective``) and every caller work through this interface and never branch on
the process's name.

    ddpm    NoiseSchedule (medddpm.diffusion.schedule): Ho et al. 2020, eps or v target, optional
            min-SNR-gamma weights; samplers ddpm, ddim, dpm++
    rflow   RectifiedFlow (medddpm.diffusion.flow): Liu et al. 2022 with logit-normal times
            (Esser et al. 2024); samplers euler, heun

A new process is one class with these methods (the ``Process`` protocol, defined beside the
objective that uses it) and one ``ProcessEntry`` here; the config's allowed
names (``diffusion.process``) are read from ``PROCESSES``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medddpm.diffusion.flow import RectifiedFlow
from medddpm.diffusion.objective import Process
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.errors import InputError


@dataclass(frozen=True)
class ProcessEntry:
    """A process as the config knows it."""

    build: Callable[[Any], Process]
    """From a DiffusionConfig (medddpm.config) to the process."""
    sampler: str
    """The sampler used when the config names none (a key of SAMPLERS that fits this process)."""
    steps: int
    """Its number of network evaluations per volume."""
    preview_sampler: str
    """The deterministic sampler of training previews (``train.preview_steps`` steps)."""
    description: str


PROCESSES: dict[str, ProcessEntry] = {
    # DPM-Solver++(2M) reaches near-DDPM quality in ~25 steps (Lu et al. 2022b, Fig. 4).
    "ddpm": ProcessEntry(
        NoiseSchedule.from_config, "dpm++", 25, "ddim", "DDPM (Ho et al. 2020), eps or v target"
    ),
    # Rectified-flow paths are nearly straight, so first-order Euler already does well in few steps;
    # MAISI v2 samples its rectified-flow model with 30 Euler steps.
    "rflow": ProcessEntry(
        RectifiedFlow.from_config, "euler", 30, "euler", "rectified flow (Liu et al. 2022), logit-normal t"
    ),
}
"""Process names as written in the config (``diffusion.process``)."""


def process_entry(name: str) -> ProcessEntry:
    """The registry entry called ``name``; an InputError naming the choices when there is none."""
    if name not in PROCESSES:
        close = difflib.get_close_matches(str(name).lower(), PROCESSES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown process '{name}' (choose one of: {', '.join(PROCESSES)}{hint})")
    return PROCESSES[name]


__all__ = ["PROCESSES", "Process", "ProcessEntry", "build_process", "process_entry"]


def build_process(cfg: Any) -> Process:
    """The process a DiffusionConfig (``cfg.process`` and its settings) describes."""
    return process_entry(cfg.process).build(cfg)
