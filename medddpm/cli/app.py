"""The ``medddpm`` command: the Typer app, its commands (one module each) and the error handling.

Heavy imports (torch, MONAI) happen inside the commands so that ``--help`` is instant.
Exit codes: 0 success, 1 unexpected failure, 2 bad input or usage (one line, no traceback unless
``--debug``), 130 interrupted (143 when SIGTERM stopped `train`).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from medddpm.cli import audit, demo, evaluate, export_nnunet, info, sample, study, train, train_autoencoder
from medddpm.cli.options import console, is_main_process

app = typer.Typer(
    name="medddpm",
    help="3D denoising diffusion for medical volumes: train on NIfTI scans, sample, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""click's usage errors: from the click package, or from the copy of it that recent typer releases vendor."""


def _print_version(value: bool) -> None:
    """--version: handled as soon as it is parsed (eager), so that no command is needed after it."""
    if value:
        from medddpm import __version__

        typer.echo(f"medddpm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    _state["debug"] = debug


COMMAND_CLASSES = {sample.sample: sample.SampleCommand}
"""Commands whose help is completed when it is shown (sample: from the sampler registry)."""
for command in (train.train, sample.sample, evaluate.evaluate, audit.audit, demo.demo, info.info):
    app.command(cls=COMMAND_CLASSES.get(command))(command)
app.command("train-autoencoder")(train_autoencoder.train_autoencoder)
app.command("export-nnunet")(export_nnunet.export_nnunet)
app.add_typer(study.app, name="study")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user-fixable errors into one line and exit code 2."""
    from rich.markup import escape

    from medddpm.errors import InputError, TrainingAborted

    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except (InputError, TrainingAborted) as e:
        if _state["debug"]:
            raise
        if is_main_process() or not getattr(e, "reported_by_rank_0", False):
            console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)  # text, not markup
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own exit code (2)
        if isinstance(e, CLICK_ERROR):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        console.print(
            f"[red]unexpected error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
