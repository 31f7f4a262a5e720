"""``medddpm study build | serve | analyze``: blinded reader studies of synthetic against real volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medddpm.cli.options import console, print_message

app = typer.Typer(
    name="study",
    help="Blinded reader studies (visual Turing tests): build the pages, serve them, analyse the answers.",
    no_args_is_help=True,
)


@app.command()
def build(
    real: Annotated[Path, typer.Option("--real", help="Folder of real (held-out) scans.")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Folder of synthetic scans.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Study folder to write.")],
    n: Annotated[int, typer.Option("--n", help="Real and synthetic volumes each (2afc: pairs).")] = 50,
    readers: Annotated[
        int, typer.Option("--readers", help="Readers, each with their own page and order.")
    ] = 3,
    task: Annotated[str, typer.Option("--task", help="binary, 2afc or rating.")] = "binary",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the choice, the ids and every order.")] = 0,
    run: Annotated[
        Path | None, typer.Option("--run", help="Run folder: preprocess both sets with its transforms.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Rebuild a study no one has answered.")
    ] = False,
) -> None:
    """Pick and preprocess real and synthetic volumes alike; one offline page per reader; key.json."""
    from medddpm.study.build import StudySettings, build_study

    settings = StudySettings(n=n, readers=readers, task=task, seed=seed)
    with console.status("Building the study"):
        study = build_study(
            real, synthetic, output, settings, run_dir=run, overwrite=overwrite, log=print_message
        )
    for name in study["readers"]:
        console.print(f"[green]{name}:[/] {output / 'readers' / name / 'index.html'}")
    console.print(f"Answer key (keep it from the readers): {output / 'key.json'}")


@app.command()
def serve(
    study: Annotated[Path, typer.Argument(help="Study folder written by `medddpm study build`.")],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: the whole LAN).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).")] = 8765,
) -> None:
    """Serve the readers' pages and append their answers to STUDY/responses/ (Ctrl-C stops)."""
    from medddpm.study.server import make_server

    server = make_server(study, host, port)
    for name, link in server.links().items():
        typer.echo(f"{name}: {link}")
    typer.echo(f"listening on http://{server.server_address[0]}:{server.server_address[1]}/", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.command()
def analyze(
    study: Annotated[Path, typer.Argument(help="Study folder written by `medddpm study build`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder to write.")],
    answers: Annotated[
        list[Path] | None,
        typer.Argument(help="Answer files exported from the pages (besides STUDY/responses/)."),
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics", help="CSV of automatic scores per synthetic file ('file' column + scores)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier analysis.")] = False,
) -> None:
    """Reader accuracy, intervals, agreement, ratings and score correlations: report.html, report.md, CSV."""
    from medddpm.study.analyze import analyze_study
    from medddpm.study.report import summary_text

    result = analyze_study(study, output, answers or [], metrics_csv=metrics, overwrite=overwrite)
    typer.echo(summary_text(result))
    console.print(f"[green]Report:[/] {output / 'report.html'}")
