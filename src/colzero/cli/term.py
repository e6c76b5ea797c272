"""The command's one console (``rich``) on standard output: tables, the live view and, on a
terminal, the log lines all go through it, so they never overwrite each other."""

from __future__ import annotations

import sys

from rich.console import Console

#: width of tables when standard output is not a terminal (a log file, a pipe)
PLAIN_WIDTH = 160

_console: Console | None = None


def new_console() -> Console:
    """A console on the current standard output (``PLAIN_WIDTH`` wide when it is no terminal)."""
    global _console
    tty = sys.stdout.isatty()
    _console = Console(width=None if tty else PLAIN_WIDTH, highlight=False)
    return _console


def console() -> Console:
    """The console :func:`new_console` made for this command (made now if none)."""
    return _console if _console is not None else new_console()
