"""Where and how computation runs: torch version guard, bf16 conv3d check, device and precision,
CPU threads, seeds, torchrun.

May import: ``errors`` (and the package itself, for its version).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
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


CONV3D_BF16_TOLERANCE = 0.02
"""Largest relative L2 error ||y_bf16 - y_fp32|| / ||y_fp32|| accepted for one conv3d.

Rounding inputs, weights and output to bf16 (8-bit significand) with fp32 accumulation gives about
0.002-0.004 on random data; the cuDNN 9.8-9.10 bug (pytorch/pytorch#163539) gives errors of order 1.
0.02 sits well above rounding and far below the bug."""
_conv3d_checked: set[tuple[str, tuple[int, ...]]] = set()


def conv3d_bf16_error(
    device: torch.device,
    shape: tuple[int, ...] = (1, 8, 16, 16, 16),
    conv: Callable[..., torch.Tensor] = torch.nn.functional.conv3d,
    seed: int = 0,
) -> float:
    """Relative L2 distance between a bf16 and an fp32 3x3x3 conv3d of the same random data.

    ``shape`` is the input [B, C, D, H, W] (C -> C channels, padding 1: a U-Net's full-resolution
    convolution). Returns inf when the bf16 result is not finite.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    channels = shape[1]
    x = torch.randn(shape, generator=g, device=device)
    w = torch.randn((channels, channels, 3, 3, 3), generator=g, device=device) / math.sqrt(27 * channels)
    with torch.no_grad():
        reference = conv(x, w, padding=1).float()
        low = conv(x.bfloat16(), w.bfloat16(), padding=1).float()
    if not torch.isfinite(low).all():
        return math.inf
    distance = torch.linalg.vector_norm(low - reference)
    return float(distance / torch.linalg.vector_norm(reference).clamp_min(1e-30))


def conv3d_bf16_warning(error: float, cudnn_version: int | None) -> str | None:
    """The warning for a bf16-vs-fp32 conv3d error, or None when it is within CONV3D_BF16_TOLERANCE."""
    if error <= CONV3D_BF16_TOLERANCE:
        return None
    if not cudnn_version:
        cudnn = "unknown"
    elif cudnn_version >= 90000:  # cuDNN 9 numbers its releases major*10000 + minor*100 + patch
        cudnn = f"{cudnn_version // 10000}.{cudnn_version // 100 % 100}"
    else:  # cuDNN 8 and older: major*1000 + minor*100 + patch
        cudnn = f"{cudnn_version // 1000}.{cudnn_version // 100 % 10}"
    return (
        f"bf16 3D convolutions on this GPU differ from fp32 by {error:.1%} (expected under "
        f"{CONV3D_BF16_TOLERANCE:.0%}; cuDNN {cudnn}): cuDNN 9.8-9.10 silently miscompute large bf16 "
        "conv3d (pytorch/pytorch#163539). Results may be wrong: use --precision fp32, or a torch "
        "build with another cuDNN release"
    )


def check_conv3d_bf16(device: torch.device, precision: str, shape: tuple[int, ...]) -> str | None:
    """Once per process, device and shape: on CUDA in bf16, compare a bf16 conv3d of ``shape`` with
    fp32 and return a warning when they disagree (None otherwise, and always on CPU or in fp32/fp16).

    Train and sample call it with the model's full-resolution activation, since the cuDNN bug
    depends on the tensor size. Out of GPU memory for the check, it is skipped.
    """
    if device.type != "cuda" or precision != "bf16":
        return None
    key = (str(device), tuple(shape))
    if key in _conv3d_checked:
        return None
    _conv3d_checked.add(key)
    try:
        error = conv3d_bf16_error(device, tuple(shape))
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return conv3d_bf16_warning(error, torch.backends.cudnn.version())


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


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: all of the machine's unless taskset,
    a container or a batch scheduler gave it fewer), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stopwatch(seconds: dict[str, float], cpu_seconds: dict[str, float] | None = None):
    """``with stage(name):`` records the block's wall time under ``seconds[name]`` and, when given,
    its CPU time (all threads of this process) under ``cpu_seconds[name]``."""

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        seconds[name] = time.perf_counter() - wall
        if cpu_seconds is not None:
            cpu_seconds[name] = time.process_time() - cpu

    return stage


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
