"""What the training commands (``train``, ``train-autoencoder``) share: the config they build and
the run with its progress bar and exit codes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medddpm.cli.options import console, fail, is_main_process, print_message
from medddpm.cli.progress import training_progress

if TYPE_CHECKING:
    from medddpm.config import Config


def training_config(
    output: Path,
    config: str | None,
    overrides: list[str] | None,
    resume: bool,
    image_size: list[int] | None,
    flags: Mapping[str, Any],
) -> Config:
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
    loop: Callable[..., Any], cfg: Config, data_dir: Path, output: Path, threads_used: Any, **kwargs: Any
) -> None:
    """Run a training loop (medddpm.training.loop.train or .autoencoder.train_autoencoder) with a
    progress bar, and end the command as a shell expects: 130 / 143 after Ctrl-C / SIGTERM (the loop
    checkpoints first; a second Ctrl-C stops at once, with a word on where to resume)."""
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
