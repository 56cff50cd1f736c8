"""Errors a user can fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input, parameters or environment that the user can fix.

    The message must name the file, key or value at fault and say what would fix it. The
    console script prints it on one line and exits with status 2.
    """
