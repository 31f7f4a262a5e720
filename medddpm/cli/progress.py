"""Rich progress bars fed by the library's callbacks (training steps, sampled volumes and steps)."""

from __future__ import annotations

from medddpm.cli.options import console


def training_progress(enabled: bool = True):
    """A rich progress bar fed by the training loop's per-step callback (None when not ``enabled``)."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = None
        start_step = None

        def on_step(entry) -> None:
            nonlocal task, start_step
            if task is None:
                start_step = entry.step - 1
                task = progress.add_task(
                    "train", total=entry.max_steps, completed=start_step, loss="-", rate="-"
                )
            rate = (entry.step - start_step) / entry.seconds if entry.seconds > 0 else 0.0
            progress.update(task, completed=entry.step, loss=f"{entry.loss:.4f}", rate=f"{rate:.2f}")

        with progress:
            yield on_step

    return context() if enabled else contextlib.nullcontext()


def sampling_progress():
    """Two rich progress bars fed by sampling's callbacks: volumes written, steps of the current batch.

    The bars appear with the first callback, so an error found while checking the input stays one line.
    """
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        volumes = progress.add_task("volumes", total=None)
        steps = progress.add_task("steps", total=None)
        started = False

        def on_volumes(done: int, total: int) -> None:
            nonlocal started
            if not started:
                progress.start()
                started = True
            progress.update(volumes, completed=done, total=total)

        def on_step(i: int, total: int) -> None:
            if i == 1:
                progress.reset(steps, total=total)
            progress.update(steps, completed=i, total=total)

        try:
            yield on_volumes, on_step
        finally:
            if started:
                progress.stop()

    return context()


def demo_training_progress(budget_seconds: float):
    """A rich progress bar of training, with step and loss: the time budget or the step count, whichever
    is nearer its end (the demo stops at the first of the two)."""
    import contextlib

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]  train"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = None

        def on_step(entry) -> None:
            nonlocal task
            if task is None:
                progress.start()
                task = progress.add_task("train", total=1.0, step=0, loss="-")
            done = max(entry.seconds / budget_seconds, entry.step / max(entry.max_steps, 1))
            progress.update(task, completed=min(done, 1.0), step=entry.step, loss=f"{entry.loss:.4f}")

        try:
            yield on_step
        finally:
            progress.stop()

    return context()
