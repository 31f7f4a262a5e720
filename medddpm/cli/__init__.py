"""The ``medddpm`` command line: thin Typer commands, their progress bars and error handling.

May import: everything (it is the top layer). Nothing imports it but ``medddpm.__main__``. Heavy
imports happen inside the commands.
"""

from medddpm.cli.app import app, main

__all__ = ["app", "main"]
