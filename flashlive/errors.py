"""The user-facing error of the app layer: commands raise it, `flashlive.cli.main` prints it."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""
