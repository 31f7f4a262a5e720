"""What every command shares: the console, option types, and the checks each command runs first."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

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
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="CPU threads torch computes with (default: every core).")
]
# the training commands' (train, train-autoencoder)
ImageSizeOpt = Annotated[
    list[int] | None, typer.Option("--image-size", help="Voxels per side (one number, or three).")
]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps to train for.")]
CheckpointEveryOpt = Annotated[
    int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints.")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")]
SkipInvalidOpt = Annotated[
    bool, typer.Option("--skip-invalid", help="Skip unusable scans (with a warning) instead of stopping.")
]


HIGHLIGHTS = {"warning:": "yellow", "skipping": "yellow"}
"""Leading words of library messages shown in colour, and their style."""


def print_message(message: str) -> None:
    """Print one message of the library's ``log`` callback: plain text, shown as it is (a ``[...]``
    in a file name is not read as rich markup), its leading word coloured as HIGHLIGHTS says."""
    text = Text(message)
    for word, style in HIGHLIGHTS.items():
        if message.startswith(word):
            text.stylize(style, 0, len(word))
    console.print(text)


def cpu_threads(threads: int | None):
    """A context running its block with ``threads`` torch CPU threads (``--threads``); None keeps
    torch's default, one per core."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    if threads < 1:
        fail(f"--threads must be at least 1; got {threads}")
    from medddpm.runtime import torch_threads

    return torch_threads(threads)


def startup_checks() -> None:
    """What every command checks first: a torch release known to break 3D work is refused."""
    from medddpm.runtime import check_torch_version

    check_torch_version()


def fail(message: str) -> None:
    from medddpm.errors import InputError

    raise InputError(message)
