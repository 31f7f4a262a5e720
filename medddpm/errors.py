"""Errors a user can act on.

Anything raised as :class:`InputError` is shown as one line (``error: <message>``) and exits with
code 2; everything else is a bug and exits with code 1. Messages name the file and the reason, and
where it helps, what to do next.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or usage: a file, folder, option or config value the user can fix (exit code 2)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class TrainingAborted(Exception):
    """Training stopped for a reason the user can act on (non-finite losses, say); exit code 2."""
