"""What every command shares: the console, option types, and the checks each command runs first."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True, highlight=False)
"""Messages and progress go to stderr; tables of results to stdout."""


def is_main_process() -> bool:
    """False in torchrun's processes other than rank 0: they leave progress and messages to it."""
    return os.environ.get("RANK", "0") == "0"


# Option types --------------------------------------------------------------------------
ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file, or a preset name from configs/.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one config value, e.g. --set train.lr=3e-4 (repeatable)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="auto, fp32, bf16 or fp16.")]


def startup_checks() -> None:
    """What every command checks first: a torch release known to break 3D work is refused."""
    from medddpm.runtime import check_torch_version

    check_torch_version()


def fail(message: str) -> None:
    from medddpm.errors import InputError

    raise InputError(message)
