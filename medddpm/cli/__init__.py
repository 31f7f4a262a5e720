"""The ``medddpm`` command line: thin Typer commands, their progress bars and error handling.

May import everything else; nothing imports it. Heavy imports happen inside the commands.
"""

from medddpm.cli.app import app, main

__all__ = ["app", "main"]
