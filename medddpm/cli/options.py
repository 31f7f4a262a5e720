"""What every command shares: the console, option types, and the checks each command runs first."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

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


# Training commands (train, train-autoencoder) --------------------------------------------


def training_config(
    output: Path,
    config: str | None,
    overrides: list[str] | None,
    resume: bool,
    image_size: list[int] | None,
    flags: Mapping[str, Any],
):
    """The config a training command runs with: defaults < --config < --set < its flags.

    With --resume and no --config, the run's own saved config.yaml (its missing fields read as
    LEGACY_VALUES, the way the run was trained). ``image_size``: --image-size, one side or three.
    """
    from medddpm.config import build_config, resolve_config_path

    saved = resume and config is None and (output / "config.yaml").is_file()
    if saved:
        config = str(output / "config.yaml")  # a resumed run keeps its own config unless told otherwise
    elif config is not None:
        resolve_config_path(config)
    if image_size is not None and len(image_size) not in (1, 3):
        fail("--image-size takes one number or three")
    size = None if image_size is None else (image_size[0] if len(image_size) == 1 else image_size)
    return build_config(config, overrides or [], {"data.image_size": size, **flags}, saved=saved)


def run_training(
    loop: Callable[..., Any], cfg: Any, data_dir: Path, output: Path, threads_used: Any, **kwargs: Any
) -> None:
    """Run a training loop (medddpm.training.loop.train or .autoencoder.train_autoencoder) with a
    progress bar, and end the command as a shell expects: 130 / 143 after Ctrl-C / SIGTERM (the loop
    checkpoints first; a second Ctrl-C stops at once, with a word on where to resume)."""
    from medddpm.cli.progress import training_progress

    try:
        with threads_used, training_progress(enabled=is_main_process()) as on_step:
            result = loop(cfg, data_dir, output, log=print_message, on_step=on_step, **kwargs)
    except KeyboardInterrupt:  # a second Ctrl-C (typer would exit 130 without a word)
        if is_main_process():
            print_message(
                "Stopped at once, without a checkpoint of the step under way; "
                f"--resume continues from the last checkpoint in {output / 'checkpoints'}"
            )
        raise typer.Exit(130) from None
    if result.interrupted:
        raise typer.Exit(128 + (result.signal or 2))  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    if is_main_process():
        console.print(f"[green]Done:[/] step {result.step}, checkpoint {result.checkpoint}")
