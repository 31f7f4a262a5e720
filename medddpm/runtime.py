"""Where and how computation runs: torch version guard, device and precision, seeds, torchrun."""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import sys
from dataclasses import dataclass

import torch

from medddpm.errors import InputError

BROKEN_TORCH = {"2.9.0": "its conv3d regression makes 3D convolutions about 4x slower"}


def check_torch_version(version: str = torch.__version__) -> None:
    """Refuse torch releases known to break 3D work, with what to install instead."""
    base = version.split("+")[0]
    if base in BROKEN_TORCH:
        raise InputError(
            f"torch {base} is not supported: {BROKEN_TORCH[base]}; "
            "install another release, e.g. pip install 'torch>=2.9.1' or 'torch==2.8.0'"
        )


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when there is one (per-rank under torchrun), else CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    if torch.cuda.is_available() and name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA devices that support it, fp32 elsewhere; half precision needs CUDA."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    return name


def autocast(precision: str, device: torch.device):
    """Autocast context for the network's forward pass (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def agree(self, error: Exception | None, **facts: object) -> None:
        """Collective: if any process failed its checks, raise a failure on every process.

        Checks that come before collective work (run folder, resume checkpoint, preflight) run on
        every process and meet here, so no process is left waiting in a barrier for one that gave
        up. A process raises its own error, or else the first failing process's message; errors on
        processes other than 0 are marked ``reported_by_rank_0`` so the CLI prints the line once.
        ``facts`` (the step to resume from, say) must be equal on every process.
        """
        if not self.enabled:
            if error is not None:
                raise error
            return
        gathered: list = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, (None if error is None else str(error), facts))
        failed = [(rank, message) for rank, (message, _) in enumerate(gathered) if message is not None]
        if failed:
            if error is None:
                rank, message = failed[0]
                error = InputError(message if rank == 0 else f"{message} (on process {rank})")
            if not self.is_main:
                error.reported_by_rank_0 = True
            raise error
        differing = [(rank, f) for rank, (_, f) in enumerate(gathered) if f != gathered[0][1]]
        if differing:
            rank, seen = differing[0]
            error = InputError(
                f"process 0 sees {gathered[0][1]} but process {rank} sees {seen}: every process must "
                "see the same run folder (on multiple nodes, put it on a file system they all share)"
            )
            if not self.is_main:
                error.reported_by_rank_0 = True
            raise error


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU); a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Distributed()
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
        atexit.register(shutdown_distributed)  # whoever opened the group closes it, on every exit path
    return Distributed(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def shutdown_distributed() -> None:
    """Leave the process group (a no-op outside torchrun); runs at exit once init_distributed joined one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def library_versions() -> dict[str, str]:
    """Versions recorded in every artifact, so a result can be traced to the code that made it."""
    import monai
    import nibabel
    import numpy

    import medddpm

    return {
        "medddpm": medddpm.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "numpy": numpy.__version__,
    }
